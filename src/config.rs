//! Backend configuration: a URL or a serde struct with the same fields.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which backend a [`Config`] selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum BackendKind {
    /// etcd v3 (`etcd://`).
    Etcd,
    /// Apache ZooKeeper (`zk://`).
    #[serde(alias = "zk")]
    Zookeeper,
    /// In-process, for tests (`memory://`).
    Memory,
}

impl BackendKind {
    /// The URL scheme of this backend.
    pub fn scheme(self) -> &'static str {
        match self {
            BackendKind::Etcd => "etcd",
            BackendKind::Zookeeper => "zk",
            BackendKind::Memory => "memory",
        }
    }

    /// The backend's name in errors, traces and sequencers: `etcd`, `zookeeper`, `memory`.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            BackendKind::Etcd => "etcd",
            BackendKind::Zookeeper => "zookeeper",
            BackendKind::Memory => "memory",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// TLS settings: present (`Some`, even all `None`) means the connection uses TLS. A backend
/// that cannot speak TLS refuses the config with [`Error::InvalidConfig`] rather than
/// silently connecting in plain text.
///
/// In a URL: `tls=true`, or any of `ca_file=`, `cert_file=`, `key_file=`, `server_name=`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TlsConfig {
    /// PEM file of the CA that signed the servers' certificates. `None`: the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// PEM file of the client certificate (mutual TLS; with `key_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    /// PEM file of the client's private key (mutual TLS; with `cert_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// The name the servers' certificates must carry, when it is not the endpoint's host
    /// (e.g. endpoints given as IP addresses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

impl TlsConfig {
    /// TLS with the system's trust roots and no client certificate.
    pub fn new() -> Self {
        TlsConfig::default()
    }

    /// Trusts the CA in this PEM file.
    pub fn with_ca_file(mut self, path: impl Into<String>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Presents this client certificate and key (PEM files): mutual TLS.
    pub fn with_client_cert(mut self, cert: impl Into<String>, key: impl Into<String>) -> Self {
        self.cert_file = Some(cert.into());
        self.key_file = Some(key.into());
        self
    }

    /// Expects the servers' certificates to carry `name`.
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }
}

/// Which ACL fairlock puts on each ZooKeeper node it creates (lock and election nodes and
/// their parents). Ignored by other backends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum AclPolicy {
    /// `creator-all` when the client authenticates, `open` otherwise.
    #[default]
    Default,
    /// Only the creating identity may do anything (ZooKeeper's `CREATOR_ALL_ACL`).
    CreatorAll,
    /// The creating identity may do anything; everyone may read (status, observers).
    CreatorAllWorldRead,
    /// Anyone may do anything (`world:anyone:cdrwa`, ZooKeeper's `OPEN_ACL_UNSAFE`).
    Open,
}

impl AclPolicy {
    /// The name used in URLs and config files.
    pub fn as_str(self) -> &'static str {
        match self {
            AclPolicy::Default => "default",
            AclPolicy::CreatorAll => "creator-all",
            AclPolicy::CreatorAllWorldRead => "creator-all-world-read",
            AclPolicy::Open => "open",
        }
    }
}

impl FromStr for AclPolicy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        [
            AclPolicy::Default,
            AclPolicy::CreatorAll,
            AclPolicy::CreatorAllWorldRead,
            AclPolicy::Open,
        ]
        .into_iter()
        .find(|acl| acl.as_str() == s)
        .ok_or_else(|| {
            Error::config(format!(
                "unknown acl {s:?} (expected default, creator-all, creator-all-world-read or open)"
            ))
        })
    }
}

/// `url` with the password in its user info replaced by `***`, for messages and logs.
///
/// ```
/// assert_eq!(
///     fairlock::redact_url("etcd://alice:s3cret@h:2379/p"),
///     "etcd://alice:***@h:2379/p"
/// );
/// ```
pub fn redact_url(url: &str) -> String {
    // The user info: between `://` (or, in text that is not quite a URL, the last `/`
    // before it) and the `@` that ends it.
    let (start, rest) = match url.find("://") {
        Some(i) => (i + 3, &url[i + 3..]),
        None => {
            let Some(at) = url.rfind('@') else {
                return url.to_owned();
            };
            let start = url[..at].rfind('/').map_or(0, |i| i + 1);
            (start, &url[start..])
        }
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{}{user}:***{}", &url[..start], &rest[at..]),
        None => url.to_owned(),
    }
}

