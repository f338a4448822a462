DROP INDEX db_locks_mutexes_free_slots ON db_locks_mutexes;
ALTER TABLE db_locks_mutexes
    DROP COLUMN slot_expires_at_ms,
    DROP COLUMN retired,
    MODIFY tenant_id     VARCHAR(100) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    MODIFY semaphore_key VARCHAR(200) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL DEFAULT '',
    MODIFY mutex_key     VARCHAR(220) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    MODIFY version       VARCHAR(40)  NOT NULL;
ALTER TABLE db_locks_semaphores
    MODIFY tenant_id     VARCHAR(100) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    MODIFY semaphore_key VARCHAR(200) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    MODIFY version       VARCHAR(40)  NOT NULL;
