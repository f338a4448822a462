-- Permit slots retired by a shrink are marked, and free slots are found by expiry on an index
-- over a column of the slots' own (see the PostgreSQL migration).
ALTER TABLE db_locks_mutexes ADD COLUMN retired BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE db_locks_mutexes ADD COLUMN slot_expires_at_ms BIGINT;
UPDATE db_locks_mutexes SET slot_expires_at_ms = expires_at_ms WHERE semaphore_key <> '';
UPDATE db_locks_mutexes SET retired = TRUE
WHERE semaphore_key <> '' AND slot_index >= (
    SELECT s.max_size FROM db_locks_semaphores s
    WHERE s.tenant_id = db_locks_mutexes.tenant_id AND s.semaphore_key = db_locks_mutexes.semaphore_key);
DROP INDEX IF EXISTS db_locks_mutexes_slot_index;
-- Partial, so that only slots are indexed; statements that use it name `semaphore_key <> ''`.
CREATE INDEX IF NOT EXISTS db_locks_mutexes_free_slots
    ON db_locks_mutexes (tenant_id, semaphore_key, retired, slot_expires_at_ms)
    WHERE semaphore_key <> '';
-- Retired slots only, for the check every permit grant makes that none of them is live.
CREATE INDEX IF NOT EXISTS db_locks_mutexes_retired_slots
    ON db_locks_mutexes (tenant_id, semaphore_key, slot_expires_at_ms)
    WHERE retired = TRUE;
