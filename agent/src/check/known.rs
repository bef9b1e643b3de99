//! `--known-certs FILE`: the certificates earlier runs saw, per target and port, so that a
//! later run tells when another one shows up (trust on first use, as SSH does with host keys).
//! A JSON object, `"host:port": "sha256 hex"`, rewritten whole (through a temporary file and a
//! rename) after each run that learned something.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use super::tls::Fingerprint;

#[derive(Debug)]
pub struct KnownCerts {
    path: PathBuf,
    entries: BTreeMap<String, String>,
}

impl KnownCerts {
    /// Reads the file; a missing file is an empty record.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let entries = match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a record of known certificates (a JSON object of \"host:port\": \
                     \"sha256\")",
                    path.display()
                )
            })?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Self {
            path: path.to_owned(),
            entries,
        })
    }

    /// The fingerprint recorded for `host:port`, if any (a malformed one counts as none).
    pub fn get(&self, host: &str, port: u16) -> Option<Fingerprint> {
        self.entries
            .get(&key(host, port))
            .and_then(|text| Fingerprint::parse(text).ok())
    }

    /// Records `fingerprint` for `host:port` if nothing was recorded yet. Returns whether it
    /// did.
    pub fn learn(&mut self, host: &str, port: u16, fingerprint: Fingerprint) -> bool {
        let key = key(host, port);
        if self.entries.contains_key(&key) {
            return false;
        }
        self.entries.insert(key, fingerprint.to_string());
        true
    }

    pub fn save(&self) -> anyhow::Result<()> {
        let mut text = serde_json::to_string_pretty(&self.entries)?;
        text.push('\n');
        let temporary = self.path.with_extension("tmp");
        std::fs::write(&temporary, text)
            .and_then(|()| std::fs::rename(&temporary, &self.path))
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

fn key(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_is_learned_once_then_kept() {
        let dir = std::env::temp_dir().join(format!("idlecut-known-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("known.json");
        let _ = std::fs::remove_file(&path);
        let first = Fingerprint::of(b"first");
        let mut known = KnownCerts::load(&path).unwrap();
        assert_eq!(known.get("mail.example.net", 587), None);
        assert!(known.learn("mail.example.net", 587, first));
        assert!(!known.learn("mail.example.net", 587, Fingerprint::of(b"other")));
        known.save().unwrap();
        let known = KnownCerts::load(&path).unwrap();
        assert_eq!(known.get("mail.example.net", 587), Some(first));
        assert_eq!(known.get("2001:db8::1", 587), None);
        std::fs::write(&path, "not json").unwrap();
        assert!(KnownCerts::load(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
