-- Mutexes and semaphore permit slots. A plain mutex has semaphore_key = ''; a slot has its
-- semaphore's key and slot_index, so slot keys never collide with plain mutex keys.
-- Times are milliseconds since the Unix epoch by the database server's clock.
CREATE TABLE IF NOT EXISTS db_locks_mutexes (
    tenant_id         VARCHAR(100) NOT NULL,
    semaphore_key     VARCHAR(200) NOT NULL DEFAULT '',
    mutex_key         VARCHAR(220) NOT NULL,
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
);

CREATE TABLE IF NOT EXISTS db_locks_semaphores (
    tenant_id         VARCHAR(100) NOT NULL,
    semaphore_key     VARCHAR(200) NOT NULL,
    version           VARCHAR(40)  NOT NULL,
    max_size          BIGINT       NOT NULL,
    lease_duration_ms BIGINT       NOT NULL,
    created_at_ms     BIGINT       NOT NULL,
    updated_at_ms     BIGINT       NOT NULL,
    PRIMARY KEY (tenant_id, semaphore_key)
);

-- Permit slots by index, for the permit acquire: its candidate scan and its retired-slot
-- check are ranges on it. Partial, so that only statements that name the whole predicate can
-- use it, and the permit acquire names `slot_index >= 0` (true of every row) for that alone.
-- A release or renewal of a permit names the semaphore key and the slot's mutex key but not
-- `slot_index >= 0`, so it takes the primary key. With `semaphore_key <> ''` alone, it
-- proved the predicate from its semaphore key, and on a table without statistics (fresh
-- after this migration, or a semaphore created after the last ANALYZE) PostgreSQL rated the
-- two indexes alike, took this one, and read every slot of the semaphore to find one.
CREATE INDEX IF NOT EXISTS db_locks_mutexes_slot_index
    ON db_locks_mutexes (tenant_id, semaphore_key, slot_index)
    WHERE semaphore_key <> '' AND slot_index >= 0;
