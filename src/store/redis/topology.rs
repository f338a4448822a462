//! How the Redis store reaches its data: one server, the primary that Sentinel names, or a
//! Redis Cluster; each over plain TCP or TLS, with or without an ACL user. The URL says which:
//!
//! | `redis_url` | deployment |
//! |---|---|
//! | `redis://[user:password@]host:port[/db]` | one server |
//! | `rediss://…` | one server over TLS |
//! | `redis+sentinel://[user:password@]s1:26379,s2:26379,…/service[/db]` | the primary of `service`, asked of the sentinels at every new connection |
//! | `redis+cluster://[user:password@]n1:7000,n2:7000,…` | a Redis Cluster, found from any of the seed nodes |
//!
//! `rediss+sentinel://` and `rediss+cluster://` use TLS for every node (and every
//! sentinel). The user and password are those of the data nodes; sentinels are asked
//! without them. TLS verifies the server against the system's roots, or against
//! `redis_tls_ca_file`; `redis_tls_client_cert_file` and `redis_tls_client_key_file` give
//! a client certificate.
//!
//! Every connection the pool opens comes from [`Topology::connect`]: with Sentinel, a
//! failover is followed at the next connection, and a connection that answers `READONLY`
//! (its server was demoted) is dropped like a broken one (see `RedisStore::run`).

use std::time::Duration;

use parking_lot::Mutex;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    ClientTlsConfig, ConnectionAddr, ConnectionLike, IntoConnectionInfo, RedisResult,
    TlsCertificates, TlsMode,
};

use crate::config::LocksConfig;

/// A pooled connection of any deployment.
pub(crate) type AnyConnection = Box<dyn ConnectionLike + Send>;

/// Redirections (`MOVED`, `ASK`) and cluster-down answers a cluster request follows before
/// it fails; the waits between them stay well inside one I/O timeout.
const CLUSTER_RETRIES: u32 = 3;
const CLUSTER_RETRY_WAIT_MS: (u64, u64) = (10, 200);

enum Deployment {
    Single(redis::Client),
    /// The sentinel client asks the sentinels, one at a time, and so needs `&mut`.
    Sentinel(Mutex<SentinelClient>),
    /// `nodes`: one client per seed node, for the subscriber.
    Cluster {
        client: ClusterClient,
        nodes: Vec<redis::Client>,
    },
}

/// Where the store's Redis is (see the module docs).
pub(crate) struct Topology {
    deployment: Deployment,
    connect_timeout: Duration,
    io_timeout: Duration,
}

/// `redis_url`, taken apart by the generic URL syntax (it may list several hosts).
#[derive(Debug, PartialEq)]
struct Parts<'a> {
    tls: bool,
    kind: Kind,
    /// `user:password`, as written.
    userinfo: Option<&'a str>,
    hosts: Vec<&'a str>,
    /// The path without its leading `/`.
    path: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Single,
    Sentinel,
    Cluster,
}

fn parts(url: &str) -> Option<Parts<'_>> {
    let (scheme, rest) = url.split_once("://")?;
    let (tls, kind) = match scheme {
        "redis+sentinel" => (false, Kind::Sentinel),
        "rediss+sentinel" => (true, Kind::Sentinel),
        "redis+cluster" => (false, Kind::Cluster),
        "rediss+cluster" => (true, Kind::Cluster),
        "rediss" => (true, Kind::Single),
        _ => (false, Kind::Single),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = (&rest[..end], &rest[end..]);
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    Some(Parts {
        tls,
        kind,
        userinfo,
        hosts: hosts.split(',').filter(|h| !h.is_empty()).collect(),
        path: path.strip_prefix('/').unwrap_or(path),
    })
}

/// The URL of one node: `redis[s]://[userinfo@]host[/db]`.
fn node_url(tls: bool, userinfo: Option<&str>, host: &str, db: Option<&str>) -> String {
    let scheme = if tls { "rediss" } else { "redis" };
    let user = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
    let db = db.map(|d| format!("/{d}")).unwrap_or_default();
    format!("{scheme}://{user}{host}{db}")
}

/// The TLS material the config names, read from its files (`None`: none named).
fn certificates(config: &LocksConfig) -> Result<Option<TlsCertificates>, String> {
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
    };
    let root_cert = match &config.redis_tls_ca_file {
        Some(path) => Some(read(path, "CA file (redis_tls_ca_file)")?),
        None => None,
    };
    let client_tls = match (
        &config.redis_tls_client_cert_file,
        &config.redis_tls_client_key_file,
    ) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read(cert, "client certificate (redis_tls_client_cert_file)")?,
            client_key: read(key, "client key (redis_tls_client_key_file)")?,
        }),
        (None, None) => None,
        _ => {
            return Err(
                "redis_tls_client_cert_file and redis_tls_client_key_file go together".into(),
            )
        }
    };
    Ok(
        (root_cert.is_some() || client_tls.is_some()).then_some(TlsCertificates {
            client_tls,
            root_cert,
        }),
    )
}

