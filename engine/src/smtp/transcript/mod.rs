//! Transcript tests: a [`Session`] driven over an in-memory pipe, with `C:` (client) and `S:`
//! (server) lines, no sockets and no daemon.
//!
//! Each test builds a [`Harness`]: a config, a scripts folder, a real spool in a temporary
//! folder, optionally a TLS certificate, and the `Shared` state a listener would give its
//! sessions. [`Harness::connect`] starts a session on one end of a `tokio::io::duplex` pipe and
//! returns the client end. Timeouts are tested with tokio's paused time; everything else runs
//! in real time (the spool's writer thread and script threads do not advance a paused clock).
//! The pytest suites keep what needs real clients: swaks, smtplib, openssl, kill -9.

mod auth_tls;
mod commands;
mod policy;
mod transaction;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch, Semaphore};

use super::listener::Shared;
use super::session::Session;
use crate::script::ScriptHost;
use crate::spool::{Segment, Spool, SpooledMessage};

/// The address every test client connects from.
pub const CLIENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
/// The one account of harnesses made with [`Options::auth`]: user `me`, this password.
pub const PASSWORD: &str = "s3cret";

/// What a harness is made of besides the defaults.
#[derive(Default)]
pub struct Options {
    /// Lines added to `[smtp]`.
    pub smtp: &'static str,
    /// Script files: (name, source).
    pub scripts: Vec<(&'static str, &'static str)>,
    /// A certificate, so STARTTLS is offered.
    pub tls: bool,
    /// The account `me` with [`PASSWORD`].
    pub auth: bool,
}

pub struct Harness {
    _dir: tempfile::TempDir,
    pub shared: Arc<Shared>,
    accepted: mpsc::Receiver<Segment>,
    shutdown: watch::Sender<bool>,
    /// The certificate clients trust, when the harness has TLS.
    cert: Option<rustls_pki_types::CertificateDer<'static>>,
}

impl Harness {
    pub fn new(options: Options) -> Harness {
        crate::smtp::tls::install_provider();
        let dir = tempfile::tempdir().expect("temp dir");
        let scripts = dir.path().join("scripts");
        std::fs::create_dir_all(&scripts).expect("scripts dir");
        for (name, source) in &options.scripts {
            std::fs::write(scripts.join(name), source).expect("script file");
        }
        let users = if options.auth {
            format!("auth_users = {{ me = \"{}\" }}\n", cheap_hash(PASSWORD))
        } else {
            String::new()
        };
        let text = format!(
            "[smtp]\nhostname = \"mx.test\"\nlocal_domains = [\"example.test\"]\n{users}{}\n\
             [scripts]\ndir = \"{}\"\n[state]\ndir = \"{}\"\n",
            options.smtp,
            scripts.display(),
            dir.path().join("state").display(),
        );
        let config = crate::config::load_str(&text, "test.toml").expect("test config");
        let host = ScriptHost::load(config.scripts.clone(), None).unwrap_or_else(|e| panic!("scripts: {e:?}"));
        let (deliver, accepted) = mpsc::channel(64);
        let (spool, _) = Spool::open(&config.spool_dir(), deliver).expect("spool");
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (tls, cert) = if options.tls { test_tls() } else { (None, None) };
        let shared = Arc::new(Shared {
            connections: Arc::new(Semaphore::new(config.smtp.max_connections)),
            config: ArcSwap::new(Arc::new(config)),
            scripts: Arc::new(host),
            spool,
            shutdown: shutdown_rx,
            tls: ArcSwapOption::new(tls),
            auth_failures: Default::default(),
            srs: None,
            verifier: None,
        });
        Harness { _dir: dir, shared, accepted, shutdown, cert }
    }

    /// A plain harness: no scripts, no TLS, no accounts.
    pub fn plain() -> Harness {
        Harness::new(Options::default())
    }

    /// A new connection; the session runs on a task of its own.
    pub fn connect(&self) -> Client {
        let (client, server) = tokio::io::duplex(256 * 1024);
        let session = Session::new(server, self.shared.clone(), CLIENT_IP, "TESTSESSION".into(), None);
        let task = tokio::spawn(session.run());
        Client { io: BufReader::new(Box::new(client)), wait: Duration::from_secs(20), cert: self.cert.clone(), task }
    }

    /// The messages the spool handed to delivery so far (waits for at least one).
    pub async fn accepted(&mut self) -> Vec<SpooledMessage> {
        let first = tokio::time::timeout(Duration::from_secs(10), self.accepted.recv()).await;
        let mut out: Vec<SpooledMessage> = first.ok().flatten().map(|s| s.messages).unwrap_or_default();
        while let Ok(segment) = self.accepted.try_recv() {
            out.extend(segment.messages);
        }
        out
    }