/// Where and how to connect: the same fields as a backend URL.
///
/// From a URL:
/// ```
/// use std::time::Duration;
/// use fairlock::{BackendKind, Config};
///
/// let config: Config = "etcd://10.0.0.1:2379,10.0.0.2:2379/shop?ttl=15s".parse()?;
/// assert_eq!(config.backend, BackendKind::Etcd);
/// assert_eq!(config.endpoints, ["10.0.0.1:2379", "10.0.0.2:2379"]);
/// assert_eq!(config.prefix, "shop");
/// assert_eq!(config.ttl, Duration::from_secs(15));
/// # Ok::<(), fairlock::Error>(())
/// ```
///
/// From a service's config file (any serde format; durations as `"10s"`, `"500ms"`):
/// ```
/// let config: fairlock::Config = serde_json::from_str(r#"{
///     "backend": "zookeeper",
///     "endpoints": ["127.0.0.1:2181"],
///     "prefix": "/locks",
///     "ttl": "6s"
/// }"#)?;
/// assert_eq!(config.to_url(), "zk://127.0.0.1:2181/locks?ttl=6s&connect_timeout=5s&request_timeout=5s");
/// # Ok::<(), serde_json::Error>(())
/// ```
///
/// In code, from the builder methods (the struct is `#[non_exhaustive]`: fields may be
/// added, so build it with [`Config::new`] and the `with_` methods, or parse it):
/// ```
/// use std::time::Duration;
/// use fairlock::{BackendKind, Config};
///
/// let config = Config::new(BackendKind::Etcd)
///     .with_endpoints(["10.0.0.1:2379", "10.0.0.2:2379"])
///     .with_prefix("shop")
///     .with_ttl(Duration::from_secs(15));
/// assert_eq!(config, "etcd://10.0.0.1:2379,10.0.0.2:2379/shop?ttl=15s".parse()?);
/// # Ok::<(), fairlock::Error>(())
/// ```
///
/// URL forms:
/// - `etcd://HOST:PORT[,HOST:PORT…][/PREFIX]` — lock NAME uses keys under `PREFIX/NAME/`
///   (default PREFIX `fairlock`), the layout of `etcdctl lock PREFIX/NAME`. The prefix is
///   the URL's path without the `/` that ends the hosts: `etcd://h:2379/shop` is the
///   prefix `shop`, `etcd://h:2379//shop` the prefix `/shop` (Go programs often use
///   such keys).
/// - `zk://HOST:PORT[,HOST:PORT…][/PATH]` — lock NAME uses znodes under `/PATH/NAME`
///   (default PATH `/fairlock`).
/// - `memory://[STORE]` — an in-process store; clients with the same STORE name share it.
///
/// The `prefix` field holds the same thing in every form, normalised: no trailing `/`;
/// on ZooKeeper an absolute path (`"locks"` and `"/locks"` both become `"/locks"`). A
/// config read from a URL or a file, written back with [`to_url`](Config::to_url) or
/// serde, reads back equal (credentials aside: `to_url` leaves them out). Reading a file
/// checks every setting but the endpoints, which may be left out for a client handed in
/// ([`Client::from_etcd_client`](crate::Client::from_etcd_client)); connecting by the
/// config checks them too.
///
/// Query options: `ttl` (session TTL; `session_timeout` is an alias for ZooKeeper users),
/// `connect_timeout`, `request_timeout`, `safety_margin`, `lock_delay` (see the fields). Values are
/// seconds (`10`) or durations (`10s`, `1500ms`). `user:password@` before the hosts sets credentials
/// (etcd user, ZooKeeper digest identity); security options: see [`TlsConfig`], [`AclPolicy`]
/// and the `password_file` field.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ConfigFields")]
#[non_exhaustive]
pub struct Config {
    /// The backend.
    pub backend: BackendKind,
    /// `host:port` of each server (empty for `memory`).
    pub endpoints: Vec<String>,
    /// etcd key prefix, ZooKeeper base path, or the memory store's name. Empty means the
    /// backend's default. Normalised as the type's documentation says.
    pub prefix: String,
    /// Session time-to-live: how long after a crash (or partition) the backend frees the
    /// session's locks. etcd rounds it up to whole seconds.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// How long to wait for the first server answer before [`Error::Unreachable`].
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Upper bound on each request to the backend, cleanup included.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long before the earliest moment the server can free a lock (the session's
    /// expiry, counted from the last confirmation) a holder cut off from the server is told
    /// it lost it. Covers clock drift and scheduling delays between the holder's deadline
    /// and the server's. `None`: a tenth of the TTL.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub safety_margin: Option<Duration>,
    /// Lock-delay (opt-in; Chubby's idea): when a lock or leadership passes on because its
    /// holder ended *uncleanly* (its session expired, or its entry was deleted from
    /// outside), the next holder waits this long before it is told it holds, so that writes
    /// the old holder still had in flight drain first. Never after a clean release (unlike
    /// consul's lock-delay). Counted from the moment the unclean end is first noticed, on
    /// the server's clock where the backend has one (etcd: a lease); a [`try_lock`] during
    /// the delay is refused. Peers (etcdctl, Go, Curator, kazoo) neither apply nor trigger
    /// it. At most [`Config::MAX_LOCK_DELAY`]; `None` (the default): no delay. See
    /// docs/DESIGN.md, "Lock-delay".
    ///
    /// [`try_lock`]: crate::DistributedMutex::try_lock
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub lock_delay: Option<Duration>,
    /// User name for authentication (etcd user; ZooKeeper digest identity).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password for authentication (etcd; ZooKeeper digest). Prefer `password_file` or the environment
    /// (the CLI reads `FAIRLOCK_PASSWORD`) over a password in a URL, which other users of
    /// the machine may see in process listings. Never shown by `Debug` or
    /// [`to_url`](Config::to_url).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A file holding the password (its first line), read when connecting; for secrets
    /// mounted as files. Ignored when `password` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// TLS; see [`TlsConfig`]. `None`: plain TCP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// ZooKeeper: the ACL of the nodes fairlock creates; see [`AclPolicy`].
    #[serde(skip_serializing_if = "is_default_acl")]
    pub acl: AclPolicy,
}

fn is_default_acl(acl: &AclPolicy) -> bool {
    *acl == AclPolicy::Default
}

impl Config {
    /// Default session TTL: 10 s, as `etcdctl lock`.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
    /// Default connect and request timeout: 5 s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
    /// The longest lock-delay: one minute, Chubby's and consul's bound. Writes still in
    /// flight after that are better refused by fencing than waited for.
    pub const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);

