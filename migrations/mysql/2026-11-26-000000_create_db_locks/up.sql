-- Mutexes and semaphore permit slots. A plain mutex has semaphore_key = ''; a slot has its
-- semaphore's key and slot_index, so slot keys never collide with plain mutex keys.
-- Times are milliseconds since the Unix epoch by the database server's clock.
-- Keys use a binary collation: `Job` and `job` are different locks, as on every other store.
CREATE TABLE IF NOT EXISTS db_locks_mutexes (
    tenant_id         VARCHAR(100) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    semaphore_key     VARCHAR(200) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL DEFAULT '',
    mutex_key         VARCHAR(220) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    slot_index        BIGINT       NOT NULL DEFAULT 0,
    version           VARCHAR(40)  NOT NULL,
    fencing_token     BIGINT       NOT NULL,
    lease_duration_ms BIGINT       NOT NULL,
    data              TEXT,
    delete_on_release BOOLEAN      NOT NULL DEFAULT FALSE,
    locked            BOOLEAN      NOT NULL DEFAULT FALSE,
    expires_at_ms     BIGINT       NOT NULL,
    created_at_ms     BIGINT       NOT NULL,
    updated_at_ms     BIGINT       NOT NULL,
    PRIMARY KEY (tenant_id, semaphore_key, mutex_key)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS db_locks_semaphores (
    tenant_id         VARCHAR(100) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    semaphore_key     VARCHAR(200) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    version           VARCHAR(40)  NOT NULL,
    max_size          BIGINT       NOT NULL,
    lease_duration_ms BIGINT       NOT NULL,
    created_at_ms     BIGINT       NOT NULL,
    updated_at_ms     BIGINT       NOT NULL,
    PRIMARY KEY (tenant_id, semaphore_key)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- Permit slots by index: a permit acquire walks it to the first free slot (FORCE INDEX), its
-- retired-slot check is a range scan on it, and its read-back is a lookup on it.
-- Releases and renewals name the whole primary key, which MariaDB prefers.
CREATE INDEX db_locks_mutexes_slot_index ON db_locks_mutexes (tenant_id, semaphore_key, slot_index);