    /// Whether nothing was handed to delivery.
    pub fn nothing_accepted(&mut self) -> bool {
        self.accepted.try_recv().is_err()
    }

    /// SIGTERM, as the daemon passes it to sessions.
    pub fn shut_down(&self) {
        let _ = self.shutdown.send(true);
    }
}

/// Anything a client talks over: the pipe, or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The client end of a session.
pub struct Client {
    io: BufReader<Box<dyn Io>>,
    /// How long a reply may take. Paused-time tests set it past the session's own timeouts.
    pub wait: Duration,
    cert: Option<rustls_pki_types::CertificateDer<'static>>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    /// Plays a transcript: `C: line` is sent with CRLF, `S: line` must be the next line
    /// received (`*` matches any run of characters). Blank lines are skipped.
    pub async fn play(&mut self, transcript: &str) {
        for (n, line) in transcript.lines().map(str::trim).enumerate() {
            if let Some(sent) = line.strip_prefix("C:") {
                let sent = sent.strip_prefix(' ').unwrap_or(sent);
                self.send(format!("{sent}\r\n").as_bytes()).await;
            } else if let Some(expected) = line.strip_prefix("S:") {
                let expected = expected.trim_start();
                let got = self.line().await;
                assert!(
                    matches(got.trim_end(), expected),
                    "transcript line {}: expected S: {expected}\n got S: {got}",
                    n + 1
                );
            } else {
                assert!(line.is_empty(), "transcript line {}: neither C: nor S: {line:?}", n + 1);
            }
        }
    }

    /// Sends bytes as they are.
    pub async fn send(&mut self, bytes: &[u8]) {
        let io = self.io.get_mut();
        io.write_all(bytes).await.expect("write to the session");
        io.flush().await.expect("flush to the session");
    }

    /// The next line from the server, without its CRLF; `"<closed>"` at end of stream.
    pub async fn line(&mut self) -> String {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(self.wait, self.io.read_until(b'\n', &mut buf)).await;
        match read {
            Err(_) => panic!("no reply within {:?} (got so far: {:?})", self.wait, String::from_utf8_lossy(&buf)),
            Ok(Err(e)) => panic!("read error: {e}"),
            Ok(Ok(0)) => "<closed>".into(),
            Ok(Ok(_)) => String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']).to_string(),
        }
    }

    /// The connection is closed by the server: nothing more arrives.
    pub async fn closed(&mut self) {
        assert_eq!(self.line().await, "<closed>");
    }

    /// TLS over the same pipe, trusting the harness's certificate (after `220 Ready`).
    pub async fn start_tls(&mut self) {
        assert!(self.io.buffer().is_empty(), "server sent more than the 220 before the handshake");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone().expect("harness without TLS")).expect("test root");
        let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from("mx.test").expect("name");
        let plain = std::mem::replace(&mut self.io, BufReader::new(Box::new(tokio::io::duplex(1).0)));
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, plain.into_inner())
            .await
            .expect("TLS handshake with the session");
        self.io = BufReader::new(Box::new(tls));
    }

    /// Waits for the session task to end (after QUIT, a 421 or a closed handshake).
    pub async fn session_ended(self) {
        drop(self.io);
        tokio::time::timeout(self.wait, self.task).await.expect("session still running").expect("session panicked");
    }
}

/// Whether `text` matches `pattern`, where `*` stands for any run of characters.
fn matches(text: &str, pattern: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let mut parts: Vec<&str> = parts.collect();
    let Some(last) = parts.pop() else { return rest.is_empty() };
    for part in parts {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// An argon2id hash that is quick to check in a debug build.
fn cheap_hash(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(64, 1, 1, None).expect("params");
    let argon2 = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = SaltString::encode_b64(b"transcript-salt").expect("salt");
    argon2.hash_password(password.as_bytes(), &salt).expect("hash").to_string()
}

/// A self-signed certificate for `mx.test` and the server configuration that uses it.
fn test_tls() -> (Option<Arc<rustls::ServerConfig>>, Option<rustls_pki_types::CertificateDer<'static>>) {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["mx.test".into()]).expect("params").self_signed(&key).expect("cert");
    let der = cert.der().clone();
    let key = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
    let config =
        rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(vec![der.clone()], key).expect("config");
    (Some(Arc::new(config)), Some(der))
}

/// The AUTH PLAIN initial response for `user`/`password`.
pub fn plain_response(authzid: &str, user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{authzid}\0{user}\0{password}"))
}

/// Base64 of a text (AUTH LOGIN).
pub fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}
