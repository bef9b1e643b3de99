//! `--known-certs FILE`: the certificates earlier runs saw, per target and port, so that a
//! later run tells when another one shows up (trust on first use, as SSH does with host keys).
//! A JSON object, `"host:port": "sha256 hex"`, rewritten whole after each run that learned
//! something: into a fresh temporary file of a random name in the same directory, created
//! exclusively (O_CREAT|O_EXCL, so a planted file or symlink is never opened), synced, then
//! renamed over the record and the directory synced. A reader sees the old record or the new
//! one, whole; a symlink planted where the record or a temporary file goes is replaced or left
//! alone, and its target never written.

use std::{
    collections::BTreeMap,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
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

    /// Replaces the file with the record, atomically (see the module's comment).
    pub fn save(&self) -> anyhow::Result<()> {
        let mut text = serde_json::to_string_pretty(&self.entries)?;
        text.push('\n');
        self.replace(text.as_bytes())
            .with_context(|| format!("writing {}", self.path.display()))
    }

    fn replace(&self, contents: &[u8]) -> std::io::Result<()> {
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        // The record's own permissions when it exists (symlink_metadata: a planted symlink's
        // target does not lend its mode), else rw-r--r-- less the umask.
        let mode = std::fs::symlink_metadata(&self.path)
            .ok()
            .filter(std::fs::Metadata::is_file)
            .map_or(0o644, |metadata| metadata.permissions().mode() & 0o7777);
        let mut file = tempfile::Builder::new()
            .prefix(".idlecut-known-certs.")
            .suffix(".tmp")
            .permissions(std::fs::Permissions::from_mode(mode))
            .tempfile_in(dir)?;
        file.write_all(contents)?;
        file.as_file().sync_all()?;
        // On failure the temporary file is removed when the error drops it.
        file.persist(&self.path).map_err(|err| err.error)?;
        std::fs::File::open(dir)?.sync_all()
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

    /// Issue 21: a `known.tmp` symlink planted in a shared directory made the save write
    /// through it (`std::fs::write` follows symlinks) and then rename the symlink over the
    /// record.
    #[test]
    fn a_planted_symlink_is_not_followed_and_the_record_is_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        for planted in ["known.tmp", "known.json.tmp", ".known.tmp"] {
            std::os::unix::fs::symlink(&victim, dir.path().join(planted)).unwrap();
        }
        let mut known = KnownCerts::load(&path).unwrap();
        assert!(known.learn("mail.example.net", 143, Fingerprint::of(b"cert")));
        known.save().unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        let record = std::fs::symlink_metadata(&path).unwrap();
        assert!(record.file_type().is_file(), "{record:?}");
        assert_eq!(
            KnownCerts::load(&path)
                .unwrap()
                .get("mail.example.net", 143),
            Some(Fingerprint::of(b"cert"))
        );
        // Nothing is left behind but the record, the victim and the planted links.
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                ".known.tmp",
                "known",
                "known.json.tmp",
                "known.tmp",
                "victim"
            ]
        );

        // The record itself a symlink: the link is replaced, its target left alone.
        let shared = dir.path().join("shared.json");
        std::fs::write(&shared, "{}\n").unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&shared, &path).unwrap();
        let mut known = KnownCerts::load(&path).unwrap();
        assert!(known.learn("mail.example.net", 587, Fingerprint::of(b"cert")));
        known.save().unwrap();
        assert_eq!(std::fs::read_to_string(&shared).unwrap(), "{}\n");
        assert!(
            std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_file()
        );
    }
}