    fn default_ttl() -> Duration {
        Self::DEFAULT_TTL
    }

    fn default_timeout() -> Duration {
        Self::DEFAULT_TIMEOUT
    }

    /// A config for `backend` with default settings and no endpoints.
    pub fn new(backend: BackendKind) -> Self {
        Config {
            backend,
            endpoints: Vec::new(),
            prefix: String::new(),
            ttl: Self::DEFAULT_TTL,
            connect_timeout: Self::DEFAULT_TIMEOUT,
            request_timeout: Self::DEFAULT_TIMEOUT,
            safety_margin: None,
            lock_delay: None,
            username: None,
            password: None,
            password_file: None,
            tls: None,
            acl: AclPolicy::Default,
        }
    }

    /// Sets the servers, each `host:port`.
    pub fn with_endpoints<I, S>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.endpoints = endpoints.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the prefix (etcd key prefix, ZooKeeper base path, memory store name),
    /// normalised as the type's documentation says.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = normalize_prefix(self.backend, &prefix.into());
        self
    }

    /// Sets the session TTL.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the request timeout.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the safety margin; see the field.
    pub fn with_safety_margin(mut self, margin: Duration) -> Self {
        self.safety_margin = Some(margin);
        self
    }

    /// Sets the lock-delay; see the field.
    pub fn with_lock_delay(mut self, delay: Duration) -> Self {
        self.lock_delay = Some(delay);
        self
    }

    /// Sets the user name and password (etcd authentication, ZooKeeper digest).
    pub fn with_credentials(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.username = Some(user.into());
        self.password = Some(password.into());
        self
    }

    /// Reads the password from this file when connecting (its first line).
    pub fn with_password_file(mut self, path: impl Into<String>) -> Self {
        self.password_file = Some(path.into());
        self
    }

    /// Connects with TLS as `tls` says.
    pub fn with_tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the ACL policy of ZooKeeper nodes.
    pub fn with_acl(mut self, acl: AclPolicy) -> Self {
        self.acl = acl;
        self
    }

    /// The password: the configured one, else the first line of `password_file`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if the file cannot be read (its path is named, its
    /// contents never).
    pub fn resolved_password(&self) -> Result<Option<String>> {
        match (&self.password, &self.password_file) {
            (Some(password), _) => Ok(Some(password.clone())),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Error::config(format!("cannot read the password file {path:?}: {e}"))
                })?;
                Ok(Some(text.lines().next().unwrap_or("").to_owned()))
            }
            (None, None) => Ok(None),
        }
    }

    /// Parses a backend URL (see the type's documentation).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming what is wrong with the URL.
    pub fn from_url(url: &str) -> Result<Self> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            let url = redact_url(url);
            Error::config(format!("{url:?} is not a URL (expected SCHEME://…)"))
        })?;
        let backend = match scheme.to_ascii_lowercase().as_str() {
            "etcd" => BackendKind::Etcd,
            "zk" | "zookeeper" => BackendKind::Zookeeper,
            "memory" => BackendKind::Memory,
            other => {
                return Err(Error::config(format!(
                    "unknown backend {other:?} (expected etcd, zk or memory)"
                )))
            }
        };
        let mut config = Config::new(backend);
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let hosts = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => {
                let (user, password) = match userinfo.split_once(':') {
                    Some((user, password)) => (user, Some(password)),
                    None => (userinfo, None),
                };
                config.username = Some(percent_decode(user)?);
                config.password = password.map(percent_decode).transpose()?;
                hosts
            }
            None => authority,
        };
        if backend == BackendKind::Memory {
            // memory://NAME or memory:///NAME: either spelling names the store.
            let name = percent_decode(&format!("{hosts}{path}"))?;
            config.prefix = normalize_prefix(backend, &name);
        } else {
            config.endpoints = hosts
                .split(',')
                .map(str::to_owned)
                .filter(|h| !h.is_empty())
                .collect();
            // The path without the `/` that ends the hosts.
            let path = path.strip_prefix('/').unwrap_or(path);
            config.prefix = normalize_prefix(backend, &percent_decode(path)?);
        }
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let duration = || parse_duration(&key, &value);
            match (&*key, backend) {
                ("ttl", _) | ("session_timeout", BackendKind::Zookeeper) => {
                    config.ttl = duration()?
                }
                ("connect_timeout", _) => config.connect_timeout = duration()?,
                ("request_timeout", _) => config.request_timeout = duration()?,
                ("safety_margin", _) => config.safety_margin = Some(duration()?),
                ("lock_delay", _) => config.lock_delay = Some(duration()?),
                ("password_file", _) => config.password_file = Some(value.into_owned()),
                ("acl", _) => config.acl = value.parse()?,
                ("tls", _) => match &*value {
                    "true" => {
                        config.tls.get_or_insert_with(TlsConfig::default);
                    }
                    "false" => config.tls = None,
                    _ => return Err(Error::config(format!("bad tls {value:?}: true or false"))),
                },
                ("ca_file", _) => tls(&mut config).ca_file = Some(value.into_owned()),
                ("cert_file", _) => tls(&mut config).cert_file = Some(value.into_owned()),
                ("key_file", _) => tls(&mut config).key_file = Some(value.into_owned()),
                ("server_name", _) => tls(&mut config).server_name = Some(value.into_owned()),
                _ => {
                    let url = redact_url(url);
                    return Err(Error::config(format!("unknown option {key:?} in {url:?}")));
                }
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// The URL form of this config: everything but the password (`password_file`, a path,
    /// is kept); [`from_url`](Self::from_url) reads it back equal.
    pub fn to_url(&self) -> String {
        let mut url = format!("{}://", self.backend.scheme());
        if let Some(user) = &self.username {
            url.push_str(&percent_encode_userinfo(user));
            url.push('@');
        }
        url.push_str(&self.endpoints.join(","));
        let prefix = normalize_prefix(self.backend, &self.prefix);
        if self.backend == BackendKind::Memory {
            url.push_str(&percent_encode(&prefix));
        } else if !prefix.is_empty() {
            // etcd: `/` ends the hosts, then the prefix (which may start with `/` itself);
            // ZooKeeper: the prefix is the absolute path.
            if self.backend != BackendKind::Zookeeper {
                url.push('/');
            }
            url.push_str(&percent_encode(&prefix));
        }
        let duration = |d: Duration| humantime::format_duration(d).to_string();
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query.append_pair("ttl", &duration(self.ttl));
        query.append_pair("connect_timeout", &duration(self.connect_timeout));
        query.append_pair("request_timeout", &duration(self.request_timeout));
        if let Some(margin) = self.safety_margin {
            query.append_pair("safety_margin", &duration(margin));
        }
        if let Some(delay) = self.lock_delay {
            query.append_pair("lock_delay", &duration(delay));
        }
        if let Some(path) = &self.password_file {
            query.append_pair("password_file", path);
        }
        if let Some(tls) = &self.tls {
            query.append_pair("tls", "true");
            for (key, value) in [
                ("ca_file", &tls.ca_file),
                ("cert_file", &tls.cert_file),
                ("key_file", &tls.key_file),
                ("server_name", &tls.server_name),
            ] {
                if let Some(value) = value {
                    query.append_pair(key, value);
                }
            }
        }
        if self.acl != AclPolicy::Default {
            query.append_pair("acl", self.acl.as_str());
        }
        url.push('?');
        url.push_str(&query.finish());
        url
    }

    /// Checks the fields: endpoints present and well-formed, durations positive, no TLS.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the bad field.
    pub fn validate(&self) -> Result<()> {
        self.validate_settings()?;
        match self.backend {
            BackendKind::Memory => Ok(()),
            BackendKind::Etcd | BackendKind::Zookeeper => {
                if self.endpoints.is_empty() {
                    return Err(Error::config(
                        "no endpoints (expected HOST:PORT[,HOST:PORT…])",
                    ));
                }
                self.endpoints.iter().try_for_each(|e| check_endpoint(e))
            }
        }
    }

    /// Checks every field but the endpoints, for a client built on one the user connected.
    pub(crate) fn validate_settings(&self) -> Result<()> {
        if self.ttl.is_zero() {
            return Err(Error::config("ttl must be positive"));
        }
        if self.ttl > Duration::from_secs(24 * 3600) {
            return Err(Error::config("ttl must be at most one day"));
        }
        if self.connect_timeout.is_zero() || self.request_timeout.is_zero() {
            return Err(Error::config("timeouts must be positive"));
        }
        if self.safety_margin.is_some_and(|m| m >= self.ttl / 2) {
            return Err(Error::config(
                "safety_margin must be less than half the ttl",
            ));
        }
        if self
            .lock_delay
            .is_some_and(|d| d.is_zero() || d > Self::MAX_LOCK_DELAY)
        {
            return Err(Error::config(
                "lock_delay must be positive and at most 60s (leave it out for none)",
            ));
        }
        if self.prefix.contains('\0') || self.prefix.split('/').any(|s| s == "." || s == "..") {
            return Err(Error::config(format!("bad prefix {:?}", self.prefix)));
        }
        if self.backend == BackendKind::Zookeeper {
            let path = normalize_prefix(self.backend, &self.prefix);
            if path.len() > 1 && path[1..].split('/').any(|segment| segment.is_empty()) {
                return Err(Error::config(format!(
                    "bad prefix {:?}: a ZooKeeper path has no empty segments",
                    self.prefix
                )));
            }
        }
        Ok(())
    }

    /// The safety margin in force: the configured one, or a tenth of the TTL.
    pub fn effective_safety_margin(&self) -> Duration {
        self.safety_margin.unwrap_or(self.ttl / 10)
    }

    /// The prefix, or `default` when none was configured, normalised (fields set by hand
    /// are not).
    pub(crate) fn prefix_or(&self, default: &str) -> String {
        if self.prefix.is_empty() {
            default.to_owned()
        } else {
            normalize_prefix(self.backend, &self.prefix)
        }
    }
}

