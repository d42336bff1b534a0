//! The endpoint's protection, configured as Prometheus exporters configure theirs
//! (`--web.config.file`, the exporter-toolkit format): TLS from a certificate and key file, and
//! HTTP basic auth against bcrypt hashes.
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: mapscope.crt
//!   key_file: mapscope.key
//! basic_auth_users:
//!   prometheus: $2y$10$...   # bcrypt hash (htpasswd -nBC 10 prometheus)
//! ```
//!
//! Relative paths are relative to the file's directory. Keys mapscope does not implement are
//! refused, not ignored: a setting that silently does nothing is worse than an error.
use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use base64::Engine as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use thiserror::Error;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WebConfigFile {
    tls_server_config: Option<TlsFile>,
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: PathBuf,
    key_file: PathBuf,
}

#[derive(Debug, Error)]
pub enum WebConfigError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Invalid { path: String, detail: String },
}

/// A loaded web config: the TLS acceptor if TLS is on, and the users allowed in.
pub struct WebConfig {
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    users: BTreeMap<String, String>,
    /// `user:password` pairs already checked: bcrypt is slow on purpose, and Prometheus sends
    /// the same credentials every scrape. Bounded.
    verified: Mutex<HashMap<String, bool>>,
    /// A hash of the users' cost, checked for unknown users (see `load`).
    dummy: String,
    /// Turns for hash checks (`turn`).
    checks: tokio::sync::Semaphore,
}

const VERIFIED_CACHE: usize = 64;
/// Hash checks at once: each takes tens of milliseconds of one core.
const MAX_CONCURRENT_CHECKS: usize = 2;

/// The `user:password` of a Basic `Authorization` header value.
fn decode(header: Option<&str>) -> Option<String> {
    let encoded = header?.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    String::from_utf8(decoded).ok()
}

