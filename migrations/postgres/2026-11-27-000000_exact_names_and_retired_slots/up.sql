-- Permit slots retired by a shrink are marked, instead of being told apart by slot_index >=
-- max_size, so a shrink can drop free slots and keep held ones wherever they are: a semaphore
-- of max_size N has exactly N active (not retired) slots, and a retired slot is never granted.
-- Free slots are found by expiry (a slot that is not locked has an expiry in the past), on an
-- index that serves both a grant and a busy answer with one range read. The expiry it indexes
-- is a column of the slots' own, slot_expires_at_ms (equal to expires_at_ms; NULL for plain
-- mutexes): plain mutexes never write it, so the index does not cost their updates anything,
-- and PostgreSQL can still update a mutex row in place (HOT), which it cannot once an indexed
-- column changes.
-- Versions may be named by the caller (up to 64 characters).
ALTER TABLE db_locks_mutexes ADD COLUMN IF NOT EXISTS retired BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE db_locks_mutexes ADD COLUMN IF NOT EXISTS slot_expires_at_ms BIGINT;
ALTER TABLE db_locks_mutexes ALTER COLUMN version TYPE VARCHAR(64);
ALTER TABLE db_locks_semaphores ALTER COLUMN version TYPE VARCHAR(64);
UPDATE db_locks_mutexes SET slot_expires_at_ms = expires_at_ms WHERE semaphore_key <> '';
UPDATE db_locks_mutexes m SET retired = TRUE
FROM db_locks_semaphores s
WHERE m.tenant_id = s.tenant_id AND m.semaphore_key = s.semaphore_key
  AND m.semaphore_key <> '' AND m.slot_index >= s.max_size;
DROP INDEX IF EXISTS db_locks_mutexes_slot_index;
-- Partial, so that only slots are indexed; statements that use it name `semaphore_key <> ''`.
CREATE INDEX IF NOT EXISTS db_locks_mutexes_free_slots
    ON db_locks_mutexes (tenant_id, semaphore_key, retired, slot_expires_at_ms)
    WHERE semaphore_key <> '';
-- Retired slots only (rare: they exist while a shrink drains), for the check every permit
-- grant makes that none of them is live. Without it, the planner may read that check through
-- the primary key, over every slot of the semaphore.
CREATE INDEX IF NOT EXISTS db_locks_mutexes_retired_slots
    ON db_locks_mutexes (tenant_id, semaphore_key, slot_expires_at_ms)
    WHERE retired = TRUE;
