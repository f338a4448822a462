//! The input rules, in one place: the manager, the option types, the config and the CLI all
//! check with these functions, so they cannot drift apart.

use std::time::Duration;

use crate::error::{LockError, Result};

/// Longest mutex or semaphore key, in characters.
pub const MAX_KEY_LEN: usize = 200;
/// Longest tenant id, in characters.
pub const MAX_TENANT_LEN: usize = 100;
/// Largest `data` stored with a lock, in bytes.
pub const MAX_DATA_LEN: usize = 64 * 1024;
/// Largest semaphore.
pub const MAX_SEMAPHORE_SIZE: i64 = 10_000;
/// Longest lease (and wait): 30 days.
pub const MAX_LEASE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest version, in bytes (a UUID takes 36).
pub const MAX_VERSION_LEN: usize = 64;

fn validate_name(what: &str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() {
        return Err(LockError::validation(format!("{what} must not be empty")));
    }
    let len = value.chars().count();
    if len > max {
        return Err(LockError::validation(format!(
            "{what} is {len} characters long; the limit is {max}"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(LockError::validation(format!(
            "{what} must not contain control characters"
        )));
    }
    Ok(())
}

/// Checks a mutex or semaphore key: 1 to [`MAX_KEY_LEN`] characters, no control characters.
/// Any other character is allowed, and keys that differ in any byte are different keys.
pub fn validate_key(key: &str) -> Result<()> {
    validate_name("key", key, MAX_KEY_LEN)
}

/// Checks the key of a held lock that a caller names to renew or release it: a mutex key, or,
/// with `semaphore_key`, the key of one of that semaphore's permit slots,
/// `<semaphore_key>_<index>` (up to [`MAX_KEY_LEN`] plus the index: a slot of the longest
/// semaphore key is longer than a mutex key may be). Returns the slot index.
pub fn validate_lock_key(key: &str, semaphore_key: Option<&str>) -> Result<Option<u32>> {
    let Some(semaphore_key) = semaphore_key else {
        return validate_key(key).map(|()| None);
    };
    validate_key(semaphore_key)?;
    key.strip_prefix(semaphore_key)
        .and_then(|rest| rest.strip_prefix('_'))
        .and_then(|i| i.parse::<u32>().ok().filter(|n| n.to_string() == i))
        .map(Some)
        .ok_or_else(|| {
            LockError::validation(format!(
                "`{key}` is not a permit of semaphore `{semaphore_key}`: its permits are \
                 `{semaphore_key}_<index>`"
            ))
        })
}

/// Checks a tenant id: 1 to [`MAX_TENANT_LEN`] characters, no control characters.
pub fn validate_tenant(tenant: &str) -> Result<()> {
    validate_name("tenant id", tenant, MAX_TENANT_LEN)
}

/// Checks a version: 1 to [`MAX_VERSION_LEN`] printable ASCII characters, no spaces.
pub fn validate_version(version: &str) -> Result<()> {
    if version.is_empty() || version.len() > MAX_VERSION_LEN {
        return Err(LockError::validation(format!(
            "a version is 1 to {MAX_VERSION_LEN} characters long, not {}",
            version.len()
        )));
    }
    if !version.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(LockError::validation(
            "a version may contain only printable ASCII characters, without spaces",
        ));
    }
    Ok(())
}

/// Checks a lease (or a wait, with `what` naming it): more than zero (a wait may be zero),
/// at most [`MAX_LEASE`].
pub fn validate_duration(what: &str, value: Duration, zero_allowed: bool) -> Result<()> {
    if value.is_zero() && !zero_allowed {
        return Err(LockError::validation(format!(
            "{what} must be greater than zero"
        )));
    }
    if value > MAX_LEASE {
        return Err(LockError::validation(format!(
            "{what} of {} s is longer than the limit of {} s",
            value.as_secs(),
            MAX_LEASE.as_secs()
        )));
    }
    Ok(())
}

/// Checks data stored with a lock: at most [`MAX_DATA_LEN`] bytes.
pub fn validate_data(data: Option<&str>) -> Result<()> {
    match data {
        Some(d) if d.len() > MAX_DATA_LEN => Err(LockError::validation(format!(
            "data is {} bytes; the limit is {MAX_DATA_LEN}",
            d.len()
        ))),
        _ => Ok(()),
    }
}

/// Checks a semaphore size: 1 to [`MAX_SEMAPHORE_SIZE`].
pub fn validate_semaphore_size(size: i64) -> Result<()> {
    if (1..=MAX_SEMAPHORE_SIZE).contains(&size) {
        Ok(())
    } else {
        Err(LockError::validation(format!(
            "semaphore size must be between 1 and {MAX_SEMAPHORE_SIZE}, not {size}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_keys_are_checked_against_their_semaphore() {
        assert_eq!(validate_lock_key("pool_3", Some("pool")).unwrap(), Some(3));
        assert_eq!(validate_lock_key("a_1_12", Some("a_1")).unwrap(), Some(12));
        assert_eq!(validate_lock_key("pool_3", None).unwrap(), None);
        for bad in ["pool_03", "pool_-1", "other_1", "pool3", "pool_", "pool_x"] {
            assert!(validate_lock_key(bad, Some("pool")).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_and_sizes() {
        assert!(validate_duration("lease", Duration::ZERO, false).is_err());
        assert!(validate_duration("wait", Duration::ZERO, true).is_ok());
        assert!(validate_duration("lease", MAX_LEASE + Duration::from_secs(1), false).is_err());
        assert!(validate_semaphore_size(0).is_err());
        assert!(validate_semaphore_size(MAX_SEMAPHORE_SIZE).is_ok());
    }
}