/// Shows every field but the password.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("backend", &self.backend)
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("safety_margin", &self.safety_margin)
            .field("lock_delay", &self.lock_delay)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_file", &self.password_file)
            .field("tls", &self.tls)
            .field("acl", &self.acl)
            .finish()
    }
}

impl FromStr for Config {
    type Err = Error;

    fn from_str(url: &str) -> Result<Self> {
        Config::from_url(url)
    }
}

fn check_endpoint(endpoint: &str) -> Result<()> {
    let bad = |why: &str| Error::config(format!("bad endpoint {endpoint:?}: {why}"));
    // `url` knows host syntax (names, IPv4, [IPv6]); reuse it through an http URL.
    let parsed = url::Url::parse(&format!("http://{endpoint}")).map_err(|e| bad(&e.to_string()))?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if parsed.port().is_none() && !endpoint.ends_with(":80") {
        return Err(bad("expected HOST:PORT"));
    }
    if parsed.path() != "/" || parsed.query().is_some() || !parsed.username().is_empty() {
        return Err(bad("expected HOST:PORT"));
    }
    Ok(())
}

fn parse_duration(key: &str, value: &str) -> Result<Duration> {
    let parsed = match value.parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(value).map_err(|e| e.to_string()),
    };
    parsed.map_err(|e| Error::config(format!("bad {key} {value:?}: {e}")))
}

