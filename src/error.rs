//! The one error type of db-locks, with a kind for callers (and the CLI's exit codes)
//! and `is_retryable()` for the wait and heartbeat loops.

use thiserror::Error;

/// `Result` with [`LockError`] as the default error.
pub type Result<T, E = LockError> = std::result::Result<T, E>;

/// Everything that can go wrong. Client crates' error types never leak through it, and
/// no message carries a password from a connection URL.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum LockError {
    /// Input rejected before any I/O (empty key, zero lease, semaphore size 0, ...).
    #[error("invalid input: {0}")]
    Validation(String),
    /// A configuration that cannot work (unknown provider, bad URL, malformed file, ...).
    #[error("configuration error: {0}")]
    Config(String),
    /// The mutex or permit stayed busy for the whole wait.
    #[error("not granted: `{key}` stayed busy for the whole wait ({waited_ms} ms)")]
    NotGranted {
        /// The mutex or semaphore key.
        key: String,
        /// How long the caller waited.
        waited_ms: u64,
    },
    /// Renew or release with a version that is no longer current: the lease was released,
    /// deleted, or taken over after it expired.
    #[error("not held: `{key}` is not held with version {version} (stale version, released or taken over)")]
    NotHeld {
        /// The mutex key.
        key: String,
        /// The version the caller presented.
        version: String,
    },
    /// A guard's lease ended while the guard was alive (renewals failed or were rejected).
    #[error("lease on `{key}` lost: {reason}")]
    LeaseLost {
        /// The mutex key.
        key: String,
        /// Why the heartbeat gave up.
        reason: String,
    },
    /// The named semaphore or mutex does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The operation would break a live lease (deleting a held mutex or a semaphore with live permits).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The store could not be reached or timed out; the same call may succeed later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store answered with an error that retrying will not fix.
    #[error("store error: {0}")]
    Store(String),
}

/// The broad class of a [`LockError`], for matching without caring about details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// [`LockError::Validation`] and [`LockError::Config`].
    InvalidInput,
    /// [`LockError::NotGranted`] and [`LockError::Conflict`].
    Busy,
    /// [`LockError::NotHeld`] and [`LockError::LeaseLost`].
    NotHeld,
    /// [`LockError::NotFound`].
    NotFound,
    /// [`LockError::Unavailable`] and [`LockError::Store`].
    Store,
}

impl LockError {
    /// The broad class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            LockError::Validation(_) | LockError::Config(_) => ErrorKind::InvalidInput,
            LockError::NotGranted { .. } | LockError::Conflict(_) => ErrorKind::Busy,
            LockError::NotHeld { .. } | LockError::LeaseLost { .. } => ErrorKind::NotHeld,
            LockError::NotFound(_) => ErrorKind::NotFound,
            LockError::Unavailable(_) | LockError::Store(_) => ErrorKind::Store,
        }
    }

    /// True when the same call may succeed if tried again (the store was unreachable or slow).
    pub fn is_retryable(&self) -> bool {
        matches!(self, LockError::Unavailable(_))
    }

    pub(crate) fn validation(msg: impl Into<String>) -> Self {
        LockError::Validation(msg.into())
    }
}

/// Hides the password of a connection URL in anything printed. Every store keeps one and
/// passes every client error message through it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Redactor {
    /// The password as written in the URL and percent-decoded; client messages may show either.
    secrets: Vec<String>,
}

impl Redactor {
    /// Remembers the password of `url`, if it has one.
    pub(crate) fn for_url(url: &str) -> Self {
        let mut secrets = Vec::new();
        if let Some(raw) = url::Url::parse(url)
            .ok()
            .and_then(|u| u.password().map(str::to_owned))
        {
            let decoded = url::form_urlencoded::parse(format!("p={raw}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned());
            secrets.extend(decoded.filter(|d| !d.is_empty() && *d != raw));
            if !raw.is_empty() {
                secrets.push(raw);
            }
        }
        Redactor { secrets }
    }

    /// `msg` with every occurrence of the password replaced by `***`.
    pub(crate) fn clean(&self, msg: impl std::fmt::Display) -> String {
        let mut msg = msg.to_string();
        for secret in &self.secrets {
            msg = msg.replace(secret.as_str(), "***");
        }
        msg
    }
}

/// `url` with its password (if any) replaced by `***`, for logs and error messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_in_urls_and_messages() {
        let url = "postgres://alice:s3cr%40t@db.example:5432/locks";
        assert_eq!(
            redact_url(url),
            "postgres://alice:***@db.example:5432/locks"
        );
        let r = Redactor::for_url(url);
        assert_eq!(
            r.clean("auth failed for s3cr@t and s3cr%40t"),
            "auth failed for *** and ***"
        );
        assert_eq!(redact_url("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
    }

    #[test]
    fn kinds_and_retryability() {
        assert!(LockError::Unavailable("x".into()).is_retryable());
        assert!(!LockError::Store("x".into()).is_retryable());
        assert_eq!(LockError::validation("x").kind(), ErrorKind::InvalidInput);
        assert_eq!(
            LockError::NotGranted {
                key: "k".into(),
                waited_ms: 1
            }
            .kind(),
            ErrorKind::Busy
        );
    }
}
