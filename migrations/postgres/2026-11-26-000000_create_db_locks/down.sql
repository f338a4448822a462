DROP TABLE IF EXISTS db_locks_semaphores;
DROP TABLE IF EXISTS db_locks_mutexes;