fn percent_decode(s: &str) -> Result<String> {
    // `+` stays `+` in paths and user info (it is a space only in query strings).
    let hex = |b: u8| char::from(b).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).map_err(|_| Error::config(format!("{s:?} is not UTF-8 once decoded")))
}

/// Escapes what would end the user info of a URL, besides what [`percent_encode`] does.
fn percent_encode_userinfo(s: &str) -> String {
    let mut out = String::new();
    for c in percent_encode(s).chars() {
        match c {
            '@' | ':' | '/' | ',' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// The config's TLS settings, created (TLS on) if absent.
fn tls(config: &mut Config) -> &mut TlsConfig {
    config.tls.get_or_insert_with(TlsConfig::default)
}

/// `prefix` in its one form per backend: no trailing `/`; absolute on ZooKeeper; a memory
/// store's name without slashes around it.
fn normalize_prefix(backend: BackendKind, prefix: &str) -> String {
    match backend {
        BackendKind::Memory => prefix.trim_matches('/').to_owned(),
        BackendKind::Etcd => prefix.trim_end_matches('/').to_owned(),
        BackendKind::Zookeeper => {
            let path = prefix.trim_end_matches('/');
            if path.is_empty() || path.starts_with('/') {
                path.to_owned()
            } else {
                format!("/{path}")
            }
        }
    }
}

/// Escapes what would end or change a URL's path: `%`, `?`, `#`, spaces, controls.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '?' | '#' | '+' | ' ') || c.is_control() {
            let mut buf = [0; 4];
            for byte in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{byte:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// What a config file holds: [`Config`]'s fields, checked and normalised into one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFields {
    backend: BackendKind,
    #[serde(default)]
    endpoints: Vec<String>,
    #[serde(default)]
    prefix: String,
    #[serde(default = "Config::default_ttl", with = "humantime_serde")]
    ttl: Duration,
    #[serde(default = "Config::default_timeout", with = "humantime_serde")]
    connect_timeout: Duration,
    #[serde(default = "Config::default_timeout", with = "humantime_serde")]
    request_timeout: Duration,
    #[serde(default, with = "humantime_serde")]
    safety_margin: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    lock_delay: Option<Duration>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    password_file: Option<String>,
    #[serde(default)]
    tls: Option<TlsConfig>,
    #[serde(default)]
    acl: AclPolicy,
}

impl TryFrom<ConfigFields> for Config {
    type Error = Error;

    fn try_from(f: ConfigFields) -> Result<Self> {
        let config = Config {
            backend: f.backend,
            endpoints: f.endpoints,
            prefix: normalize_prefix(f.backend, &f.prefix),
            ttl: f.ttl,
            connect_timeout: f.connect_timeout,
            request_timeout: f.request_timeout,
            safety_margin: f.safety_margin,
            lock_delay: f.lock_delay,
            username: f.username,
            password: f.password,
            password_file: f.password_file,
            tls: f.tls,
            acl: f.acl,
        };
        // Endpoints may be left out for a client handed in (`Client::from_etcd_client`);
        // connecting by the config checks them.
        config.validate_settings()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_etcd_urls() {
        let c = Config::from_url("etcd://127.0.0.1:2379").unwrap();
        assert_eq!(c.endpoints, ["127.0.0.1:2379"]);
        assert_eq!(c.prefix_or("fairlock"), "fairlock");
        assert_eq!(c.ttl, Config::DEFAULT_TTL);

        let c = Config::from_url("etcd://u:p%40ss@h1:1,[::1]:2/a/b/?connect_timeout=1500ms&ttl=3")
            .unwrap();
        assert_eq!(c.endpoints, ["h1:1", "[::1]:2"]);
        assert_eq!(c.prefix, "a/b");
        assert_eq!(c.ttl, Duration::from_secs(3));
        assert_eq!(c.connect_timeout, Duration::from_millis(1500));
        assert_eq!(
            (c.username.as_deref(), c.password.as_deref()),
            (Some("u"), Some("p@ss"))
        );
    }

    #[test]
    fn parses_zk_and_memory_urls() {
        let c = Config::from_url("zk://h:2181/chroot/locks?session_timeout=6s").unwrap();
        assert_eq!(c.backend, BackendKind::Zookeeper);
        assert_eq!(c.prefix, "/chroot/locks");
        assert_eq!(c.ttl, Duration::from_secs(6));
        assert_eq!(Config::from_url("memory://").unwrap().prefix, "");
        assert_eq!(Config::from_url("memory://unit").unwrap().prefix, "unit");
    }

    #[test]
    fn parses_the_lock_delay() {
        assert_eq!(Config::from_url("etcd://h:1").unwrap().lock_delay, None);
        let c = Config::from_url("zk://h:1/p?lock_delay=1500ms").unwrap();
        assert_eq!(c.lock_delay, Some(Duration::from_millis(1500)));
        let c = Config::from_url("memory://x?lock_delay=60").unwrap();
        assert_eq!(c.lock_delay, Some(Config::MAX_LOCK_DELAY));
        let json = r#"{"backend": "memory", "lock_delay": "5s"}"#;
        let c: Config = serde_json::from_str(json).unwrap();
        assert_eq!(c.lock_delay, Some(Duration::from_secs(5)));
    }

    #[test]
    fn round_trips_through_url() {
        for url in [
            "etcd://h:1/p?ttl=10s&connect_timeout=5s&request_timeout=5s",
            "memory://x?ttl=10s&connect_timeout=5s&request_timeout=5s",
        ] {
            assert_eq!(Config::from_url(url).unwrap().to_url(), url);
        }
    }

    #[test]
    fn refuses_bad_urls() {
        for url in [
            "",
            "etcd",
            "redis://h:1",
            "etcd://",
            "etcd:///prefix",
            "etcd://host",
            "etcd://host:notaport",
            "etcd://host:99999",
            "etcd://h:1,,:2",
            "etcd://h:1/p?ttl=0",
            "etcd://h:1/p?ttl=abc",
            "etcd://h:1/p?bogus=1",
            "etcd://h:1/a/../b",
            "zk://h:1/p?connect_timeout=0",
            "zk://h:1/p?lock_delay=0",
            "etcd://h:1/p?lock_delay=61s",
        ] {
            assert!(
                matches!(Config::from_url(url), Err(Error::InvalidConfig(_))),
                "{url:?} was accepted"
            );
        }
    }

    #[test]
    fn parses_security_options() {
        let c = Config::from_url(
            "etcd://alice@h:1/p?ca_file=/etc/ca.pem&cert_file=c.pem&key_file=k.pem\
             &server_name=etcd.local&password_file=/run/secret&acl=creator-all",
        )
        .unwrap();
        let tls = c.tls.clone().unwrap();
        assert_eq!(tls.ca_file.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(
            (tls.cert_file.as_deref(), tls.key_file.as_deref()),
            (Some("c.pem"), Some("k.pem"))
        );
        assert_eq!(tls.server_name.as_deref(), Some("etcd.local"));
        assert_eq!(
            (c.username.as_deref(), c.password.as_deref()),
            (Some("alice"), None)
        );
        assert_eq!(c.password_file.as_deref(), Some("/run/secret"));
        assert_eq!(c.acl, AclPolicy::CreatorAll);
        assert_eq!(
            Config::from_url("zk://h:1?tls=true").unwrap().tls,
            Some(TlsConfig::new())
        );
        for bad in ["etcd://h:1?tls=yes", "zk://h:1?acl=everyone"] {
            assert!(Config::from_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn no_password_in_errors_or_urls() {
        let c = Config::from_url("etcd://alice:s3cret@h:1/p").unwrap();
        assert!(!c.to_url().contains("s3cret"), "{}", c.to_url());
        assert!(c.to_url().starts_with("etcd://alice@h:1/p?"));
        let e = Config::from_url("etcd://alice:s3cret@h:1/p?bogus=1").unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let e = Config::from_url("etcd//alice:s3cret@h:1").unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[test]
    fn password_from_a_file() {
        let path = std::env::temp_dir().join(format!("fairlock-pw-{}", std::process::id()));
        std::fs::write(&path, "from-file\nignored\n").unwrap();
        let c = Config::new(BackendKind::Etcd).with_password_file(path.to_str().unwrap());
        assert_eq!(c.resolved_password().unwrap().as_deref(), Some("from-file"));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            c.resolved_password(),
            Err(Error::InvalidConfig(_))
        ));
    }

    #[test]
    fn debug_hides_the_password() {
        let config = Config::from_url("etcd://alice:s3cret@h:1").unwrap();
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("alice"),
            "{shown}"
        );
    }

    #[test]
    fn url_and_serde_forms_agree_on_prefixes() {
        let json = |backend: &str, prefix: &str| -> Config {
            serde_json::from_str(&format!(
                r#"{{"backend":"{backend}","endpoints":["h:1"],"prefix":"{prefix}"}}"#
            ))
            .unwrap()
        };
        let url = |url: &str| Config::from_url(url).unwrap();
        assert_eq!(json("zookeeper", "locks"), url("zk://h:1/locks"));
        assert_eq!(json("zookeeper", "/locks/"), url("zk://h:1/locks"));
        assert_eq!(json("etcd", "shop/"), url("etcd://h:1/shop"));
        assert_eq!(json("etcd", "/shop"), url("etcd://h:1//shop"));
        assert_ne!(json("etcd", "/shop"), url("etcd://h:1/shop"));
        // Checked when read, not at the first lock.
        let bad = serde_json::from_str::<Config>(r#"{"backend":"etcd","ttl":"0s"}"#);
        assert!(bad
            .unwrap_err()
            .to_string()
            .contains("ttl must be positive"));
        let bad = serde_json::from_str::<Config>(r#"{"backend":"zookeeper","prefix":"a//b"}"#);
        assert!(bad.unwrap_err().to_string().contains("bad prefix"));
    }

    mod round_trip {
        use super::*;
        use proptest::prelude::*;

        fn backend() -> impl Strategy<Value = BackendKind> {
            prop_oneof![
                Just(BackendKind::Etcd),
                Just(BackendKind::Zookeeper),
                Just(BackendKind::Memory)
            ]
        }

        fn duration() -> impl Strategy<Value = Duration> {
            // Whole milliseconds, as humantime writes them back.
            (1u64..3_600_000).prop_map(Duration::from_millis)
        }

        fn config() -> impl Strategy<Value = Config> {
            let endpoint = prop_oneof![
                "[a-z][a-z0-9.-]{0,12}:[1-9][0-9]{0,3}",
                "127\\.0\\.0\\.[0-9]{1,2}:[1-9][0-9]{0,3}",
                "\\[::1\\]:[1-9][0-9]{0,3}",
            ];
            // Segments with characters a URL must escape (%, ?, #, +, space).
            let prefix = prop::collection::vec("[a-zA-Z0-9_.%?#+ -]{1,8}", 0..4);
            (
                backend(),
                prop::collection::vec(endpoint, 1..4),
                prefix,
                any::<bool>(),
                (duration(), duration(), duration()),
                (
                    prop::option::of(0u64..1000),
                    prop::option::of(1u64..=60_000),
                ),
            )
                .prop_map(
                    |(backend, endpoints, segments, slash, times, (margin, delay))| {
                        let segments: Vec<String> = segments
                            .into_iter()
                            .map(|s| if s == "." || s == ".." { "x".into() } else { s })
                            .collect();
                        // etcd: a leading `/` is part of the prefix.
                        let lead = if slash { "/" } else { "" };
                        let prefix = format!("{lead}{}", segments.join("/"));
                        let (ttl, connect, request) = times;
                        let mut config = Config::new(backend)
                            .with_prefix(prefix)
                            .with_ttl(ttl.max(Duration::from_secs(1)))
                            .with_connect_timeout(connect)
                            .with_request_timeout(request);
                        if let Some(ms) = margin {
                            config = config.with_safety_margin(Duration::from_millis(ms));
                        }
                        if let Some(ms) = delay {
                            config = config.with_lock_delay(Duration::from_millis(ms));
                        }
                        if backend != BackendKind::Memory {
                            config = config.with_endpoints(endpoints);
                        }
                        config
                    },
                )
                .prop_flat_map(|config| {
                    let text = "[a-zA-Z0-9 /&=%?#@:,+._-]{1,12}";
                    let file = prop::option::of(text);
                    let tls =
                        prop::option::of((file.clone(), file.clone(), file.clone(), file.clone()));
                    let acl = prop_oneof![
                        Just(AclPolicy::Default),
                        Just(AclPolicy::CreatorAll),
                        Just(AclPolicy::CreatorAllWorldRead),
                        Just(AclPolicy::Open)
                    ];
                    let user = prop::option::of(text);
                    (Just(config), user, file, tls, acl)
                })
                .prop_map(|(mut config, user, password_file, tls, acl)| {
                    if config.backend != BackendKind::Memory {
                        config.username = user;
                    }
                    config.password_file = password_file;
                    config.tls = tls.map(|(ca, cert, key, name)| TlsConfig {
                        ca_file: ca,
                        cert_file: cert,
                        key_file: key,
                        server_name: name,
                    });
                    config.with_acl(acl)
                })
                .prop_filter("valid", |c| c.validate().is_ok())
        }

        proptest! {
            #[test]
            fn through_url_and_serde(config in config()) {
                let url = config.to_url();
                prop_assert_eq!(&Config::from_url(&url).unwrap(), &config, "via {}", url);
                let json = serde_json::to_string(&config).unwrap();
                let back: Config = serde_json::from_str(&json).unwrap();
                prop_assert_eq!(&back, &config, "via {}", json);
            }
        }
    }
}
