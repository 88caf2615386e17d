//! TLS, digest authentication and node ACLs for the ZooKeeper backend.
//!
//! - **TLS**: the client library's rustls connector, with the CA (required: the library has
//!   no system roots) and, for mutual TLS, the client certificate and key. The server's
//!   certificate must name the endpoint's host: the library verifies that name and takes no
//!   override, so `server_name` is refused.
//! - **Authentication**: the `digest` scheme, `user:password`, sent on every connection
//!   (ZooKeeper keeps no login across sessions). ZooKeeper accepts any digest credentials:
//!   a wrong password is simply another identity, which the ACLs then refuse
//!   ([`Error::PermissionDenied`]).
//! - **ACLs**: every node fairlock creates (lock and election nodes, their parents, data
//!   nodes and theirs) carries the policy's ACL; see [`AclPolicy`].
//! - **Why a connection failed**: the client library retries failed TLS handshakes until its
//!   deadline and keeps no cause. When a TLS connection fails, fairlock makes a handshake of
//!   its own with the same files to name the cause ([`Error::Tls`]) instead of calling the
//!   servers unreachable.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use zookeeper_client as zk;

use crate::config::{AclPolicy, Config, TlsConfig};
use crate::error::{BoxError, Error, Result};

/// Creator-all and world-read: the holder's identity may do anything, anyone may read.
static CREATOR_ALL_WORLD_READ: [zk::Acl; 2] = [
    zk::Acl::new_const(zk::Permission::ALL, "auth", ""),
    zk::Acl::new_const(zk::Permission::READ, "world", "anyone"),
];

/// The ACL of the nodes fairlock creates under `config`.
///
/// The connection is authenticated if it has digest credentials or presents a client
/// certificate (ZooKeeper makes the certificate's subject the identity `x509:CN=…` on its
/// secure port); the creator ACL grants every identity of the creating connection.
///
/// # Errors
/// [`Error::InvalidConfig`] for a creator ACL without either (ZooKeeper would refuse every
/// create with InvalidACL).
pub(super) fn acls(config: &Config) -> Result<zk::Acls<'static>> {
    let authenticated = config.username.is_some()
        || config
            .tls
            .as_ref()
            .is_some_and(|tls| tls.cert_file.is_some());
    let policy = match config.acl {
        AclPolicy::Default if authenticated => AclPolicy::CreatorAll,
        AclPolicy::Default => AclPolicy::Open,
        other => other,
    };
    match policy {
        AclPolicy::CreatorAll | AclPolicy::CreatorAllWorldRead if !authenticated => {
            Err(Error::config(format!(
                "acl={} needs an identity: a user name and password, or a client certificate",
                policy.as_str()
            )))
        }
        AclPolicy::CreatorAll => Ok(zk::Acls::creator_all()),
        AclPolicy::CreatorAllWorldRead => Ok(zk::Acls::new(&CREATOR_ALL_WORLD_READ)),
        _ => Ok(zk::Acls::anyone_all()),
    }
}

/// The digest credentials `user:password`, if a user is configured.
///
/// # Errors
/// [`Error::InvalidConfig`]: a user without a password (or an unreadable password file),
/// or a user name with `:` in it (digest splits there).
pub(super) fn digest(config: &Config) -> Result<Option<Vec<u8>>> {
    let Some(user) = &config.username else {
        return Ok(None);
    };
    if user.is_empty() || user.contains(':') {
        return Err(Error::config(
            "a ZooKeeper digest user name must be non-empty and without ':'",
        ));
    }
    let password = config.resolved_password()?.ok_or_else(|| {
        Error::config(format!(
            "user {user:?} has no password (set password, password_file or FAIRLOCK_PASSWORD)"
        ))
    })?;
    Ok(Some(format!("{user}:{password}").into_bytes()))
}

fn tls_error(source: impl Into<BoxError>) -> Error {
    Error::Tls {
        backend: "zookeeper",
        source: source.into(),
    }
}

fn read(what: &str, path: &str) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| tls_error(format!("cannot read the {what} {path:?}: {e}")))
}

