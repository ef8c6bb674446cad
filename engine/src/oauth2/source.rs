//! Access tokens of one account from the built-in refresh flow: cached, refreshed before they
//! expire and after the server refused one, one refresh at a time per account (the pollers of
//! every mailbox and the relay share one [`TokenSource`] through [`TokenSource::shared`]).
//!
//! Input: `[accounts.oauth2]` and the refresh token in the state store; output: an access
//! token, or a [`TokenError`] that says whether waiting helps (`Unavailable`) or a person must
//! run `mailflow oauth2 authorize` (`NotAuthorized`, `Revoked`).
//!
//! Security: tokens and the client secret are never logged.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::endpoint::{post_form_async, EndpointError, TokenAnswer};
use super::store::{self, Stored};
use crate::config::OAuth2Config;

/// A token is refreshed this long before it expires (less for short-lived tokens: half their
/// lifetime).
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("account {0:?} has no OAuth2 refresh token: run `mailflow oauth2 authorize --account {0}`")]
    NotAuthorized(String),
    #[error("account {account:?}: the refresh token was refused ({reason}); it was revoked or expired: run `mailflow oauth2 authorize --account {account}`")]
    Revoked { account: String, reason: String },
    /// The endpoint refused the client itself (`invalid_client`, `unauthorized_client`…): the
    /// `[accounts.oauth2]` settings are wrong.
    #[error("account {account:?}: the token endpoint refused the request ({reason}): check client_id, client_secret and token_url in [accounts.oauth2]")]
    ClientRefused { account: String, reason: String },
    #[error("account {account:?}: getting an access token failed: {reason}")]
    Unavailable { account: String, reason: String },
}

impl TokenError {
    /// Only a person can fix it: the account stops until it is authorized again.
    pub fn needs_authorization(&self) -> bool {
        !matches!(self, TokenError::Unavailable { .. })
    }
}

/// The access tokens of one account.
pub struct TokenSource {
    account: String,
    config: OAuth2Config,
    store: Arc<redb::Database>,
    state_dir: PathBuf,
    /// Held during a refresh: a second caller waits, then finds the fresh token.
    current: tokio::sync::Mutex<Option<Stored>>,
}

type Registry = Mutex<HashMap<String, Weak<TokenSource>>>;

fn registry() -> &'static Registry {
    static REGISTRY: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

impl TokenSource {
    pub fn new(account: &str, config: OAuth2Config, store: Arc<redb::Database>, state_dir: PathBuf) -> TokenSource {
        TokenSource { account: account.to_string(), config, store, state_dir, current: tokio::sync::Mutex::new(None) }
    }

    /// The source of `account` that is alive in this process, or a new one: every user of an
    /// account shares one, so refreshes (and rotated refresh tokens) never race. A changed
    /// `[accounts.oauth2]` gets a new source.
    pub fn shared(
        account: &str,
        config: &OAuth2Config,
        store: &Arc<redb::Database>,
        state_dir: &std::path::Path,
    ) -> Arc<TokenSource> {
        let mut map = registry().lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, weak| weak.strong_count() > 0);
        if let Some(source) = map.get(account).and_then(Weak::upgrade) {
            if source.config == *config && Arc::ptr_eq(&source.store, store) {
                return source;
            }
        }
        let source = Arc::new(TokenSource::new(account, config.clone(), store.clone(), state_dir.to_path_buf()));
        map.insert(account.to_string(), Arc::downgrade(&source));
        source
    }

    pub fn account(&self) -> &str {
        &self.account
    }

    /// A valid access token. `refused`: the token the server just refused, which is then
    /// refreshed — unless another task already did, whose fresh token is returned.
    pub async fn access_token(&self, refused: Option<&str>) -> Result<String, TokenError> {
        let mut current = self.current.lock().await;
        if current.is_none() {
            *current = self.load()?;
        }
        let now = super::unix_now();
        if let Some(tokens) = current.as_ref() {
            let fresh = !tokens.access_token.is_empty() && tokens.expires_at > now;
            if fresh && refused != Some(tokens.access_token.as_str()) {
                return Ok(tokens.access_token.clone());
            }
        }
        let refresh_token = match current.as_ref() {
            Some(tokens) if !tokens.refresh_token.is_empty() => tokens.refresh_token.clone(),
            _ => return Err(TokenError::NotAuthorized(self.account.clone())),
        };
        match self.refresh(&refresh_token).await {
            Ok(tokens) => {
                let token = tokens.access_token.clone();
                if let Err(e) = store::save(&self.store, &self.account, &tokens) {
                    tracing::warn!(account = %self.account, error = %e, "cannot keep the new OAuth2 tokens");
                }
                *current = Some(tokens);
                Ok(token)
            }
            Err(EndpointError::Refused { code, description, .. }) if code == "invalid_grant" => {
                // Asking again with the same token cannot succeed: forget it, so a restart does
                // not ask either, until `oauth2 authorize` brings a new one.
                let _ = store::remove(&self.store, &self.account);
                *current = None;
                let reason = if description.is_empty() { code } else { format!("{code}: {description}") };
                Err(TokenError::Revoked { account: self.account.clone(), reason })
            }
            Err(e @ EndpointError::Refused { .. }) => {
                // A person must fix the configuration, but the refresh token may still be good.
                Err(TokenError::ClientRefused { account: self.account.clone(), reason: e.to_string() })
            }
            Err(e) => Err(TokenError::Unavailable { account: self.account.clone(), reason: e.to_string() }),
        }
    }

    /// Waits until a new refresh token arrives (the hand-over file of `mailflow oauth2
    /// authorize`); checks every `every`. False when `stop` fired first.
    pub async fn wait_for_authorization(&self, every: Duration, stop: &mut tokio::sync::watch::Receiver<bool>) -> bool {
        let path = store::handover_path(&self.state_dir, &self.account);
        loop {
            if *stop.borrow() {
                return false;
            }
            if path.exists() {
                *self.current.lock().await = None;
                return true;
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return false,
            }
        }
    }

    fn load(&self) -> Result<Option<Stored>, TokenError> {
        let unavailable =
            |e: store::StoreError| TokenError::Unavailable { account: self.account.clone(), reason: e.to_string() };
        store::import_handover(&self.store, &self.state_dir, &self.account).map_err(unavailable)?;
        store::load(&self.store, &self.account).map_err(unavailable)
    }

    async fn refresh(&self, refresh_token: &str) -> Result<Stored, EndpointError> {
        let mut form = vec![
            ("grant_type", "refresh_token".to_string()),
            ("refresh_token", refresh_token.to_string()),
            ("client_id", self.config.client_id.clone()),
        ];
        if let Some(secret) = client_secret(&self.config)
            .await
            .map_err(|message| EndpointError::Unreachable { url: "client_secret_command".into(), message })?
        {
            form.push(("client_secret", secret));
        }
        let answer: TokenAnswer = post_form_async(&self.config.token_url, form).await?;
        tracing::info!(account = %self.account, expires_in = ?answer.expires_in, "OAuth2 access token refreshed");
        Ok(stored(answer, refresh_token))
    }
}