/// rustls needs one process-wide crypto provider; install aws-lc-rs (which the AWS SDK
/// uses too) unless the application installed one.
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Fails only if another thread installed one meanwhile: that one is used.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}

impl Topology {
    /// The deployment `config.redis_url` names. `Err`: a message saying what is wrong with
    /// the settings (the URL is not in it: the caller adds it, redacted).
    pub(crate) fn from_config(config: &LocksConfig) -> Result<Topology, String> {
        let url = config.redis_url.as_str();
        let parts = parts(url).ok_or("not a URL (scheme://host:port)")?;
        let certs = certificates(config)?;
        let insecure = config.redis_tls_danger_accept_invalid_certs;
        if (certs.is_some() || insecure) && !parts.tls {
            return Err("TLS settings are given, but the URL's scheme is not rediss".into());
        }
        if parts.tls {
            ensure_crypto_provider();
        }
        let tls_mode = if insecure {
            TlsMode::Insecure
        } else {
            TlsMode::Secure
        };
        let text = |e: redis::RedisError| e.to_string();
        let deployment = match parts.kind {
            Kind::Single => {
                let url = if insecure && !url.contains('#') {
                    format!("{url}#insecure")
                } else {
                    url.to_owned()
                };
                Deployment::Single(
                    match certs {
                        Some(certs) => redis::Client::build_with_tls(url, certs),
                        None => redis::Client::open(url),
                    }
                    .map_err(text)?,
                )
            }
            Kind::Sentinel => {
                let mut path = parts.path.splitn(2, '/');
                let service = path.next().filter(|s| !s.is_empty()).ok_or(
                    "a Sentinel URL names its service: redis+sentinel://host:port,…/service[/db]",
                )?;
                let db: Option<i64> = match path.next().filter(|d| !d.is_empty()) {
                    Some(d) => Some(d.parse().map_err(|_| format!("bad database `{d}`"))?),
                    None => None,
                };
                let sentinels = parts
                    .hosts
                    .iter()
                    .map(|host| {
                        let info = node_url(false, None, host, None)
                            .into_connection_info()
                            .map_err(text)?;
                        Ok(match info.addr() {
                            ConnectionAddr::Tcp(h, p) if parts.tls => ConnectionAddr::TcpTls {
                                host: h.clone(),
                                port: *p,
                                insecure,
                                tls_params: None,
                            },
                            addr => addr.clone(),
                        })
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                if sentinels.is_empty() {
                    return Err("a Sentinel URL lists at least one sentinel".into());
                }
                let mut builder =
                    SentinelClientBuilder::new(sentinels, service, SentinelServerType::Master)
                        .map_err(text)?;
                // The data nodes' credentials, as the URL gives them (percent-decoded).
                let creds = node_url(false, parts.userinfo, "localhost", None)
                    .into_connection_info()
                    .map_err(text)?;
                let creds = creds.redis_settings();
                if let Some(user) = creds.username() {
                    builder = builder.set_client_to_redis_username(user);
                }
                if let Some(password) = creds.password() {
                    builder = builder.set_client_to_redis_password(password);
                }
                if let Some(db) = db {
                    builder = builder.set_client_to_redis_db(db);
                }
                if parts.tls {
                    builder = builder
                        .set_client_to_redis_tls_mode(tls_mode)
                        .set_client_to_sentinel_tls_mode(tls_mode);
                    if let Some(certs) = certs {
                        builder = builder
                            .set_client_to_redis_certificates(certs.clone())
                            .set_client_to_sentinel_certificates(certs);
                    }
                }
                Deployment::Sentinel(Mutex::new(builder.build().map_err(text)?))
            }
            Kind::Cluster => {
                if !parts.path.is_empty() {
                    return Err(
                        "a Redis Cluster has only database 0: no path after the hosts".into(),
                    );
                }
                let urls: Vec<String> = parts
                    .hosts
                    .iter()
                    .map(|host| node_url(parts.tls, parts.userinfo, host, None))
                    .collect();
                if urls.is_empty() {
                    return Err("a cluster URL lists at least one node".into());
                }
                let mut builder = ClusterClientBuilder::new(urls.clone())
                    .connection_timeout(config.connect_timeout)
                    .response_timeout(config.io_timeout)
                    .retries(CLUSTER_RETRIES)
                    .min_retry_wait(CLUSTER_RETRY_WAIT_MS.0)
                    .max_retry_wait(CLUSTER_RETRY_WAIT_MS.1);
                if parts.tls {
                    builder = builder.tls(tls_mode);
                    if let Some(certs) = certs.clone() {
                        builder = builder.certs(certs);
                    }
                }
                let nodes = urls
                    .iter()
                    .map(|u| {
                        let u = if insecure {
                            format!("{u}#insecure")
                        } else {
                            u.clone()
                        };
                        match &certs {
                            Some(certs) => redis::Client::build_with_tls(u, certs.clone()),
                            None => redis::Client::open(u),
                        }
                    })
                    .collect::<RedisResult<Vec<_>>>()
                    .map_err(text)?;
                Deployment::Cluster {
                    client: builder.build().map_err(text)?,
                    nodes,
                }
            }
        };
        Ok(Topology {
            deployment,
            connect_timeout: config.connect_timeout,
            io_timeout: config.io_timeout,
        })
    }

    /// Whether this is a Redis Cluster (commands without keys go to one node of many).
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.deployment, Deployment::Cluster { .. })
    }

