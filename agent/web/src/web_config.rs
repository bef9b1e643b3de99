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
    credentials::Credentials,
    tls::{self, ClientAuthType, ClientCa},
};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebConfigFile {
    #[serde(default, deserialize_with = "quiet::path")]
    bearer_token_file: Option<PathBuf>,
    unauthenticated_api: Option<ApiAccess>,
    tls_server_config: Option<TlsFiles>,
    #[serde(default, deserialize_with = "quiet::users")]
    basic_auth_users: BTreeMap<String, String>,
}

/// The keys that may hold a secret by mistake (a token where its file's path goes, a password
/// where its hash goes): a value of the wrong type is refused naming the key and the type
/// found, never the value (serde's own message quotes it).
mod quiet {
    use std::{collections::BTreeMap, fmt, path::PathBuf};

    use serde::{
        Deserializer,
        de::{self, MapAccess, SeqAccess, Visitor},
    };

    /// A key, and what its value must be.
    type Expected = (&'static str, &'static str);

    fn found<E: de::Error>((key, what): Expected, kind: &str) -> E {
        E::custom(format!("{key}: expected {what}, found {kind}"))
    }

    /// Visits one value: the kinds `Self` does not take are refused by `found`.
    macro_rules! refuse {
        ($self:ident, $expected:expr; $($method:ident($ty:ty) => $kind:literal),*) => {
            $(
                fn $method<E: de::Error>($self, _: $ty) -> Result<Self::Value, E> {
                    Err(found($expected, $kind))
                }
            )*
        };
    }

    const PATH: Expected = (
        "bearer_token_file",
        "the path of the file holding the token, in quotes",
    );
    const USERS: Expected = (
        "basic_auth_users",
        "a table of user = \"bcrypt hash\" ([basic_auth_users])",
    );
    const HASH: Expected = (
        "basic_auth_users",
        "each user's bcrypt hash in quotes ($2y$...)",
    );

    /// A string, as the path of a file.
    pub fn path<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<PathBuf>, D::Error> {
        deserializer
            .deserialize_any(Text(PATH))
            .map(|text| Some(text.into()))
    }

    /// A table of user = "bcrypt hash".
    pub fn users<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<String, String>, D::Error> {
        deserializer.deserialize_any(Users)
    }

    struct Text(Expected);

    impl<'de> Visitor<'de> for Text {
        type Value = String;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0.1)
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<String, E> {
            Ok(text.to_owned())
        }

        refuse!(self, self.0; visit_bool(bool) => "a boolean", visit_i64(i64) => "a number",
            visit_u64(u64) => "a number", visit_f64(f64) => "a number");

        fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<String, A::Error> {
            Err(found(self.0, "an array"))
        }

        fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<String, A::Error> {
            Err(found(self.0, "a table"))
        }
    }

    struct Users;

    impl<'de> Visitor<'de> for Users {
        type Value = BTreeMap<String, String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(USERS.1)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut users = BTreeMap::new();
            while let Some(user) = map.next_key::<String>()? {
                let hash = map.next_value_seed(HashSeed)?;
                users.insert(user, hash);
            }
            Ok(users)
        }

        refuse!(self, USERS; visit_str(&str) => "a string", visit_bool(bool) => "a boolean",
            visit_i64(i64) => "a number", visit_u64(u64) => "a number",
            visit_f64(f64) => "a number");

        fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(found(USERS, "an array"))
        }
    }

    struct HashSeed;

    impl<'de> de::DeserializeSeed<'de> for HashSeed {
        type Value = String;

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
            deserializer.deserialize_any(Text(HASH))
        }
    }
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

/// The token in `file`. Errors never repeat the path (a token written where its file's path
/// goes would land in the log): the caller names the key.
fn read_token(file: &Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(file).context("cannot read the file it names")?;
    let token = token.trim();
    if token.is_empty() {
        bail!("the file it names is empty");
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

    /// Issue 21's audit of the keys that may hold a secret by mistake: a token where its
    /// file's path goes, a password (or `user:password`) where a hash or the users' table
    /// goes. The error names the file, the key (and the user), never the value.
    #[test]
    fn a_secret_written_in_the_wrong_place_is_not_repeated() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("web.toml");
        for (text, expected) in [
            (
                "bearer_token_file = \"hunter2token\"\n",
                "bearer_token_file: cannot read the file it names",
            ),
            (
                "bearer_token_file = 7777777\n",
                "(line 1): bearer_token_file: expected the path of the file holding the token, in \
                 quotes, found a number",
            ),
            (
                "basic_auth_users = \"alice:hunter2\"\n",
                "(line 1): basic_auth_users: expected a table of user = \"bcrypt hash\"",
            ),
            (
                "[basic_auth_users]\nalice = 7777777\n",
                "(line 2): basic_auth_users: expected each user's bcrypt hash in quotes",
            ),
            (
                "[basic_auth_users]\nalice = [\"hunter2\"]\n",
                "(line 2): basic_auth_users: expected each user's bcrypt hash in quotes ($2y$...), \
                 found an array",
            ),
            (
                "[basic_auth_users]\nalice = \"hunter2\"\n",
                "of `alice` is not a bcrypt hash",
            ),
        ] {
            std::fs::write(&config, text).unwrap();
            let err = format!("{:#}", Loaded::load(&config).err().expect(text));
            assert!(err.contains(expected), "{text:?} gave {err}");
            assert!(
                err.starts_with(&format!("web config file {}", config.display())),
                "{err}"
            );
            assert!(
                !err.contains("hunter2") && !err.contains("7777777"),
                "{text:?} gave {err}"
            );
            assert!(!err.contains('\n'), "{text:?} gave {err}");
        }
        std::fs::write(dir.path().join("token"), "\n").unwrap();
        std::fs::write(&config, "bearer_token_file = \"token\"\n").unwrap();
        let err = format!("{:#}", Loaded::load(&config).err().expect("an empty token"));
        assert!(
            err.contains("bearer_token_file: the file it names is empty"),
            "{err}"
        );
    }
}
