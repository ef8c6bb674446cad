//! TLS for the receiver: the server configuration from the PEM files in `[smtp]`, and what a
//! session learns of its TLS connection.
//!
//! TLS 1.2 and 1.3 only, rustls with the ring provider. The configuration is behind an
//! `ArcSwap` so SIGHUP can load a renewed certificate without dropping sessions.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;

/// Why the TLS configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls_cert {path}: {message}")]
    Cert { path: String, message: String },
    #[error("tls_key {path}: {message}")]
    Key { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Installs the process-wide crypto provider (ring). Harmless when already installed.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Loads certificate chain and key from PEM files into a server configuration.
pub fn load_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    install_provider();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert { path: cert.display().to_string(), message: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Cert { path: cert.display().to_string(), message: "no certificate in file".into() });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        message: match e {
            _ if is_encrypted_key(key) => {
                "encrypted private keys are not supported: decrypt it (openssl pkey -in KEY -out PLAIN.key)".into()
            }
            rustls_pki_types::pem::Error::NoItemsFound => {
                "no private key in file (PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\")".into()
            }
            other => other.to_string(),
        },
    })?;
    let config = ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

/// Whether a key file holds a password-protected key (which rustls cannot use).
fn is_encrypted_key(path: &Path) -> bool {
    let contains = |pem: &[u8], needle: &[u8]| pem.windows(needle.len()).any(|w| w == needle);
    // PKCS#8 "ENCRYPTED PRIVATE KEY", or OpenSSL's traditional "Proc-Type: 4,ENCRYPTED" header.
    std::fs::read(path)
        .is_ok_and(|pem| contains(&pem, b"BEGIN ENCRYPTED PRIVATE KEY") || contains(&pem, b"Proc-Type: 4,ENCRYPTED"))
}

/// What the `Received:` header and scripts learn about a TLS session.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    pub version: String,
    pub cipher: String,
}

impl TlsInfo {
    pub fn of<S>(stream: &TlsStream<S>) -> TlsInfo {
        let conn = stream.get_ref().1;
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
            Some(other) => format!("{other:?}"),
            None => "TLS".to_string(),
        };
        let cipher = conn.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())).unwrap_or_default();
        TlsInfo { version, cipher }
    }
}
