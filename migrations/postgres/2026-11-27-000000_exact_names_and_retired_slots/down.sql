DROP INDEX IF EXISTS db_locks_mutexes_retired_slots;
DROP INDEX IF EXISTS db_locks_mutexes_free_slots;
CREATE INDEX IF NOT EXISTS db_locks_mutexes_slot_index
    ON db_locks_mutexes (tenant_id, semaphore_key, slot_index)
    WHERE semaphore_key <> '' AND slot_index >= 0;
ALTER TABLE db_locks_mutexes DROP COLUMN IF EXISTS slot_expires_at_ms;
ALTER TABLE db_locks_mutexes DROP COLUMN IF EXISTS retired;
ALTER TABLE db_locks_mutexes ALTER COLUMN version TYPE VARCHAR(40) USING left(version, 40);
ALTER TABLE db_locks_semaphores ALTER COLUMN version TYPE VARCHAR(40) USING left(version, 40);
