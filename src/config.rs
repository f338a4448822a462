//! [`LocksConfig`]: every setting of a [`crate::LockManager`], loadable from TOML, with
//! environment overrides.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{redact_url, LockError, Result};

/// Where locks are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// A relational database through diesel: SQLite (default), PostgreSQL or MySQL/MariaDB.
    #[default]
    Rdb,
    /// Amazon DynamoDB or a DynamoDB-compatible server.
    Ddb,
    /// Redis (one primary).
    Redis,
}

impl Provider {
    /// Every provider, in the order the CLI lists them.
    pub const ALL: [Provider; 3] = [Provider::Rdb, Provider::Ddb, Provider::Redis];

    /// The provider's name, as configs and the CLI spell it.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Rdb => "rdb",
            Provider::Ddb => "ddb",
            Provider::Redis => "redis",
        }
    }

    /// What the provider stores locks in, in a few words.
    pub fn description(self) -> &'static str {
        match self {
            Provider::Rdb => {
                "a relational database: a SQLite file (default), PostgreSQL or MySQL/MariaDB"
            }
            Provider::Ddb => "Amazon DynamoDB or a DynamoDB-compatible server",
            Provider::Redis => "Redis (one primary)",
        }
    }

    /// Other names that parse as this provider.
    pub fn aliases(self) -> &'static [&'static str] {
        match self {
            Provider::Ddb => &["dynamodb"],
            Provider::Rdb | Provider::Redis => &[],
        }
    }
}

impl FromStr for Provider {
    type Err = LockError;

    fn from_str(s: &str) -> Result<Self> {
        let name = s.to_ascii_lowercase();
        Provider::ALL
            .into_iter()
            .find(|p| p.name() == name || p.aliases().contains(&name.as_str()))
            .ok_or_else(|| {
                let known = Provider::ALL.map(Provider::name);
                LockError::Config(format!(
                    "unknown provider `{name}` (expected one of {})",
                    known.join(", ")
                ))
            })
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Settings of a [`crate::LockManager`].
///
/// In a TOML file, the keys are the field names; durations are in milliseconds there, with
/// an `_ms` suffix (`io_timeout_ms = 5000`).
///
/// ```
/// use db_locks::LocksConfig;
/// let config = LocksConfig::new("billing").with_database_url("sqlite:///tmp/locks.sqlite");
/// assert_eq!(config.tenant_id, "billing");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct LocksConfig {
    /// Every record belongs to one tenant; tenants never see each other's locks.
    pub tenant_id: String,
    /// Which kind of store.
    pub provider: Provider,
    /// `rdb`: a SQLite path or `sqlite://`, `postgres://`, `mysql://` URL.
    /// `None`: a SQLite file under the user's data directory ([`LocksConfig::default_sqlite_path`]).
    pub database_url: Option<String>,
    /// Connections kept by the pool.
    pub pool_size: u32,
    /// How long connecting (or waiting for a pooled connection) may take.
    #[serde(rename = "connect_timeout_ms", with = "millis")]
    pub connect_timeout: Duration,
    /// Longest time a single store request may take before it fails (see the README's
    /// guarantee 8 for what bounds a request on each store).
    #[serde(rename = "io_timeout_ms", with = "millis")]
    pub io_timeout: Duration,
    /// Lease used when the options give none.
    #[serde(rename = "default_lease_ms", with = "millis")]
    pub default_lease: Duration,
    /// How often guards renew; `None`: a third of the lease minus the safety margin.
    #[serde(rename = "heartbeat_period_ms", with = "optional_millis")]
    pub heartbeat_period: Option<Duration>,
    /// A guard treats its lease as lost this long before it ends by its own clock;
    /// `None`: a tenth of the lease, at most one second.
    #[serde(rename = "lease_safety_margin_ms", with = "optional_millis")]
    pub lease_safety_margin: Option<Duration>,
    /// First backoff step while waiting for a busy lock.
    #[serde(rename = "retry_base_ms", with = "millis")]
    pub retry_base: Duration,
    /// Largest backoff step while waiting.
    #[serde(rename = "retry_max_ms", with = "millis")]
    pub retry_max: Duration,
    /// Create or upgrade the schema (tables) when the manager starts.
    pub run_migrations: bool,
    /// `redis`: where Redis is: `redis://` or `rediss://` (TLS) for one server,
    /// `redis+sentinel://s1:26379,s2:26379/service` for the primary that Sentinel names,
    /// `redis+cluster://n1:7000,n2:7000` for a Redis Cluster; `user:password@` before the
    /// hosts for an ACL user (see the README's "Redis deployments").
    pub redis_url: String,
    /// `redis`: a PEM file of the certificate authority that signed the servers'
    /// certificates (`rediss…` URLs); `None`: the system's roots.
    pub redis_tls_ca_file: Option<PathBuf>,
    /// `redis`: a PEM client certificate, for servers that require one (with
    /// `redis_tls_client_key_file`).
    pub redis_tls_client_cert_file: Option<PathBuf>,
    /// `redis`: the PEM key of `redis_tls_client_cert_file`.
    pub redis_tls_client_key_file: Option<PathBuf>,
    /// `redis`: **for tests only**: accept any server certificate, unverified. Anyone on the
    /// path can then read and forge every lock operation.
    pub redis_tls_danger_accept_invalid_certs: bool,
    /// `redis`: prefix of every key.
    pub redis_key_prefix: String,
    /// `ddb`: endpoint override (DynamoDB Local, moto, ...); `None`: the AWS default chain.
    pub dynamodb_endpoint: Option<String>,
    /// `ddb`: region override; `None`: the AWS default chain.
    pub dynamodb_region: Option<String>,
    /// `ddb`: table of mutexes.
    pub dynamodb_mutex_table: String,
    /// `ddb`: table of semaphores.
    pub dynamodb_semaphore_table: String,
    /// `ddb`: besides watching a held lock's version for a whole lease (which needs no clock but
    /// takes a lease of watching), take over a lock whose stored expiry (its holder's wall clock
    /// plus the lease) is more than this far in the past on this machine's wall clock. This is
    /// what lets a try-once caller take over a lock whose holder crashed. Safe while every
    /// machine's clock is within this bound of every other's. Default: one minute. `None`:
    /// never compare clocks (a process then takes over only a lock it has watched for a whole
    /// lease); in a TOML file, write `"off"`.
    #[serde(rename = "dynamodb_trust_expiry_with_skew_ms", with = "millis_or_off")]
    pub dynamodb_trust_expiry_with_skew: Option<Duration>,
}

impl Default for LocksConfig {
    fn default() -> Self {
        LocksConfig {
            tenant_id: "default".into(),
            provider: Provider::Rdb,
            database_url: None,
            pool_size: 8,
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(5),
            default_lease: Duration::from_secs(15),
            heartbeat_period: None,
            lease_safety_margin: None,
            retry_base: Duration::from_millis(10),
            retry_max: Duration::from_millis(500),
            run_migrations: true,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_tls_ca_file: None,
            redis_tls_client_cert_file: None,
            redis_tls_client_key_file: None,
            redis_tls_danger_accept_invalid_certs: false,
            redis_key_prefix: "db-locks".into(),
            dynamodb_endpoint: None,
            dynamodb_region: None,
            dynamodb_mutex_table: "db_locks_mutexes".into(),
            dynamodb_semaphore_table: "db_locks_semaphores".into(),
            dynamodb_trust_expiry_with_skew: Some(Duration::from_secs(60)),
        }
    }
}

/// Durations in whole milliseconds, as config files write them.
mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// Optional durations in whole milliseconds (absent: `None`).
mod optional_millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        u64::deserialize(d).map(|ms| Some(Duration::from_millis(ms)))
    }
}

