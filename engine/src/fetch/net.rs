//! Client connections of the pollers: plain TCP or TLS (implicit, or after STARTTLS/STLS),
//! with the platform's certificate verification, or, with an account's `tls_ca`, against the
//! CA certificates of that file alone (a self-hosted server with a private CA).
//!
//! Security: the server's certificate must chain to a trusted CA and name `host`; there is no
//! option to skip the check. A failed check is an error that says so, never a fallback.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use rustls_platform_verifier::ConfigVerifierExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Connect and handshake timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A poller's connection to its server.
#[derive(Debug)]
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl ClientStream {
    pub async fn connect(host: &str, port: u16) -> io::Result<ClientStream> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port)))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {host}:{port} timed out")))??;
        let _ = tcp.set_nodelay(true);
        Ok(ClientStream::Plain(tcp))
    }

    /// Wraps a plain connection in TLS (implicit TLS right after connect, or after the
    /// server agreed to STARTTLS/STLS). `ca`: the account's `tls_ca`, trusted instead of the
    /// system's trust store.
    pub async fn into_tls(self, host: &str, ca: Option<&Path>) -> io::Result<ClientStream> {
        let ClientStream::Plain(tcp) = self else {
            return Ok(self);
        };
        crate::smtp::tls::install_provider();
        let config = match ca {
            Some(path) => ClientConfig::builder().with_root_certificates(load_ca(path)?).with_no_client_auth(),
            None => ClientConfig::with_platform_verifier().map_err(io::Error::other)?,
        };
        let name =
            ServerName::try_from(host.to_string()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, TlsConnector::from(Arc::new(config)).connect(name, tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
            .map_err(|e| handshake_error(e, host, ca))?;
        Ok(ClientStream::Tls(Box::new(tls)))
    }
}

/// The CA certificates of a `tls_ca` PEM file (at least one).
pub fn load_ca(path: &Path) -> io::Result<RootCertStore> {
    let bad =
        |message: String| io::Error::new(io::ErrorKind::InvalidData, format!("tls_ca {}: {message}", path.display()));
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
        roots.add(cert.map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
    Ok(roots)
}

/// A failed handshake, with what to do about a certificate that is not trusted.
fn handshake_error(error: io::Error, host: &str, ca: Option<&Path>) -> io::Error {
    use rustls::CertificateError as E;
    let cert_error = match error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(e)) => Some(e),
        _ => None,
    };
    // A wrong name or date is said by the error itself; anything else means "no trusted chain".
    let untrusted = cert_error.is_some_and(|e| {
        !matches!(
            e,
            E::NotValidForName
                | E::NotValidForNameContext { .. }
                | E::Expired
                | E::ExpiredContext { .. }
                | E::NotValidYet
                | E::NotValidYetContext { .. }
        )
    });
    // webpki's CaUsedAsEndEntity reaches us only as rustls's `Other` error.
    let ca_as_server = cert_error.is_some_and(|e| format!("{e:?}").contains("CaUsedAsEndEntity"));
    let hint = match (untrusted, ca) {
        _ if ca_as_server => " (the server presents a CA certificate as its own, as `openssl req -x509` makes \
            them: issue the server a certificate from a CA and trust that CA with tls_ca)"
            .into(),
        (false, _) => String::new(),
        (true, None) => {
            " (the server's certificate is not trusted by the system's trust store; for a private CA set tls_ca)".into()
        }
        (true, Some(ca)) => format!(" (the server's certificate does not chain to tls_ca {})", ca.display()),
    };
    io::Error::new(error.kind(), format!("TLS handshake with {host} failed: {error}{hint}"))
}

impl AsyncRead for ClientStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
