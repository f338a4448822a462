-- Exact names. utf8mb4_bin is a PAD SPACE collation: it compared `T` and `T ` as equal, so
-- look-alike tenants, keys and semaphores (trailing spaces) shared rows. Binary strings compare
-- byte by byte, as every other store does. Lengths are in bytes now: 4 per character of the
-- character limits (tenant 100, keys 200, slot keys 220). Versions may be named by the caller
-- (up to 64 characters) and compare exactly too.
-- Permit slots retired by a shrink are marked, and free slots are found by expiry on an index
-- over a column of the slots' own, which plain mutexes never write (see the PostgreSQL
-- migration). The slot-index index stays: the read-back of a permit (no RETURNING here) finds
-- its slot through it.
ALTER TABLE db_locks_mutexes
    MODIFY tenant_id          VARBINARY(400) NOT NULL,
    MODIFY semaphore_key      VARBINARY(800) NOT NULL DEFAULT '',
    MODIFY mutex_key          VARBINARY(880) NOT NULL,
    MODIFY version            VARBINARY(64)  NOT NULL,
    ADD COLUMN retired        BOOLEAN        NOT NULL DEFAULT FALSE,
    ADD COLUMN slot_expires_at_ms BIGINT     NULL;
ALTER TABLE db_locks_semaphores
    MODIFY tenant_id     VARBINARY(400) NOT NULL,
    MODIFY semaphore_key VARBINARY(800) NOT NULL,
    MODIFY version       VARBINARY(64)  NOT NULL;
UPDATE db_locks_mutexes SET slot_expires_at_ms = expires_at_ms WHERE semaphore_key <> '';
UPDATE db_locks_mutexes m JOIN db_locks_semaphores s
    ON m.tenant_id = s.tenant_id AND m.semaphore_key = s.semaphore_key
SET m.retired = TRUE
WHERE m.semaphore_key <> '' AND m.slot_index >= s.max_size;
CREATE INDEX db_locks_mutexes_free_slots
    ON db_locks_mutexes (tenant_id, semaphore_key, retired, slot_expires_at_ms);