/// What to keep of a token answer: a rotated refresh token replaces the old one; the expiry
/// is moved earlier by the refresh margin.
pub fn stored(answer: TokenAnswer, old_refresh: &str) -> Stored {
    let lifetime = answer.expires_in.unwrap_or(3600);
    let margin = REFRESH_MARGIN.as_secs().min(lifetime / 2);
    Stored {
        refresh_token: answer.refresh_token.filter(|r| !r.is_empty()).unwrap_or_else(|| old_refresh.to_string()),
        access_token: answer.access_token,
        expires_at: super::unix_now() + lifetime - margin,
    }
}

/// `client_secret`, or the first line `client_secret_command` prints.
pub async fn client_secret(config: &OAuth2Config) -> Result<Option<String>, String> {
    if let Some(secret) = &config.client_secret {
        return Ok(Some(secret.clone()));
    }
    match &config.client_secret_command {
        Some(command) => first_line_of(command, "client_secret_command").await.map(Some),
        None => Ok(None),
    }
}

/// The first output line of `sh -c command` (30 s at most), as fetchmail's and mbsync's
/// `PassCmd` do; `what` names the setting in errors.
pub async fn first_line_of(command: &str, what: &str) -> Result<String, String> {
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("sh").arg("-c").arg(command).kill_on_drop(true).output(),
    )
    .await
    .map_err(|_| format!("{what} timed out"))?
    .map_err(|e| format!("{what}: {e}"))?;
    if !output.status.success() {
        return Err(format!("{what} exited with {}", output.status));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text.lines().next().unwrap_or("").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_lived_tokens_are_refreshed_at_half_their_life() {
        let now = crate::oauth2::unix_now();
        let answer = |expires_in, refresh: Option<&str>| TokenAnswer {
            access_token: "a".into(),
            expires_in: Some(expires_in),
            refresh_token: refresh.map(str::to_string),
        };
        let long = stored(answer(3600, None), "old");
        assert!((now + 3540..=now + 3541).contains(&long.expires_at));
        assert_eq!(long.refresh_token, "old");
        let short = stored(answer(10, Some("rotated")), "old");
        assert!((now + 5..=now + 6).contains(&short.expires_at));
        assert_eq!(short.refresh_token, "rotated");
    }

    #[tokio::test]
    async fn no_refresh_token_means_not_authorized() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::state::in_memory().unwrap();
        let config =
            OAuth2Config { token_url: "http://127.0.0.1:9/token".into(), client_id: "c".into(), ..Default::default() };
        let source = TokenSource::shared("acct", &config, &store, dir.path());
        let again = TokenSource::shared("acct", &config, &store, dir.path());
        assert!(Arc::ptr_eq(&source, &again));
        let error = source.access_token(None).await.unwrap_err();
        assert!(error.needs_authorization(), "{error}");
        assert!(error.to_string().contains("mailflow oauth2 authorize --account acct"), "{error}");
        // A cached, unexpired token is served without asking the (unreachable) endpoint.
        let tokens = Stored {
            refresh_token: "r".into(),
            access_token: "tok".into(),
            expires_at: crate::oauth2::unix_now() + 100,
        };
        store::write_handover(dir.path(), "acct", &tokens).unwrap();
        assert_eq!(source.access_token(None).await.unwrap(), "tok");
        // Refused: a refresh is tried, and the unreachable endpoint is a passing failure.
        let error = source.access_token(Some("tok")).await.unwrap_err();
        assert!(!error.needs_authorization(), "{error}");
    }
}
