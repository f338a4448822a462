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

/// Hides the passwords of connection URLs in text. Every store keeps one for its URL and
/// passes every client error message through it; the command-line tool adds every URL it was
/// given (arguments, environment, config file) to one and cleans everything it prints.
///
/// ```
/// use db_locks::Redactor;
/// let mut redactor = Redactor::default();
/// redactor.add_urls_in("DATABASE_URL=postgres://app:s3cr%40t@db/locks other words");
/// assert_eq!(redactor.clean("login for s3cr@t failed"), "login for *** failed");
/// ```
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// Passwords as written in URLs and percent-decoded; messages may show either.
    secrets: Vec<String>,
}

impl Redactor {
    /// A redactor that knows the password of `url`, if it has one.
    pub fn for_url(url: &str) -> Self {
        let mut redactor = Redactor::default();
        redactor.add_url(url);
        redactor
    }

    /// Remembers the password of `url`, if it is a URL with one.
    pub fn add_url(&mut self, url: &str) {
        let Some(range) = password_range(url) else {
            return;
        };
        let raw = url[range].to_owned();
        let decoded = url::form_urlencoded::parse(format!("p={raw}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned());
        self.secrets
            .extend(decoded.filter(|d| !d.is_empty() && *d != raw));
        if !raw.is_empty() {
            self.secrets.push(raw);
        }
    }

    /// Remembers the password of every URL in `text` (`scheme://...` between spaces, quotes or
    /// brackets), whatever else the text holds.
    pub fn add_urls_in(&mut self, text: &str) {
        let separators = |c: char| c.is_whitespace() || "\"'`,;()[]{}<>".contains(c);
        for token in text.split(separators) {
            let Some(sep) = token.find("://") else {
                continue;
            };
            // The scheme: the ASCII letters, digits, `+`, `-` and `.` just before `://`.
            let scheme_len: usize = token[..sep]
                .chars()
                .rev()
                .take_while(|c| c.is_ascii_alphanumeric() || "+-.".contains(*c))
                .map(char::len_utf8)
                .sum();
            self.add_url(&token[sep - scheme_len..]);
        }
    }

    /// `msg` with every occurrence of a known password replaced by `***`.
    pub fn clean(&self, msg: impl std::fmt::Display) -> String {
        let mut msg = msg.to_string();
        for secret in &self.secrets {
            msg = msg.replace(secret.as_str(), "***");
        }
        msg
    }
}

/// `url` with its password (if any) replaced by `***`, for logs and error messages.
pub fn redact_url(url: &str) -> String {
    match password_range(url) {
        Some(range) if !range.is_empty() => {
            format!("{}***{}", &url[..range.start], &url[range.end..])
        }
        _ => url.to_owned(),
    }
}

/// Where the password is in `url` (`scheme://user:password@host…`), by the generic syntax
/// rather than a URL parser, so that host lists (`redis+cluster://u:p@h1:7001,h2:7002`) and
/// any scheme are covered: the authority runs to the first `/`, `?` or `#`, its user part to
/// its last `@`, and the password from the user part's first `:`.
fn password_range(url: &str) -> Option<std::ops::Range<usize>> {
    let start = url.find("://")? + 3;
    let rest = &url[start..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let at = authority.rfind('@')?;
    let colon = authority[..at].find(':')?;
    Some(start + colon + 1..start + at)
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
        let list = "redis+cluster://u:pw@h1:7001,h2:7002/";
        assert_eq!(redact_url(list), "redis+cluster://u:***@h1:7001,h2:7002/");
        assert_eq!(Redactor::for_url(list).clean("bad pw"), "bad ***");
        assert_eq!(redact_url("redis://:pw@h/"), "redis://:***@h/");
        assert_eq!(redact_url("redis://h:6379/0"), "redis://h:6379/0");
    }

    proptest::proptest! {
        /// Any text at all: no panic, and a password embedded in it is hidden.
        #[test]
        fn redaction_takes_any_text(
            before in "\\PC*",
            after in "\\PC*",
            password in "[a-zA-Z0-9]{6,12}",
        ) {
            let mut r = Redactor::default();
            r.add_urls_in(&before);
            let _ = r.clean(&before);
            let url = format!("postgres://u:{password}@h/db");
            let text = format!("{before} {url} {after}");
            let mut r = Redactor::default();
            r.add_urls_in(&text);
            let cleaned = r.clean(format!("x{password}x"));
            proptest::prop_assert!(!cleaned.contains(&password), "{}", cleaned);
            let _ = redact_url(&text);
        }
    }

    #[test]
    fn urls_after_multibyte_characters() {
        let mut r = Redactor::default();
        r.add_urls_in("詳細https://example.com café://x 詳細mysql://u:pw1234@h/db");
        assert_eq!(r.clean("pw1234"), "***");
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
