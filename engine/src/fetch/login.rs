//! How a poller logs in: the secret (a password, or an OAuth2 access token from
//! `password_command` or the built-in refresh flow) and the IMAP login with it (LOGIN, or
//! AUTHENTICATE XOAUTH2/OAUTHBEARER); POP3's `AUTH` is in `pop3.rs`.
//!
//! A refused OAuth2 login is retried once at once with a refreshed token (the token may have
//! been revoked or have expired early); a refresh token that is itself refused stops the
//! account — logged as an error that says what to run — until `mailflow oauth2 authorize`
//! brings a new one, instead of reconnecting in a loop.
//!
//! Security: secrets are never logged; `password_command` runs with `sh -c` as the user
//! configured it.

use std::sync::Arc;
use std::time::Duration;

use async_imap::Client;
use tokio::sync::watch;

use super::imap::{timed, ImapError, ImapSession, ImapStream, COMMAND_TIMEOUT};
use super::FetchDeps;
use crate::config::{AccountConfig, AuthMethod};
use crate::oauth2::source::first_line_of;
use crate::oauth2::{Sasl, TokenSource};

/// How often a stopped account looks for a new authorization.
const AUTHORIZATION_CHECK: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// Asked to stop while the account waited for a new authorization.
    #[error("stopped")]
    Stopped,
    #[error("{0}")]
    Failed(String),
}

/// The secrets of one poller task.
pub struct Credentials {
    tokens: Option<Arc<TokenSource>>,
    /// The access token the server just refused: the next one is refreshed.
    refused: Option<String>,
    /// A refused login was already retried with a fresh token: the next refusal waits.
    retried: bool,
}

impl Credentials {
    pub fn new(deps: &FetchDeps, account: &AccountConfig) -> Credentials {
        // The journal folder is `[state] dir/fetch-journal`; hand-over files live beside it.
        let state_dir = deps.journal_dir.parent().unwrap_or(&deps.journal_dir);
        let tokens = account.oauth2.as_ref().map(|o| TokenSource::shared(&account.name, o, &deps.store, state_dir));
        Credentials { tokens, refused: None, retried: false }
    }

    /// The password or access token for the next login. When only a person can help (no
    /// refresh token, or a revoked one), logs why and waits for `mailflow oauth2 authorize`.
    pub async fn next(
        &mut self,
        account: &AccountConfig,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<String, CredentialError> {
        let Some(tokens) = self.tokens.clone() else {
            return password(account).await.map_err(CredentialError::Failed);
        };
        loop {
            match tokens.access_token(self.refused.take().as_deref()).await {
                Ok(token) => return Ok(token),
                Err(e) if e.needs_authorization() => {
                    tracing::error!(error = %e, "account stopped until it is authorized again");
                    if !tokens.wait_for_authorization(AUTHORIZATION_CHECK, stop).await {
                        return Err(CredentialError::Stopped);
                    }
                    tracing::info!("new OAuth2 authorization found; resuming");
                }
                Err(e) => return Err(CredentialError::Failed(e.to_string())),
            }
        }
    }

    /// After a login refused with `secret`: true when it should be retried at once (an
    /// OAuth2 token that a refresh may replace, not retried yet).
    pub fn login_refused(&mut self, secret: &str) -> bool {
        if self.tokens.is_none() || self.retried {
            self.retried = false;
            return false;
        }
        self.retried = true;
        self.refused = Some(secret.to_string());
        true
    }

    /// A login went through.
    pub fn login_accepted(&mut self) {
        self.retried = false;
    }
}

/// The account's password: `password`, or the first line of `password_command`'s output
/// (run with `sh -c`, like fetchmail's and mbsync's `PassCmd`). With `auth = "xoauth2"` or
/// `"oauthbearer"` it is the access token.
pub async fn password(account: &AccountConfig) -> Result<String, String> {
    if let Some(password) = &account.password {
        return Ok(password.clone());
    }
    match &account.password_command {
        Some(command) => first_line_of(command, "password_command").await,
        None => Err("no password or password_command".into()),
    }
}

/// LOGIN, or AUTHENTICATE with the account's OAuth2 mechanism, on a greeted connection.
pub(super) async fn imap(
    client: Client<ImapStream>,
    account: &AccountConfig,
    port: u16,
    secret: &str,
) -> Result<ImapSession, ImapError> {
    let mechanism = account.auth_method();
    if mechanism == AuthMethod::Password {
        return Ok(
            timed(COMMAND_TIMEOUT, async { client.login(&account.username, secret).await.map_err(|(e, _)| e) }).await?
        );
    }
    let mut sasl = Sasl::new(mechanism, &account.username, secret, &account.host, port);
    let name = sasl.mechanism();
    let result = timed(COMMAND_TIMEOUT, async { client.authenticate(name, &mut sasl).await.map_err(|(e, _)| e) }).await;
    match result {
        Ok(session) => Ok(session),
        Err(async_imap::error::Error::No(text)) | Err(async_imap::error::Error::Bad(text)) => {
            let detail = sasl.error.map(|e| format!(" ({e})")).unwrap_or_default();
            Err(ImapError::LoginRefused(format!("AUTHENTICATE {name}: {}{detail}", text.trim())))
        }
        Err(e) => Err(e.into()),
    }
}
