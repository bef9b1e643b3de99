//! TLS on the listener (rustls, ring): a certificate chain and its key from PEM files, and
//! optionally a CA whose client certificates are verified (mutual TLS). Built anew from the
//! files whenever they change (see `web_config`), so renewed certificates need no restart.
//! The PEM readers serve `client` too.

use std::{path::Path, sync::Arc};

use anyhow::{Context as _, bail};
use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{
        CertificateDer, PrivateKeyDer,
        pem::{self, PemObject as _},
    },
    server::WebPkiClientVerifier,
};

/// Whether a client must present a certificate, when a client CA is configured (the names of
/// Prometheus's exporter-toolkit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
pub enum ClientAuthType {
    /// The handshake fails without a certificate signed by the CA.
    #[default]
    RequireAndVerifyClientCert,
    /// A certificate is optional, but one that is given must be signed by the CA; requests
    /// without one are unauthenticated (so `/healthz` works for probes without a certificate).
    VerifyClientCertIfGiven,
}

pub struct ClientCa<'a> {
    pub file: &'a Path,
    pub auth_type: ClientAuthType,
}

pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    client_ca: Option<ClientCa<'_>>,
) -> anyhow::Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certificates(cert_file)?;
    let key = read_private_key(key_file)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => builder.with_client_cert_verifier(client_verifier(&ca, provider)?),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|err| match err {
            rustls::Error::InconsistentKeys(_) => anyhow::anyhow!(
                "the private key in {} does not belong to the certificate in {}",
                key_file.display(),
                cert_file.display()
            ),
            other => anyhow::anyhow!(
                "cannot use the certificate in {} with the key in {}: {other}",
                cert_file.display(),
                key_file.display()
            ),
        })?;
    // HTTP/1.1 only: the server speaks nothing else.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn client_verifier(
    ca: &ClientCa<'_>,
    provider: Arc<CryptoProvider>,
) -> anyhow::Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(ca.file)? {
        roots
            .add(cert)
            .with_context(|| format!("a CA certificate in {} is not valid", ca.file.display()))?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = match ca.auth_type {
        ClientAuthType::RequireAndVerifyClientCert => builder,
        ClientAuthType::VerifyClientCertIfGiven => builder.allow_unauthenticated(),
    };
    builder
        .build()
        .with_context(|| format!("cannot verify clients with the CA in {}", ca.file.display()))
}

/// Every certificate of a PEM file; at least one.
pub fn read_certificates(file: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(cert_path(file)?)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|err| pem_error(file, "certificate", err))?;
    if certs.is_empty() {
        bail!("no PEM certificate in {}", file.display());
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_private_key(file: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(cert_path(file)?)
        .map_err(|err| pem_error(file, "private key", err))
}

/// What is wrong with a PEM file, in words and naming it (pki-types' own error shows its
/// markers as byte arrays). Nothing of the file's body is repeated: a key file holds a secret.
fn pem_error(file: &Path, wanted: &str, err: pem::Error) -> anyhow::Error {
    let file = file.display();
    match err {
        pem::Error::MissingSectionEnd { end_marker } => anyhow::anyhow!(
            "{file} is not a complete PEM file: a section has no `-----END {}-----` line \
             (truncated, or still being written?)",
            String::from_utf8_lossy(&end_marker).trim()
        ),
        pem::Error::IllegalSectionStart { .. } => {
            anyhow::anyhow!("{file} is not a valid PEM file: a `-----BEGIN` line is malformed")
        }
        pem::Error::Base64Decode(_) => {
            anyhow::anyhow!("{file} is not a valid PEM file: the text of a section is not base64")
        }
        pem::Error::Io(err) => anyhow::anyhow!("cannot read {file}: {err}"),
        pem::Error::NoItemsFound => anyhow::anyhow!("no PEM {wanted} in {file}"),
        other => anyhow::anyhow!("cannot read a PEM {wanted} from {file}: {other}"),
    }
}

/// The file, or an error saying it cannot be read (pki-types' own error does not name it).
fn cert_path(file: &Path) -> anyhow::Result<&Path> {
    std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 21: a half-written certificate or key was reported as "missing section end
    /// marker: [45, 45, 45, ...]". The error names the file and says it is not a complete
    /// PEM, and repeats nothing of a key's body.
    #[test]
    fn a_truncated_pem_file_is_named_and_called_incomplete() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("tls.crt");
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n").unwrap();
        let key = dir.path().join("tls.key");
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nS3CR3TS3CR3T\n-----END PRIV",
        )
        .unwrap();
        for (err, file, marker) in [
            (
                format!("{:#}", read_certificates(&cert).unwrap_err()),
                &cert,
                "-----END CERTIFICATE-----",
            ),
            (
                format!("{:#}", read_private_key(&key).unwrap_err()),
                &key,
                "-----END PRIVATE KEY-----",
            ),
        ] {
            assert!(
                err.contains(&format!("{} is not a complete PEM file", file.display())),
                "{err}"
            );
            assert!(err.contains(marker), "{err}");
            assert!(!err.contains("[45") && !err.contains("S3CR3T"), "{err}");
        }
        std::fs::write(&key, "").unwrap();
        let err = format!("{:#}", read_private_key(&key).unwrap_err());
        assert!(
            err.contains(&format!("no PEM private key in {}", key.display())),
            "{err}"
        );
    }
}