/// The client library's TLS options for `tls`.
///
/// # Errors
/// [`Error::InvalidConfig`]: no CA file, a certificate without a key (or the reverse), or a
/// server name override. [`Error::Tls`]: a file that cannot be read or holds no valid PEM.
pub(super) fn tls_options(tls: &TlsConfig) -> Result<zk::TlsOptions> {
    ensure_provider();
    if tls.server_name.is_some() {
        return Err(Error::config(
            "server_name is not supported by the ZooKeeper backend: its client library checks \
             the endpoint's host name; name the servers as their certificates do",
        ));
    }
    let ca_file = tls.ca_file.as_deref().ok_or_else(|| {
        Error::config("ZooKeeper TLS needs ca_file (the CA that signed the servers' certificates)")
    })?;
    let mut options = zk::TlsOptions::new()
        .with_pem_ca(&read("CA file", ca_file)?)
        .map_err(|e| tls_error(format!("CA file {ca_file:?}: {e}")))?;
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            options = options
                .with_pem_identity(&read("certificate file", cert)?, &read("key file", key)?)
                .map_err(|e| {
                    tls_error(format!("client certificate {cert:?} or key {key:?}: {e}"))
                })?;
        }
        (None, None) => {}
        _ => {
            return Err(Error::config(
                "cert_file and key_file go together (mutual TLS)",
            ))
        }
    }
    Ok(options)
}

/// Makes sure rustls has a process-wide crypto provider: the client library asks for the
/// default one, which rustls cannot choose by itself when several are compiled in (another
/// dependency may bring `ring`). Installs aws-lc-rs, rustls's own default, only if the
/// application installed none.
fn ensure_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: some provider is then installed.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}

/// Why TLS connections to `endpoints` fail, if a handshake of our own shows it: the first
/// TLS error met (certificate not trusted, expired, wrong host, client certificate
/// refused). `None` if no endpoint answered, or the handshakes succeeded. Blocking: run it
/// off the async threads. Bounded by `timeout` per endpoint.
pub(super) fn diagnose(endpoints: &[String], tls: &TlsConfig, timeout: Duration) -> Option<Error> {
    let config = match client_config(tls) {
        Ok(config) => Arc::new(config),
        Err(e) => return Some(e),
    };
    endpoints
        .iter()
        .find_map(|endpoint| handshake(endpoint, config.clone(), timeout).err())
        .map(tls_error)
}

fn client_config(tls: &TlsConfig) -> Result<rustls::ClientConfig> {
    let ca_file = tls.ca_file.as_deref().unwrap_or_default();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).map_err(tls_error)? {
        roots.add(cert.map_err(tls_error)?).map_err(tls_error)?;
    }
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .with_root_certificates(roots);
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(tls_error)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(tls_error)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(tls_error)?;
            builder.with_client_auth_cert(chain, key).map_err(tls_error)
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// One TLS handshake with `endpoint` (`host:port`), then a short read: a server that
/// refuses the client certificate says so by an alert, during the handshake (TLS 1.2) or
/// right after it (TLS 1.3). Ok if the handshake held or no TCP connection was made.
fn handshake(
    endpoint: &str,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<(), BoxError> {
    let (host, _) = endpoint.rsplit_once(':').unwrap_or((endpoint, ""));
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let Ok(name) = ServerName::try_from(host.to_owned()) else {
        return Ok(());
    };
    let Some(mut socket) = endpoint
        .to_socket_addrs()
        .ok()
        .into_iter()
        .flatten()
        .find_map(|addr| TcpStream::connect_timeout(&addr, timeout).ok())
    else {
        return Ok(()); // unreachable: not a TLS problem
    };
    let deadline = Instant::now() + timeout;
    socket.set_read_timeout(Some(timeout))?;
    socket.set_write_timeout(Some(timeout))?;
    let mut conn = rustls::ClientConnection::new(config, name)?;
    while conn.is_handshaking() {
        if Instant::now() > deadline {
            return Ok(());
        }
        match conn.complete_io(&mut socket) {
            Ok(_) => {}
            Err(e) if is_timeout(&e) => return Ok(()),
            Err(e) => return Err(tls_cause(e)),
        }
    }
    // Anything the server says now is an alert: it waits for our connect request.
    socket.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut tls = rustls::Stream::new(&mut conn, &mut socket);
    let _ = tls.flush();
    let mut byte = [0u8; 1];
    match tls.read(&mut byte) {
        Err(e) if !is_timeout(&e) && e.get_ref().is_some_and(|e| e.is::<rustls::Error>()) => {
            Err(tls_cause(e))
        }
        _ => Ok(()),
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// The rustls error inside an I/O error, if any (it carries the alert or certificate
/// problem), else the I/O error.
fn tls_cause(e: std::io::Error) -> BoxError {
    match e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
        true => e.into_inner().unwrap_or_else(|| "TLS error".into()),
        false => Box::new(e),
    }
}