/// A number of milliseconds, or `"off"` for `None` (TOML has no null).
mod millis_or_off {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_u64(d.as_millis() as u64),
            None => s.serialize_str("off"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum MillisOrOff {
            Millis(u64),
            Word(String),
        }
        match MillisOrOff::deserialize(d)? {
            MillisOrOff::Millis(ms) => Ok(Some(Duration::from_millis(ms))),
            MillisOrOff::Word(w) if w.eq_ignore_ascii_case("off") => Ok(None),
            MillisOrOff::Word(w) => Err(serde::de::Error::custom(format!(
                "expected a number of milliseconds or \"off\", not \"{w}\""
            ))),
        }
    }
}

impl LocksConfig {
    /// Defaults for `tenant_id`: SQLite in the user's data directory, 15 s leases.
    pub fn new(tenant_id: impl Into<String>) -> Self {
        LocksConfig {
            tenant_id: tenant_id.into(),
            ..LocksConfig::default()
        }
    }

    /// Reads a TOML file whose keys are this struct's field names (durations in `_ms`);
    /// missing keys keep their defaults.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            LockError::Config(format!("cannot read config file {}: {e}", path.display()))
        })?;
        Self::from_toml_str(&text)
            .map_err(|e| LockError::Config(format!("config file {}: {e}", path.display())))
    }

    /// Parses TOML text (see [`LocksConfig::from_toml_file`]).
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let config: LocksConfig =
            toml::from_str(text).map_err(|e| LockError::Config(format!("malformed TOML: {e}")))?;
        Ok(config)
    }

    /// Applies `DB_LOCKS_TENANT`, `DATABASE_URL`, `REDIS_URL` and `AWS_ENDPOINT_URL_DYNAMODB`
    /// when they are set.
    pub fn with_env_overrides(mut self) -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if let Some(v) = var("DB_LOCKS_TENANT") {
            self.tenant_id = v;
        }
        if let Some(v) = var("DATABASE_URL") {
            self.database_url = Some(v);
        }
        if let Some(v) = var("REDIS_URL") {
            self.redis_url = v;
        }
        if let Some(v) = var("AWS_ENDPOINT_URL_DYNAMODB") {
            self.dynamodb_endpoint = Some(v);
        }
        self
    }

    /// Sets the provider.
    pub fn with_provider(mut self, provider: Provider) -> Self {
        self.provider = provider;
        self
    }

    /// Sets the database URL (or SQLite path).
    pub fn with_database_url(mut self, url: impl Into<String>) -> Self {
        self.database_url = Some(url.into());
        self
    }

    /// Sets the Redis URL.
    pub fn with_redis_url(mut self, url: impl Into<String>) -> Self {
        self.redis_url = url.into();
        self
    }

    /// Sets the DynamoDB endpoint.
    pub fn with_dynamodb_endpoint(mut self, url: impl Into<String>) -> Self {
        self.dynamodb_endpoint = Some(url.into());
        self
    }

    /// Sets the default lease.
    pub fn with_default_lease(mut self, lease: Duration) -> Self {
        self.default_lease = lease;
        self
    }

    /// Where `rdb` keeps its SQLite file when no URL is given:
    /// `$XDG_DATA_HOME/db-locks/locks.sqlite` (usually `~/.local/share/db-locks/locks.sqlite`).
    pub fn default_sqlite_path() -> PathBuf {
        dirs::data_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join("db-locks")
            .join("locks.sqlite")
    }

    /// Where the store is, for messages: its URL (or SQLite path, or DynamoDB endpoint and
    /// tables) with any password hidden.
    pub fn store_location(&self) -> String {
        match self.provider {
            Provider::Rdb => match &self.database_url {
                Some(url) => redact_url(url),
                None => Self::default_sqlite_path().display().to_string(),
            },
            Provider::Redis => redact_url(&self.redis_url),
            Provider::Ddb => format!(
                "{} (tables {} and {})",
                self.dynamodb_endpoint
                    .as_deref()
                    .map_or_else(|| "DynamoDB".to_owned(), redact_url),
                self.dynamodb_mutex_table,
                self.dynamodb_semaphore_table
            ),
        }
    }

    /// Checks the settings that do not need I/O.
    pub fn validate(&self) -> Result<()> {
        crate::validate::validate_tenant(&self.tenant_id)?;
        let positive = |name: &str, zero: bool| {
            if zero {
                Err(LockError::Config(format!(
                    "{name} must be greater than zero"
                )))
            } else {
                Ok(())
            }
        };
        positive("pool_size", self.pool_size == 0)?;
        positive("connect_timeout_ms", self.connect_timeout.is_zero())?;
        positive("io_timeout_ms", self.io_timeout.is_zero())?;
        positive("default_lease_ms", self.default_lease.is_zero())?;
        positive("retry_base_ms", self.retry_base.is_zero())?;
        if self.retry_max < self.retry_base {
            return Err(LockError::Config(
                "retry_max_ms must be at least retry_base_ms".into(),
            ));
        }
        if let Some(p) = self.heartbeat_period {
            positive("heartbeat_period_ms", p.is_zero())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_keeps_defaults_and_rejects_garbage() {
        let c = LocksConfig::from_toml_str("tenant_id = \"t1\"\nprovider = \"redis\"\n").unwrap();
        assert_eq!(c.tenant_id, "t1");
        assert_eq!(c.provider, Provider::Redis);
        assert_eq!(c.default_lease, Duration::from_secs(15));
        let err = LocksConfig::from_toml_str("tenant_id = [").unwrap_err();
        assert!(matches!(err, LockError::Config(_)), "{err}");
        let err = LocksConfig::from_toml_str("no_such_setting = 1").unwrap_err();
        assert!(err.to_string().contains("no_such_setting"), "{err}");
    }

    #[test]
    fn clock_skew_bound_can_be_turned_off() {
        let c = LocksConfig::from_toml_str("").unwrap();
        assert_eq!(
            c.dynamodb_trust_expiry_with_skew,
            Some(Duration::from_secs(60))
        );
        let c = LocksConfig::from_toml_str("dynamodb_trust_expiry_with_skew_ms = 500").unwrap();
        assert_eq!(
            c.dynamodb_trust_expiry_with_skew,
            Some(Duration::from_millis(500))
        );
        let c = LocksConfig::from_toml_str("dynamodb_trust_expiry_with_skew_ms = \"off\"").unwrap();
        assert_eq!(c.dynamodb_trust_expiry_with_skew, None);
        let c = LocksConfig::from_toml_str("heartbeat_period_ms = 700").unwrap();
        assert_eq!(c.heartbeat_period, Some(Duration::from_millis(700)));
        assert!(LocksConfig::from_toml_str("dynamodb_trust_expiry_with_skew_ms = \"x\"").is_err());
    }

    #[test]
    fn providers_parse() {
        assert_eq!("RDB".parse::<Provider>().unwrap(), Provider::Rdb);
        assert!("mongo".parse::<Provider>().is_err());
    }

    #[test]
    fn validate_rejects_zeroes() {
        let mut c = LocksConfig::new("t");
        c.default_lease = Duration::ZERO;
        assert!(c.validate().is_err());
        assert!(LocksConfig::new("").validate().is_err());
    }
}
