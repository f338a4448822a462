//! What a resize does to the permit slots of a semaphore, decided on a locked snapshot of all of
//! them (see the slot invariants in `statements.rs`).
//!
//! Invariants of the plan, given the snapshot:
//! * Afterwards exactly `max_size` slots are active (not retired).
//! * No live slot is dropped, and no live holder loses its slot: a held slot beyond the new
//!   size is retired, not deleted, and keeps its key, version and fencing token.
//! * Shrinking drops free slots before it retires held ones, highest index first; growing
//!   un-retires live retired slots before it creates new ones, at the lowest unused indexes.
//! * No live retired slot is left beside a free active one: such pairs are settled by dropping
//!   the free slot and un-retiring the live one, so grants resume as soon as fewer than
//!   `max_size` permits are live.

/// One slot as the snapshot shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) key: String,
    pub(crate) index: i64,
    pub(crate) retired: bool,
    /// Held with a lease that has not run out by the server's clock.
    pub(crate) live: bool,
}

/// The changes a resize makes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Slots deleted: free ones, and retired ones that are no longer live.
    pub(crate) drop: Vec<String>,
    /// Live active slots retired.
    pub(crate) retire: Vec<String>,
    /// Live retired slots made active again.
    pub(crate) unretire: Vec<String>,
    /// Indexes of new slots (keys `<semaphore>_<index>`).
    pub(crate) create: Vec<i64>,
}

/// The plan that gives the semaphore `max_size` active slots.
pub(crate) fn resize(slots: &[Slot], max_size: i64) -> Plan {
    let max_size = usize::try_from(max_size).unwrap_or(0);
    let mut plan = Plan::default();
    let mut free_active: Vec<&Slot> = Vec::new();
    let mut live_active: Vec<&Slot> = Vec::new();
    let mut live_retired: Vec<&Slot> = Vec::new();
    for slot in slots {
        match (slot.retired, slot.live) {
            (false, false) => free_active.push(slot),
            (false, true) => live_active.push(slot),
            (true, true) => live_retired.push(slot),
            (true, false) => plan.drop.push(slot.key.clone()),
        }
    }
    // Highest index last, so `pop` takes it; lowest retired first.
    free_active.sort_by_key(|s| s.index);
    live_active.sort_by_key(|s| s.index);
    live_retired.sort_by_key(|s| std::cmp::Reverse(s.index));
    let mut active = free_active.len() + live_active.len();
    while active > max_size {
        match (free_active.pop(), live_active.pop()) {
            (Some(free), held) => {
                plan.drop.push(free.key.clone());
                live_active.extend(held);
            }
            (None, Some(held)) => plan.retire.push(held.key.clone()),
            (None, None) => unreachable!("active counts the free and live active slots"),
        }
        active -= 1;
    }
    while active < max_size {
        match live_retired.pop() {
            Some(held) => plan.unretire.push(held.key.clone()),
            None => break,
        }
        active += 1;
    }
    if active < max_size {
        let kept: std::collections::HashSet<i64> = slots
            .iter()
            .filter(|s| !plan.drop.contains(&s.key))
            .map(|s| s.index)
            .collect();
        plan.create = (0..)
            .filter(|i| !kept.contains(i))
            .take(max_size - active)
            .collect();
    }
    // Settle live retired slots against free active ones.
    while let (Some(held), Some(free)) = (live_retired.last(), free_active.last()) {
        plan.unretire.push(held.key.clone());
        plan.drop.push(free.key.clone());
        live_retired.pop();
        free_active.pop();
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots `sem_0..` from (retired, live) pairs.
    fn slots(states: &[(bool, bool)]) -> Vec<Slot> {
        states
            .iter()
            .enumerate()
            .map(|(i, &(retired, live))| Slot {
                key: format!("sem_{i}"),
                index: i as i64,
                retired,
                live,
            })
            .collect()
    }

    fn keys(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    const FREE: (bool, bool) = (false, false);
    const HELD: (bool, bool) = (false, true);
    const RETIRED_HELD: (bool, bool) = (true, true);
    const RETIRED_DEAD: (bool, bool) = (true, false);

    #[test]
    fn create_and_grow() {
        assert_eq!(resize(&[], 3).create, vec![0, 1, 2]);
        let plan = resize(&slots(&[HELD, FREE]), 4);
        assert_eq!(plan.create, vec![2, 3]);
        assert!(plan.drop.is_empty() && plan.retire.is_empty());
    }

    #[test]
    fn shrink_drops_free_slots_before_retiring_held_ones() {
        // Size 4, slots 0 and 3 busy, shrink to 3: slot 2 goes; 0, 1 and 3 stay active.
        let plan = resize(&slots(&[HELD, FREE, FREE, HELD]), 3);
        assert_eq!(plan.drop, keys(&["sem_2"]));
        assert!(plan.retire.is_empty());
        // To 1: both free slots go, then the highest held one is retired.
        let plan = resize(&slots(&[HELD, FREE, FREE, HELD]), 1);
        assert_eq!(plan.drop, keys(&["sem_2", "sem_1"]));
        assert_eq!(plan.retire, keys(&["sem_3"]));
    }

    #[test]
    fn growing_unretires_before_creating() {
        let plan = resize(&slots(&[HELD, RETIRED_HELD, RETIRED_DEAD, RETIRED_HELD]), 3);
        assert_eq!(plan.drop, keys(&["sem_2"]));
        assert_eq!(plan.unretire, keys(&["sem_1", "sem_3"]));
        assert!(plan.create.is_empty());
        let plan = resize(&slots(&[HELD, RETIRED_DEAD]), 3);
        assert_eq!(plan.drop, keys(&["sem_1"]));
        assert_eq!(
            plan.create,
            vec![1, 2],
            "the dropped slot's index is reused"
        );
    }

    #[test]
    fn live_retired_slots_take_the_place_of_free_ones() {
        // A resize to the same size settles a retired holder against a free slot.
        let plan = resize(&slots(&[FREE, HELD, RETIRED_HELD]), 2);
        assert_eq!(plan.unretire, keys(&["sem_2"]));
        assert_eq!(plan.drop, keys(&["sem_0"]));
    }

    #[test]
    fn active_count_is_max_size() {
        let states = [
            FREE,
            HELD,
            RETIRED_HELD,
            RETIRED_DEAD,
            HELD,
            FREE,
            RETIRED_HELD,
        ];
        for size in 0..10 {
            let snapshot = slots(&states);
            let plan = resize(&snapshot, size);
            let mut active = 0;
            for s in &snapshot {
                let dropped = plan.drop.contains(&s.key);
                assert!(!(dropped && s.live), "dropped a live slot");
                let retired =
                    (s.retired && !plan.unretire.contains(&s.key)) || plan.retire.contains(&s.key);
                if !dropped && !retired {
                    active += 1;
                }
            }
            active += plan.create.len() as i64;
            assert_eq!(active, size, "{plan:?}");
        }
    }
}