    /// A new connection, with the I/O timeout on its reads and writes: to the one server, to
    /// the primary the sentinels name now, or to the cluster.
    pub(crate) fn connect(&self) -> RedisResult<AnyConnection> {
        match &self.deployment {
            Deployment::Single(client) => Ok(Box::new(self.timed(client)?)),
            Deployment::Sentinel(sentinel) => {
                let client = sentinel.lock().get_client()?;
                Ok(Box::new(self.timed(&client)?))
            }
            Deployment::Cluster { client, .. } => {
                let conn = client.get_connection()?;
                conn.set_read_timeout(Some(self.io_timeout))?;
                conn.set_write_timeout(Some(self.io_timeout))?;
                Ok(Box::new(conn))
            }
        }
    }

    fn timed(&self, client: &redis::Client) -> RedisResult<redis::Connection> {
        let conn = client.get_connection_with_timeout(self.connect_timeout)?;
        conn.set_read_timeout(Some(self.io_timeout))?;
        conn.set_write_timeout(Some(self.io_timeout))?;
        Ok(conn)
    }

    /// A plain connection to subscribe on: the server, the current primary, or the first
    /// seed node of a cluster that answers (a cluster forwards every `PUBLISH` to every node).
    pub(crate) fn subscriber(&self) -> RedisResult<redis::Connection> {
        match &self.deployment {
            Deployment::Single(client) => self.timed(client),
            Deployment::Sentinel(sentinel) => {
                let client = sentinel.lock().get_client()?;
                self.timed(&client)
            }
            Deployment::Cluster { nodes, .. } => {
                let mut last = None;
                for node in nodes {
                    match self.timed(node) {
                        Ok(conn) => return Ok(conn),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.expect("a cluster URL lists at least one node"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_deployment() {
        let p = parts("redis+sentinel://u:p%40ss@h1:26379,h2:26380/primary/2").unwrap();
        assert_eq!(
            p,
            Parts {
                tls: false,
                kind: Kind::Sentinel,
                userinfo: Some("u:p%40ss"),
                hosts: vec!["h1:26379", "h2:26380"],
                path: "primary/2",
            }
        );
        let p = parts("rediss+cluster://n1:7000,n2:7001").unwrap();
        assert_eq!(
            (p.tls, p.kind, p.hosts.len(), p.path),
            (true, Kind::Cluster, 2, "")
        );
        let p = parts("rediss://:pw@host:6380/0").unwrap();
        assert_eq!(
            (p.tls, p.kind, p.userinfo),
            (true, Kind::Single, Some(":pw"))
        );
        assert!(parts("host:6379").is_none());
        assert_eq!(
            node_url(true, Some("u:p"), "h:1", Some("3")),
            "rediss://u:p@h:1/3"
        );
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        let mut c = LocksConfig::new("t").with_redis_url("redis://127.0.0.1:6379");
        c.redis_tls_danger_accept_invalid_certs = true;
        let e = Topology::from_config(&c).err().unwrap();
        assert!(e.contains("rediss"), "{e}");
        let c = LocksConfig::new("t").with_redis_url("redis+sentinel://127.0.0.1:26379");
        let e = Topology::from_config(&c).err().unwrap();
        assert!(e.contains("service"), "{e}");
        let c = LocksConfig::new("t").with_redis_url("redis+cluster://127.0.0.1:7001/1");
        assert!(Topology::from_config(&c).is_err());
        let mut c = LocksConfig::new("t").with_redis_url("rediss://127.0.0.1:6380");
        c.redis_tls_ca_file = Some("/nonexistent/ca.crt".into());
        let e = Topology::from_config(&c).err().unwrap();
        assert!(e.contains("/nonexistent/ca.crt"), "{e}");
    }
}
