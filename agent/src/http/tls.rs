//! TLS on the listener (rustls, ring): a certificate chain and its key from PEM files, and
//! optionally a CA whose client certificates are verified (mutual TLS). Built anew from the
//! files whenever they change (see `web_config`), so renewed certificates need no restart.
//! The PEM readers serve `client` too.

use std::{path::Path, sync::Arc};

use anyhow::{Context as _, bail};
use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
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
        .map_err(|err| anyhow::anyhow!("{err}"))
        .and_then(|certs| {
            certs
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| anyhow::anyhow!("{err}"))
        })
        .with_context(|| format!("cannot read certificates from {}", file.display()))?;
    if certs.is_empty() {
        bail!("no PEM certificate in {}", file.display());
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_private_key(file: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(cert_path(file)?)
        .map_err(|err| anyhow::anyhow!("{err}"))
        .with_context(|| format!("no usable private key in {}", file.display()))
}

/// The file, or an error saying it cannot be read (pki-types' own error does not name it).
fn cert_path(file: &Path) -> anyhow::Result<&Path> {
    std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    Ok(file)
}
