//! Items of the two tables: keys, attribute names, expression parameters, and conversion
//! into the crate's records.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use crate::error::{LockError, Result};
use crate::model::{from_millis, millis_to_datetime, MutexLock, Semaphore};
use crate::store::Target;

/// One item, as the SDK hands it over.
pub(super) type Item = HashMap<String, AttributeValue>;

/// Separates the tenant from the semaphore key in a partition key. Keys and tenant ids never
/// contain control characters (the manager rejects them), so the pair is unambiguous.
pub(super) const SEP: char = '\u{1f}';

// Attribute names. Every expression refers to them as `#name`, so DynamoDB's reserved words
// (`data` is one) need no care.
pub(super) const PK: &str = "pk";
pub(super) const SK: &str = "sk";
pub(super) const TENANT_ID: &str = "tenant_id";
pub(super) const SEMAPHORE_KEY: &str = "semaphore_key";
pub(super) const SLOT_INDEX: &str = "slot_index";
pub(super) const VERSION: &str = "version";
pub(super) const RVN: &str = "rvn";
pub(super) const FENCING_TOKEN: &str = "fencing_token";
pub(super) const LEASE_DURATION_MS: &str = "lease_duration_ms";
pub(super) const DATA: &str = "data";
pub(super) const DELETE_ON_RELEASE: &str = "delete_on_release";
pub(super) const LOCKED: &str = "locked";
pub(super) const EXPIRES_AT_MS: &str = "expires_at_ms";
pub(super) const DELETED: &str = "deleted";
pub(super) const MAX_SIZE: &str = "max_size";
pub(super) const SLOT_COUNT: &str = "slot_count";
pub(super) const RETIRED: &str = "retired";
pub(super) const DELETING: &str = "deleting";

/// The primary key of an item: partition key `pk` and sort key `sk`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Key {
    pub(super) pk: String,
    pub(super) sk: String,
}

impl Key {
    /// A plain mutex (`semaphore_key` = None) or a permit slot, in the mutex table.
    pub(super) fn mutex(tenant_id: &str, semaphore_key: Option<&str>, mutex_key: &str) -> Key {
        Key {
            pk: mutex_partition(tenant_id, semaphore_key.unwrap_or("")),
            sk: mutex_key.to_owned(),
        }
    }

    /// The plain mutex or permit slot a renewal or release names.
    pub(super) fn target(tenant_id: &str, target: Target<'_>) -> Key {
        Key::mutex(tenant_id, target.semaphore(), &target.key())
    }

    /// Permit slot `number` of a semaphore: the number in its key (its position, `slot_index`,
    /// differs from it once a shrink has swapped it).
    pub(super) fn slot(tenant_id: &str, semaphore_key: &str, number: i64) -> Key {
        // Slot numbers lie below `slot_count`, which validation keeps far below `u32::MAX`.
        let index = number as u32;
        Key::target(
            tenant_id,
            Target::Slot {
                semaphore: semaphore_key,
                index,
            },
        )
    }

    /// The key of `item` (of either table).
    pub(super) fn mutex_of(item: &Item) -> Result<Key> {
        match (get_s(item, PK), get_s(item, SK)) {
            (Some(pk), Some(sk)) => Ok(Key {
                pk: pk.to_owned(),
                sk: sk.to_owned(),
            }),
            _ => Err(malformed("pk/sk", item)),
        }
    }

    /// A semaphore, in the semaphore table.
    pub(super) fn semaphore(tenant_id: &str, semaphore_key: &str) -> Key {
        Key {
            pk: tenant_id.to_owned(),
            sk: semaphore_key.to_owned(),
        }
    }

    pub(super) fn to_item(&self) -> Item {
        HashMap::from([
            (PK.to_owned(), AttributeValue::S(self.pk.clone())),
            (SK.to_owned(), AttributeValue::S(self.sk.clone())),
        ])
    }
}