impl WebConfig {
    pub fn load(path: &Path) -> Result<Self, WebConfigError> {
        let shown = path.display().to_string();
        let text =
            crate::files::read_regular_text(path, crate::files::MAX_CONFIG).map_err(|source| {
                WebConfigError::Read {
                    path: shown.clone(),
                    source,
                }
            })?;
        let invalid = |detail: String| WebConfigError::Invalid {
            path: shown.clone(),
            detail,
        };
        let file: WebConfigFile = serde_yaml_ng::from_str(&text).map_err(|error| {
            let place = error
                .location()
                .map_or(String::new(), |at| format!("line {}: ", at.line()));
            invalid(format!("{place}{error}"))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        // A web config that asks for nothing would serve plain HTTP to anyone, while its
        // presence suggests the endpoint is protected.
        if file.tls_server_config.is_none()
            && file
                .basic_auth_users
                .as_ref()
                .is_none_or(BTreeMap::is_empty)
        {
            return Err(invalid(
                "it sets neither tls_server_config nor basic_auth_users, so the endpoint would \
                 be plain HTTP open to anyone: set one of them (see \
                 deploy/web-config.example.yml), or drop --web-config-file"
                    .to_owned(),
            ));
        }
        let tls = match file.tls_server_config {
            None => None,
            Some(tls) => Some(
                acceptor(&base.join(tls.cert_file), &base.join(tls.key_file)).map_err(invalid)?,
            ),
        };
        let users = file.basic_auth_users.unwrap_or_default();
        for (user, hash) in &users {
            if !hash.starts_with("$2") {
                return Err(invalid(format!(
                    "basic_auth_users.{user}: not a bcrypt hash (make one with `htpasswd -nBC 10 {user}`)"
                )));
            }
        }
        // Unknown users are checked against a hash of the same cost, so that the answer takes
        // as long as for a known user with a wrong password: no user names leak by timing.
        let cost = users
            .values()
            .filter_map(|hash| hash.get(4..6)?.parse::<u32>().ok())
            .max()
            .unwrap_or(bcrypt::DEFAULT_COST);
        let dummy = bcrypt::hash("mapscope: no such user", cost)
            .map_err(|error| invalid(format!("basic_auth_users: {error}")))?;
        Ok(Self {
            tls,
            users,
            dummy,
            checks: tokio::sync::Semaphore::new(MAX_CONCURRENT_CHECKS),
            verified: Mutex::default(),
        })
    }

    pub fn requires_auth(&self) -> bool {
        !self.users.is_empty()
    }

    /// Whether an `Authorization` header value lets the request in, answered from the cache of
    /// recent answers when it has one (`None` when a hash must be checked: `check`).
    pub fn cached(&self, header: Option<&str>) -> Option<bool> {
        if self.users.is_empty() {
            return Some(true);
        }
        let pair = decode(header)?;
        self.verified
            .lock()
            .ok()
            .and_then(|cache| cache.get(&pair).copied())
    }

    /// A turn to check a hash: a few at a time, so that a flood of wrong passwords takes no more
    /// than that many threads' CPU, and scrapes with known credentials (cached) are not held.
    pub async fn turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.checks.acquire().await.ok()
    }

    /// Whether an `Authorization` header value lets the request in.
    pub fn authorized(&self, header: Option<&str>) -> bool {
        if self.users.is_empty() {
            return true;
        }
        let Some(pair) = decode(header) else {
            return false;
        };
        if let Some(&known) = self
            .verified
            .lock()
            .ok()
            .and_then(|cache| cache.get(&pair).copied())
            .as_ref()
        {
            return known;
        }
        let Some((user, password)) = pair.split_once(':') else {
            return false;
        };
        let ok = match self.users.get(user) {
            Some(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            None => {
                let _ = bcrypt::verify(password, &self.dummy);
                false
            }
        };
        if let Ok(mut cache) = self.verified.lock() {
            if cache.len() >= VERIFIED_CACHE {
                cache.clear();
            }
            cache.insert(pair, ok);
        }
        ok
    }
}

fn acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .map_err(|error| format!("tls_server_config.cert_file {}: {error}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls_server_config.cert_file {}: no certificate in it",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|error| format!("tls_server_config.key_file {}: {error}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|error| format!("the certificate and key do not make a TLS identity: {error}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn basic_auth_checks_bcrypt_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let path = write(
            dir.path(),
            "web.yml",
            &format!("basic_auth_users:\n  prometheus: '{hash}'\n"),
        );
        let config = WebConfig::load(&path).unwrap();
        assert!(config.requires_auth() && config.tls.is_none());
        let header = |pair: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        };
        assert!(config.authorized(Some(&header("prometheus:s3cret"))));
        // Cached answers stay right.
        assert!(config.authorized(Some(&header("prometheus:s3cret"))));
        assert!(!config.authorized(Some(&header("prometheus:wrong"))));
        assert!(!config.authorized(Some(&header("nobody:s3cret"))));
        assert!(!config.authorized(Some("Bearer x")));
        assert!(!config.authorized(None));
    }

    #[test]
    fn bad_files_are_refused_with_the_place_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        let unknown = write(
            dir.path(),
            "a.yml",
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [x]\n",
        );
        let error = WebConfig::load(&unknown).err().unwrap().to_string();
        assert!(
            error.contains("a.yml") && error.contains("cipher_suites"),
            "{error}"
        );
        let plain = write(
            dir.path(),
            "b.yml",
            "basic_auth_users:\n  alice: password\n",
        );
        let error = WebConfig::load(&plain).err().unwrap().to_string();
        assert!(error.contains("not a bcrypt hash"), "{error}");
        let missing = write(
            dir.path(),
            "c.yml",
            "tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n",
        );
        let error = WebConfig::load(&missing).err().unwrap().to_string();
        assert!(error.contains("nope.crt"), "{error}");
        let broken = write(dir.path(), "d.yml", "basic_auth_users: [\n");
        let error = WebConfig::load(&broken).err().unwrap().to_string();
        assert!(error.contains("d.yml") && error.contains("line"), "{error}");
        for (name, text) in [("e.yml", "{}\n"), ("f.yml", "basic_auth_users: {}\n")] {
            let empty = write(dir.path(), name, text);
            let error = WebConfig::load(&empty).err().unwrap().to_string();
            assert!(
                error.contains("neither tls_server_config"),
                "{name}: {error}"
            );
        }
    }
}
