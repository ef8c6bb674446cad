//! `mailflow oauth2 authorize`: gets a refresh token with the user's consent, by the device
//! code flow (RFC 8628: a URL and a code to enter on any device; Microsoft) when the account
//! has a `device_url`, else by a loopback redirect (RFC 8252 with PKCE, RFC 7636: a URL
//! opened in a browser on this machine, which comes back to a one-shot listener on
//! 127.0.0.1; Google).
//!
//! Output: the tokens to store; what the user must do is written to `say`.
//! Limits: the wait for consent ends when the device code expires (at most 15 minutes) or
//! after 10 minutes for the loopback; the redirect request is read up to 8 KB.
//! Security: the loopback listener accepts one request, checks the `state` it sent and binds
//! to 127.0.0.1 only; the PKCE verifier never leaves this process before the code exchange.

use std::time::Duration;

use base64::Engine as _;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::endpoint::{post_form_async, DeviceAnswer, EndpointError, TokenAnswer};
use super::source::{client_secret, stored};
use super::store::Stored;
use crate::config::OAuth2Config;

/// Longest wait for the user in the loopback flow.
const LOOPBACK_WAIT: Duration = Duration::from_secs(600);
/// Longest wait for a device code when the server names no expiry.
const DEVICE_WAIT: Duration = Duration::from_secs(900);
/// Largest redirect request read.
const MAX_REQUEST: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum AuthorizeError {
    #[error("{0}")]
    Endpoint(#[from] EndpointError),
    #[error("the account has neither a device_url nor an auth_url in [accounts.oauth2]")]
    NoFlow,
    #[error("consent was not given: {0}")]
    Denied(String),
    #[error("timed out waiting for consent")]
    TimedOut,
    #[error("the token endpoint gave no refresh token (ask for offline access: scope \"offline_access\" for Microsoft, access_type=offline for Google)")]
    NoRefreshToken,
    #[error("{0}")]
    Other(String),
}

/// Runs the flow the account's `[accounts.oauth2]` allows.
pub async fn authorize(config: &OAuth2Config, say: &mut dyn FnMut(&str)) -> Result<Stored, AuthorizeError> {
    let secret = client_secret(config).await.map_err(AuthorizeError::Other)?;
    if !config.device_url.is_empty() {
        device_flow(config, secret, say).await
    } else if !config.auth_url.is_empty() {
        loopback_flow(config, secret, say).await
    } else {
        Err(AuthorizeError::NoFlow)
    }
}

fn with_client(
    config: &OAuth2Config,
    secret: &Option<String>,
    mut form: Vec<(&'static str, String)>,
) -> Vec<(&'static str, String)> {
    form.push(("client_id", config.client_id.clone()));
    if let Some(secret) = secret {
        form.push(("client_secret", secret.clone()));
    }
    form
}

fn finish(answer: TokenAnswer) -> Result<Stored, AuthorizeError> {
    if answer.refresh_token.as_deref().unwrap_or("").is_empty() {
        return Err(AuthorizeError::NoRefreshToken);
    }
    Ok(stored(answer, ""))
}

async fn device_flow(
    config: &OAuth2Config,
    secret: Option<String>,
    say: &mut dyn FnMut(&str),
) -> Result<Stored, AuthorizeError> {
    let mut form = vec![("client_id", config.client_id.clone())];
    if !config.scope.is_empty() {
        form.push(("scope", config.scope.clone()));
    }
    let device: DeviceAnswer = post_form_async(&config.device_url, form).await?;
    say(&format!("To authorize mailflow, open {} and enter the code {}", device.verification_uri, device.user_code));
    if let Some(complete) = &device.verification_uri_complete {
        say(&format!("(or open {complete})"));
    }
    say("Waiting for your consent…");
    let deadline =
        tokio::time::Instant::now() + device.expires_in.map_or(DEVICE_WAIT, Duration::from_secs).min(DEVICE_WAIT);
    let mut interval = Duration::from_secs(device.interval.unwrap_or(5).clamp(1, 60));
    loop {
        tokio::time::sleep(interval).await;
        if tokio::time::Instant::now() > deadline {
            return Err(AuthorizeError::TimedOut);
        }
        let form = with_client(
            config,
            &secret,
            vec![
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code".to_string()),
                ("device_code", device.device_code.clone()),
            ],
        );
        match post_form_async::<TokenAnswer>(&config.token_url, form).await {
            Ok(answer) => return finish(answer),
            Err(e) => match e.code() {
                Some("authorization_pending") => {}
                // RFC 8628 §3.5: wait 5 s longer from now on.
                Some("slow_down") => interval += Duration::from_secs(5),
                Some("access_denied") => return Err(AuthorizeError::Denied(e.to_string())),
                Some("expired_token") => return Err(AuthorizeError::TimedOut),
                Some(_) => return Err(e.into()),
                // A passing network failure: keep polling until the code expires.
                None => tracing::warn!(error = %e, "polling the token endpoint failed; trying again"),
            },
        }
    }
}

async fn loopback_flow(
    config: &OAuth2Config,
    secret: Option<String>,
    say: &mut dyn FnMut(&str),
) -> Result<Stored, AuthorizeError> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| AuthorizeError::Other(format!("cannot listen on 127.0.0.1: {e}")))?;
    let port = listener.local_addr().map_err(|e| AuthorizeError::Other(e.to_string()))?.port();
    let redirect = format!("http://127.0.0.1:{port}/");
    let state = random_token(24);
    let verifier = random_token(48);
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()));
    let mut url = url::Url::parse(&config.auth_url).map_err(|e| AuthorizeError::Other(format!("auth_url: {e}")))?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &config.client_id)
        .append_pair("redirect_uri", &redirect)
        .append_pair("scope", &config.scope)
        .append_pair("state", &state)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        // Google gives a refresh token only with these two.
        .append_pair("access_type", "offline")
        .append_pair("prompt", "consent");
    say(&format!("To authorize mailflow, open this URL in a browser on this machine:\n{url}"));
    say("Waiting for your consent…");
    let code = tokio::time::timeout(LOOPBACK_WAIT, redirected_code(&listener, &state))
        .await
        .map_err(|_| AuthorizeError::TimedOut)??;
    let form = with_client(
        config,
        &secret,
        vec![
            ("grant_type", "authorization_code".to_string()),
            ("code", code),
            ("redirect_uri", redirect),
            ("code_verifier", verifier),
        ],
    );
    finish(post_form_async(&config.token_url, form).await?)
}

