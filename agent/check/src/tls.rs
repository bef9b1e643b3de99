//! The TLS side of a check: a rustls handshake that always completes when the server speaks TLS
//! correctly, and records instead of enforcing what the certificate proves. The identity check
//! then decides: a pinned SHA-256 fingerprint (`--expect-cert`) is the strongest evidence, a
//! chain that verifies against the system's CAs for the target's name the next best, and a
//! self-signed certificate without a pin proves nothing either way.

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{TlsConnector, client::TlsStream};

/// A SHA-256 certificate fingerprint, written as 64 hex digits (colons allowed, as openssl
/// prints them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(certificate: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, certificate);
        let mut bytes = [0; 32];
        bytes.copy_from_slice(digest.as_ref());
        Self(bytes)
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let hex: String = text
            .trim()
            .trim_start_matches("sha256:")
            .chars()
            .filter(|&c| c != ':')
            .collect();
        let bad = || {
            format!(
                "`{text}` is not a SHA-256 fingerprint: 64 hex digits, colons allowed (openssl x509 -noout -fingerprint -sha256 prints one)"
            )
        };
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(bad());
        }
        let mut bytes = [0; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(bytes))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// What the handshake showed about the server's certificate.
#[derive(Clone, Debug, Serialize)]
pub struct Certificate {
    pub sha256: Fingerprint,
    /// Why the chain does not verify against the system's CAs for the target's name; `None`
    /// when it does.
    pub chain_problem: Option<String>,
    pub protocol_version: String,
}

/// Accepts any certificate, remembering the end-entity certificate and whether the WebPKI
/// verifier (system CAs) would have accepted it. Handshake signatures are still verified, so
/// the peer does hold the key of the certificate it showed.
#[derive(Debug)]
struct RecordingVerifier {
    webpki: Result<Arc<WebPkiServerVerifier>, String>,
    provider: Arc<CryptoProvider>,
    seen: Mutex<Option<(Fingerprint, Result<(), String>)>>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = match &self.webpki {
            Ok(webpki) => webpki
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map(|_| ())
                .map_err(|err| err.to_string()),
            Err(why) => Err(why.clone()),
        };
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some((Fingerprint::of(end_entity), chain));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The system's CA certificates as a WebPKI verifier, or why there is none.
fn webpki_verifier(provider: &Arc<CryptoProvider>) -> Result<Arc<WebPkiServerVerifier>, String> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
    if added == 0 {
        return Err("no CA certificates found on this host to verify the chain".to_owned());
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|err| format!("cannot use the system's CA certificates: {err}"))
}

/// Runs a TLS handshake over `stream` for `server_name` (a host name or an IP address).
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    server_name: &str,
    timeout: Duration,
) -> Result<(TlsStream<S>, Certificate), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(RecordingVerifier {
        webpki: webpki_verifier(&provider),
        provider: provider.clone(),
        seen: Mutex::new(None),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("TLS configuration: {err}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|err| format!("`{server_name}` cannot be a TLS server name: {err}"))?;
    let connector = TlsConnector::from(Arc::new(config));
    let stream = match tokio::time::timeout(timeout, connector.connect(name, stream)).await {
        Err(_) => {
            return Err(format!(
                "the TLS handshake stalled for {}",
                idlecut_core::duration_text::with_seconds(timeout.as_secs_f64())
            ));
        }
        Ok(Err(err)) => return Err(format!("the TLS handshake failed: {err}")),
        Ok(Ok(stream)) => stream,
    };
    let protocol_version = stream
        .get_ref()
        .1
        .protocol_version()
        .map_or_else(|| "unknown".to_owned(), |v| format!("{v:?}"));
    let seen = verifier.seen.lock().ok().and_then(|mut seen| seen.take());
    let (sha256, chain) =
        seen.ok_or_else(|| "the handshake completed without a certificate".to_owned())?;
    Ok((
        stream,
        Certificate {
            sha256,
            chain_problem: chain.err(),
            protocol_version,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let plain = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(
            Fingerprint::parse(&plain).unwrap(),
            Fingerprint::parse(&colons).unwrap()
        );
        assert_eq!(Fingerprint::parse(&plain).unwrap().to_string(), plain);
        assert!(Fingerprint::parse("abc").is_err());
        assert!(Fingerprint::parse(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn fingerprint_is_the_sha256_of_the_der() {
        // SHA-256 of the empty string.
        assert_eq!(
            Fingerprint::of(b"").to_string(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
