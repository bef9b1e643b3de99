//! The web configuration file (`--web-config FILE`, TOML): who may read what on the HTTP side.
//! Keys follow Prometheus's exporter-toolkit (`tls_server_config`, `basic_auth_users` with
//! bcrypt hashes) so that operators meet what they know, plus a bearer token file:
//!
//! ```toml
//! bearer_token_file = "/etc/idlecut/token"       # Authorization: Bearer <token>
//! unauthenticated_api = "loopback"               # without authentication: loopback, anywhere, nowhere
//! [tls_server_config]
//! cert_file = "/etc/idlecut/tls/tls.crt"
//! key_file = "/etc/idlecut/tls/tls.key"
//! client_ca_file = "/etc/idlecut/tls/ca.crt"     # mutual TLS (optional)
//! client_auth_type = "RequireAndVerifyClientCert"  # or VerifyClientCertIfGiven
//! [basic_auth_users]
//! prometheus = "$2y$10$..."
//! ```
//!
//! Relative paths are relative to the file's directory. The file and every file it names are
//! checked for changes at most once a second, on new connections and requests; a change that
//! loads is used from then on, one that does not is logged and the previous settings stay.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use serde::Deserialize;
use tracing::{info, warn};

use super::{
    auth::Credentials,
    tls::{self, ClientAuthType, ClientCa},
};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebConfigFile {
    bearer_token_file: Option<PathBuf>,
    unauthenticated_api: Option<ApiAccess>,
    tls_server_config: Option<TlsFiles>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFiles {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: Option<PathBuf>,
    client_auth_type: Option<ClientAuthType>,
}

/// Who may read `/api/v1/*` (per-connection details: remote addresses, processes) when no
/// authentication is configured. With authentication, whoever authenticates may.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiAccess {
    /// Clients connecting from a loopback address: the host's own users.
    #[default]
    Loopback,
    Anywhere,
    Nowhere,
}

impl ApiAccess {
    pub fn allows(self, peer: SocketAddr) -> bool {
        match self {
            Self::Loopback => peer.ip().to_canonical().is_loopback(),
            Self::Anywhere => true,
            Self::Nowhere => false,
        }
    }
}

/// The settings in force.
pub struct Loaded {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Bearer token or basic-auth users; None when neither is configured.
    pub credentials: Option<Arc<Credentials>>,
    /// A client CA is configured: requests need a verified client certificate.
    pub client_certificates: bool,
    pub unauthenticated_api: ApiAccess,
    /// The files these settings came from, to notice changes.
    files: Vec<PathBuf>,
}

impl Loaded {
    /// Nothing configured: plain HTTP, no authentication.
    fn open() -> Self {
        Self {
            tls: None,
            credentials: None,
            client_certificates: false,
            unauthenticated_api: ApiAccess::default(),
            files: Vec::new(),
        }
    }

    /// Whether requests (but to `/healthz`) must authenticate.
    pub fn requires_authentication(&self) -> bool {
        self.credentials.is_some() || self.client_certificates
    }

    fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the web config file {}", path.display()))?;
        let file: WebConfigFile = toml::from_str(&text).map_err(|err| {
            let line = err
                .span()
                .map(|span| format!(" (line {})", text[..span.start].lines().count().max(1)))
                .unwrap_or_default();
            anyhow::anyhow!(
                "web config file {}{line}: {}",
                path.display(),
                err.message().trim()
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let in_base = |file: &Path| base.join(file);
        let mut files = vec![path.to_owned()];
        let at = |key: &str| format!("web config file {}: {key}", path.display());

        let tls = match &file.tls_server_config {
            None => None,
            Some(tls_files) => {
                let cert_file = in_base(&tls_files.cert_file);
                let key_file = in_base(&tls_files.key_file);
                let client_ca_file = tls_files.client_ca_file.as_deref().map(in_base);
                if tls_files.client_auth_type.is_some() && client_ca_file.is_none() {
                    bail!(
                        "{}: client_auth_type needs client_ca_file, the CA that signs client certificates",
                        at("tls_server_config")
                    );
                }
                let client_ca = client_ca_file.as_deref().map(|file| ClientCa {
                    file,
                    auth_type: tls_files.client_auth_type.unwrap_or_default(),
                });
                let config = tls::server_config(&cert_file, &key_file, client_ca)
                    .with_context(|| at("tls_server_config"))?;
                files.extend([cert_file, key_file]);
                files.extend(client_ca_file);
                Some(config)
            }
        };
        let token = match &file.bearer_token_file {
            None => None,
            Some(token_file) => {
                let token_file = in_base(token_file);
                let token = read_token(&token_file).with_context(|| at("bearer_token_file"))?;
                files.push(token_file);
                Some(token)
            }
        };
        let credentials = if token.is_none() && file.basic_auth_users.is_empty() {
            None
        } else {
            let credentials = Credentials::new(token.as_deref(), &file.basic_auth_users)
                .with_context(|| at("basic_auth_users"))?;
            Some(Arc::new(credentials))
        };
        let client_certificates = file
            .tls_server_config
            .as_ref()
            .is_some_and(|tls| tls.client_ca_file.is_some());
        if credentials.is_some() && tls.is_none() {
            warn!(
                "the web config sets credentials without tls_server_config: they travel in clear text"
            );
        }
        Ok(Self {
            tls,
            credentials,
            client_certificates,
            unauthenticated_api: file.unauthenticated_api.unwrap_or_default(),
            files,
        })
    }
}

fn read_token(file: &Path) -> anyhow::Result<String> {
    let token =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let token = token.trim();
    if token.is_empty() {
        bail!("{} is empty", file.display());
    }
    Ok(token.to_owned())
}

/// What identifies a version of a file: a replaced file (new inode, as Kubernetes' secret
/// volumes do through a symlink swap) or a rewritten one (mtime, length) both change it.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(file: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt as _;
    let metadata = std::fs::metadata(file).ok()?;
    Some((metadata.modified().ok()?, metadata.len(), metadata.ino()))
}

const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// The web configuration, reloaded when its files change.
pub struct WebSettings {
    path: Option<PathBuf>,
    watch: Mutex<Watch>,
}

struct Watch {
    current: Arc<Loaded>,
    /// The stamps of the files last loaded, or last tried (a failed load is not retried until
    /// the files change again).
    stamps: Vec<Stamp>,
    checked: Instant,
}

impl WebSettings {
    /// Loads the file, if any; every error is a start-up error.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Arc<Self>> {
        let loaded = match path {
            Some(path) => Loaded::load(path)?,
            None => Loaded::open(),
        };
        let stamps = loaded.files.iter().map(|file| stamp(file)).collect();
        Ok(Arc::new(Self {
            path: path.map(Path::to_owned),
            watch: Mutex::new(Watch {
                current: Arc::new(loaded),
                stamps,
                checked: Instant::now(),
            }),
        }))
    }

    /// The settings in force, reloaded first if a file changed.
    pub fn current(&self) -> Arc<Loaded> {
        let mut watch = self.watch.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(path) = &self.path else {
            return watch.current.clone();
        };
        if watch.checked.elapsed() < RECHECK_EVERY {
            return watch.current.clone();
        }
        watch.checked = Instant::now();
        let stamps: Vec<Stamp> = watch.current.files.iter().map(|file| stamp(file)).collect();
        if stamps == watch.stamps {
            return watch.current.clone();
        }
        watch.stamps = stamps;
        match Loaded::load(path) {
            Ok(loaded) => {
                info!(file = %path.display(), "web config reloaded");
                // The stamps of what was read (the new settings may name other files).
                watch.stamps = loaded.files.iter().map(|file| stamp(file)).collect();
                watch.current = Arc::new(loaded);
            }
            Err(err) => warn!("{err:#}; keeping the previous web settings"),
        }
        watch.current.clone()
    }

    pub fn describe(&self) -> String {
        let current = self.current();
        let scheme = if current.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let auth = match (current.credentials.is_some(), current.client_certificates) {
            (false, false) => "no authentication",
            (true, false) => "token/basic authentication",
            (false, true) => "client certificates",
            (true, true) => "client certificates and token/basic authentication",
        };
        format!("{scheme}, {auth}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_api_access_admits_the_host_only() {
        let access = ApiAccess::Loopback;
        assert!(access.allows("127.0.0.1:5000".parse().unwrap()));
        assert!(access.allows("[::1]:5000".parse().unwrap()));
        assert!(access.allows("[::ffff:127.0.0.1]:5000".parse().unwrap()));
        assert!(!access.allows("192.0.2.1:5000".parse().unwrap()));
        assert!(!ApiAccess::Nowhere.allows("127.0.0.1:5000".parse().unwrap()));
        assert!(ApiAccess::Anywhere.allows("192.0.2.1:5000".parse().unwrap()));
    }

    #[test]
    fn unknown_keys_and_missing_files_are_errors_that_name_them() {
        let dir = std::env::temp_dir().join(format!("idlecut-web-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("web.toml");
        for (text, expected) in [
            ("bearer_token = \"x\"\n", "unknown field `bearer_token`"),
            ("bearer_token_file = \"missing\"\n", "bearer_token_file"),
            (
                "[tls_server_config]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n",
                "c.pem",
            ),
            (
                "[tls_server_config]\ncert_file = \"c\"\nkey_file = \"k\"\nclient_auth_type = \"VerifyClientCertIfGiven\"\n",
                "client_auth_type needs client_ca_file",
            ),
            ("[basic_auth_users]\nalice = \"not a hash\"\n", "alice"),
            ("unauthenticated_api = \"everyone\"\n", "line 1"),
        ] {
            std::fs::write(&config, text).unwrap();
            let err = format!("{:#}", Loaded::load(&config).err().expect(text));
            assert!(err.contains(expected), "{text:?} gave {err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