/// Waits for the browser's redirect carrying `state`; answers it with a short page.
async fn redirected_code(listener: &tokio::net::TcpListener, state: &str) -> Result<String, AuthorizeError> {
    loop {
        let (mut socket, _) = listener.accept().await.map_err(|e| AuthorizeError::Other(e.to_string()))?;
        let mut buf = vec![0u8; MAX_REQUEST];
        let mut len = 0;
        while len < buf.len() && !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            match tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buf[len..])).await {
                Ok(Ok(n)) if n > 0 => len += n,
                _ => break,
            }
        }
        let request = String::from_utf8_lossy(&buf[..len]);
        let target = request.lines().next().and_then(|l| l.split(' ').nth(1)).unwrap_or("");
        let query = url::Url::parse(&format!("http://127.0.0.1{target}")).ok();
        let param = |name: &str| {
            query.as_ref().and_then(|u| u.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned()))
        };
        if param("state").as_deref() != Some(state) {
            // A favicon request or a stray visitor: not the redirect.
            let _ = socket.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
            continue;
        }
        let (page, result) = match (param("code"), param("error")) {
            (Some(code), _) => ("mailflow is authorized. You can close this window.", Ok(code)),
            (None, error) => {
                ("mailflow was not authorized.", Err(AuthorizeError::Denied(error.unwrap_or_else(|| "no code".into()))))
            }
        };
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
            page.len()
        );
        let _ = socket.write_all(reply.as_bytes()).await;
        return result;
    }
}

/// `len` characters of the RFC 7636 unreserved alphabet.
fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~";
    let mut rng = rand::rng();
    (0..len).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}