/// The partition of a tenant's plain mutexes (`semaphore_key` = "") or of one semaphore's slots.
pub(super) fn mutex_partition(tenant_id: &str, semaphore_key: &str) -> String {
    format!("{tenant_id}{SEP}{semaphore_key}")
}

/// The values of an expression, by `:name`. Only the names and values an expression actually
/// uses are sent: DynamoDB rejects unused ones.
#[derive(Debug, Default, Clone)]
pub(super) struct Params {
    values: HashMap<String, AttributeValue>,
}

impl Params {
    pub(super) fn new() -> Params {
        Params::default()
    }

    pub(super) fn s(mut self, name: &str, value: impl Into<String>) -> Params {
        self.set(name, AttributeValue::S(value.into()));
        self
    }

    pub(super) fn n(mut self, name: &str, value: i64) -> Params {
        self.set(name, AttributeValue::N(value.to_string()));
        self
    }

    pub(super) fn b(mut self, name: &str, value: bool) -> Params {
        self.set(name, AttributeValue::Bool(value));
        self
    }

    pub(super) fn ns(mut self, name: &str, values: &[i64]) -> Params {
        self.set(
            name,
            AttributeValue::Ns(values.iter().map(i64::to_string).collect()),
        );
        self
    }

    /// Whether a value named `name` is set.
    pub(super) fn has(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    pub(super) fn set(&mut self, name: &str, value: AttributeValue) {
        debug_assert!(name.starts_with(':'));
        self.values.insert(name.to_owned(), value);
    }

    /// `#name` placeholders used by `exprs`, mapped to the attribute names.
    pub(super) fn names_for(exprs: &[&str]) -> Option<HashMap<String, String>> {
        let names: HashMap<String, String> = exprs
            .iter()
            .flat_map(|e| tokens(e, '#'))
            .map(|t| (t.to_owned(), t[1..].to_owned()))
            .collect();
        (!names.is_empty()).then_some(names)
    }

    /// The values `exprs` use.
    pub(super) fn values_for(&self, exprs: &[&str]) -> Option<HashMap<String, AttributeValue>> {
        let values: HashMap<String, AttributeValue> = exprs
            .iter()
            .flat_map(|e| tokens(e, ':'))
            .map(|t| {
                let v = self.values.get(t).cloned();
                debug_assert!(v.is_some(), "no value for {t}");
                (t.to_owned(), v.unwrap_or(AttributeValue::Null(true)))
            })
            .collect();
        (!values.is_empty()).then_some(values)
    }
}

/// The `#name` or `:name` tokens of an expression.
fn tokens(expr: &str, sigil: char) -> impl Iterator<Item = &str> {
    let bytes = expr.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < bytes.len() {
            if bytes[i] == sigil as u8 {
                let start = i;
                i += 1;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                if i > start + 1 {
                    return Some(&expr[start..i]);
                }
            } else {
                i += 1;
            }
        }
        None
    })
}

pub(super) fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(s)) => Some(s),
        _ => None,
    }
}

pub(super) fn get_n(item: &Item, name: &str) -> Option<i64> {
    match item.get(name) {
        Some(AttributeValue::N(n)) => n.parse().ok(),
        _ => None,
    }
}

/// A boolean attribute; absent means false.
pub(super) fn get_bool(item: &Item, name: &str) -> bool {
    matches!(item.get(name), Some(AttributeValue::Bool(true)))
}

/// A number set; absent means empty.
pub(super) fn get_ns(item: &Item, name: &str) -> Vec<i64> {
    match item.get(name) {
        Some(AttributeValue::Ns(ns)) => ns.iter().filter_map(|n| n.parse().ok()).collect(),
        _ => Vec::new(),
    }
}

fn malformed(what: &str, item: &Item) -> LockError {
    LockError::Store(format!(
        "malformed DynamoDB item: {what} missing or of the wrong type (key {:?} / {:?})",
        get_s(item, PK),
        get_s(item, SK)
    ))
}

