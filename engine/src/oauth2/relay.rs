//! The outbound relay's OAuth2 login (`[outbound] relay_account`): SMTP `AUTH XOAUTH2` with
//! the access token of one `[[accounts]]` entry — the same Google or Microsoft grant that
//! reads the mailbox sends through `smtp.gmail.com` or `smtp.office365.com`.
//!
//! Input: the account (its `[accounts.oauth2]` refresh flow, shared with its pollers, or its
//! `password_command`); output: a user name and a current token per new relay connection. A
//! token the relay refused is refreshed for the next connection.
//!
//! Security: the token is never logged.

use std::path::Path;
use std::sync::{Arc, Mutex};

use super::source::first_line_of;
use super::TokenSource;
use crate::config::{AccountConfig, Config};

/// How the relay connection logs in.
pub struct RelayLogin {
    pub user: String,
    tokens: Option<Arc<TokenSource>>,
    account: AccountConfig,
    /// The token the relay last refused: the next one is refreshed.
    refused: Mutex<Option<String>>,
}

impl RelayLogin {
    /// The login `[outbound] relay_account` names, if any (the config check made sure the
    /// account exists and uses OAuth2).
    pub fn from_config(config: &Config, store: &Arc<redb::Database>) -> Option<Arc<RelayLogin>> {
        let name = config.outbound.relay_account.as_str();
        let account = config.accounts.iter().find(|a| !name.is_empty() && a.name == name)?;
        let tokens =
            account.oauth2.as_ref().map(|o| TokenSource::shared(&account.name, o, store, Path::new(&config.state.dir)));
        let user = if config.outbound.relay_user.is_empty() {
            account.username.clone()
        } else {
            config.outbound.relay_user.clone()
        };
        Some(Arc::new(RelayLogin { user, tokens, account: account.clone(), refused: Mutex::new(None) }))
    }

    /// A current access token.
    pub async fn token(&self) -> Result<String, String> {
        let refused = self.refused.lock().unwrap_or_else(|e| e.into_inner()).take();
        match &self.tokens {
            Some(tokens) => tokens.access_token(refused.as_deref()).await.map_err(|e| e.to_string()),
            None => match (&self.account.password, &self.account.password_command) {
                (Some(token), _) => Ok(token.clone()),
                (None, Some(command)) => first_line_of(command, "password_command").await,
                (None, None) => Err(format!("account {:?} has no token source", self.account.name)),
            },
        }
    }

    /// The relay refused `token`: the next connection asks for a fresh one.
    pub fn refused(&self, token: &str) {
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(token.to_string());
    }
}