/// A mutex or slot item (not a tombstone) as a record.
pub(super) fn to_mutex(item: &Item) -> Result<MutexLock> {
    let s = |name: &str| {
        get_s(item, name)
            .map(str::to_owned)
            .ok_or_else(|| malformed(name, item))
    };
    let n = |name: &str| get_n(item, name).ok_or_else(|| malformed(name, item));
    Ok(MutexLock {
        mutex_key: s(SK)?,
        tenant_id: s(TENANT_ID)?,
        version: get_s(item, VERSION).unwrap_or_default().to_owned(),
        fencing_token: get_n(item, FENCING_TOKEN).unwrap_or(0),
        lease_duration: from_millis(n(LEASE_DURATION_MS)?),
        semaphore_key: get_s(item, SEMAPHORE_KEY).map(str::to_owned),
        data: get_s(item, DATA).map(str::to_owned),
        delete_on_release: get_bool(item, DELETE_ON_RELEASE),
        locked: get_bool(item, LOCKED),
        expires_at: millis_to_datetime(n(EXPIRES_AT_MS)?),
    })
}

/// What the store needs to know about a semaphore to grant its permits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SemaphoreInfo {
    pub(super) tenant_id: String,
    pub(super) semaphore_key: String,
    /// Changes with every create, resize and deletion step.
    pub(super) version: String,
    pub(super) max_size: i64,
    pub(super) lease_ms: i64,
    /// Slot items `0..slot_count` exist (slot items are never deleted).
    pub(super) slot_count: i64,
    /// Slots at or above `max_size` that may still be held (left over from a shrink).
    pub(super) retired: Vec<i64>,
    /// A deletion is checking the slots; no permit is granted meanwhile.
    pub(super) deleting: bool,
}

impl SemaphoreInfo {
    /// `None` for a tombstone (a deleted semaphore keeps its item, and with it `slot_count`).
    pub(super) fn from_item(item: &Item) -> Result<Option<SemaphoreInfo>> {
        if get_bool(item, DELETED) {
            return Ok(None);
        }
        Self::from_item_any(item).map(Some)
    }

    /// Reads tombstones too.
    pub(super) fn from_item_any(item: &Item) -> Result<SemaphoreInfo> {
        let n = |name: &str| get_n(item, name).ok_or_else(|| malformed(name, item));
        let s = |name: &str| {
            get_s(item, name)
                .map(str::to_owned)
                .ok_or_else(|| malformed(name, item))
        };
        Ok(SemaphoreInfo {
            tenant_id: s(PK)?,
            semaphore_key: s(SK)?,
            version: s(VERSION)?,
            max_size: n(MAX_SIZE)?,
            lease_ms: n(LEASE_DURATION_MS)?,
            slot_count: get_n(item, SLOT_COUNT).unwrap_or(0),
            retired: get_ns(item, RETIRED),
            deleting: get_bool(item, DELETING),
        })
    }

    pub(super) fn to_semaphore(&self, busy_count: i64) -> Semaphore {
        Semaphore {
            semaphore_key: self.semaphore_key.clone(),
            tenant_id: self.tenant_id.clone(),
            version: self.version.clone(),
            max_size: self.max_size,
            lease_duration: from_millis(self.lease_ms),
            busy_count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expression_tokens() {
        let e = "SET #a = :x, #b_c = :y REMOVE #d";
        let names = Params::names_for(&[e, "#a = :z"]).unwrap();
        assert_eq!(names.len(), 3);
        assert_eq!(names["#b_c"], "b_c");
        let p = Params::new()
            .n(":x", 1)
            .n(":y", 2)
            .n(":z", 3)
            .n(":unused", 4);
        let values = p.values_for(&[e]).unwrap();
        assert_eq!(values.len(), 2);
        assert!(!values.contains_key(":z"));
    }

    #[test]
    fn partitions_are_unambiguous() {
        assert_ne!(mutex_partition("a#b", "c"), mutex_partition("a", "b#c"));
        assert_ne!(mutex_partition("ab", ""), mutex_partition("a", "b"));
    }
}
