//! How an `[[accounts]]` entry logs in: `auth` (password, XOAUTH2, OAUTHBEARER), `provider`
//! presets (Gmail, Microsoft 365/Outlook.com, Fastmail, iCloud) and the `[accounts.oauth2]`
//! table of the built-in refresh-token flow (docs/accounts.md).
//!
//! Input: the parsed account; output: the same account with the preset's host, port, TLS,
//! auth method, OAuth2 endpoints and folder names filled where the file left them unset, and
//! the checks that tie `auth`, `password(_command)` and `[accounts.oauth2]` together.
//!
//! Security: no secret is printed by any message here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{AccountConfig, AccountProtocol, AccountTls};

/// `auth`: how an account proves who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// LOGIN/USER+PASS (APOP where offered) with the password.
    #[default]
    Password,
    /// SASL XOAUTH2 (Google, Microsoft) with an OAuth2 access token.
    Xoauth2,
    /// SASL OAUTHBEARER (RFC 7628) with an OAuth2 access token.
    Oauthbearer,
}

impl AuthMethod {
    /// The SASL mechanism name.
    pub fn mechanism(self) -> &'static str {
        match self {
            AuthMethod::Password => "PLAIN",
            AuthMethod::Xoauth2 => "XOAUTH2",
            AuthMethod::Oauthbearer => "OAUTHBEARER",
        }
    }

    pub fn is_oauth(self) -> bool {
        self != AuthMethod::Password
    }
}

/// `provider`: a mail service whose settings are filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Gmail,
    Outlook,
    Fastmail,
    Icloud,
}

/// `[accounts.oauth2]`: where access tokens come from when no `password_command` gives them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OAuth2Config {
    /// Token endpoint (refresh-token, device-code and authorization-code grants).
    pub token_url: String,
    pub client_id: String,
    /// For "confidential" clients (Google's desktop apps have one too); empty for public ones.
    pub client_secret: Option<String>,
    /// A command whose first output line is the client secret (run with `sh -c`).
    pub client_secret_command: Option<String>,
    /// Space-separated scopes asked for by `mailflow oauth2 authorize`.
    pub scope: String,
    /// Device authorization endpoint (RFC 8628): `authorize` uses the device-code flow.
    pub device_url: String,
    /// Authorization endpoint: `authorize` uses a loopback redirect (RFC 8252) when there is no
    /// `device_url`.
    pub auth_url: String,
}

/// What a provider fills in.
struct Preset {
    imap_host: &'static str,
    pop3_host: Option<&'static str>,
    /// Password-less: an account of this provider logs in with XOAUTH2.
    oauth_only: bool,
    token_url: &'static str,
    device_url: &'static str,
    auth_url: &'static str,
    scope: &'static str,
    /// (name scripts use, name on the server)
    folders: &'static [(&'static str, &'static str)],
}

fn preset(provider: Provider) -> Preset {
    match provider {
        Provider::Gmail => Preset {
            imap_host: "imap.gmail.com",
            pop3_host: Some("pop.gmail.com"),
            oauth_only: false,
            token_url: "https://oauth2.googleapis.com/token",
            // Google's device flow does not grant the mail scope: loopback redirect only.
            device_url: "",
            auth_url: "https://accounts.google.com/o/oauth2/v2/auth",
            scope: "https://mail.google.com/",
            folders: &[
                ("Junk", "[Gmail]/Spam"),
                ("Spam", "[Gmail]/Spam"),
                ("Archive", "[Gmail]/All Mail"),
                ("All Mail", "[Gmail]/All Mail"),
                ("Trash", "[Gmail]/Trash"),
                ("Sent", "[Gmail]/Sent Mail"),
                ("Drafts", "[Gmail]/Drafts"),
            ],
        },
        Provider::Outlook => Preset {
            imap_host: "outlook.office365.com",
            pop3_host: Some("outlook.office365.com"),
            oauth_only: true,
            token_url: concat!("https://login.microsoftonline.com/common/oauth2/v2.0", "/token"),
            device_url: concat!("https://login.microsoftonline.com/common/oauth2/v2.0", "/devicecode"),
            auth_url: concat!("https://login.microsoftonline.com/common/oauth2/v2.0", "/authorize"),
            scope: "offline_access https://outlook.office.com/IMAP.AccessAsUser.All \
                    https://outlook.office.com/POP.AccessAsUser.All https://outlook.office.com/SMTP.Send",
            folders: &[
                ("Junk", "Junk Email"),
                ("Spam", "Junk Email"),
                ("Trash", "Deleted Items"),
                ("Sent", "Sent Items"),
            ],
        },
        Provider::Fastmail => Preset {
            imap_host: "imap.fastmail.com",
            pop3_host: Some("pop.fastmail.com"),
            oauth_only: false,
            token_url: "",
            device_url: "",
            auth_url: "",
            scope: "",
            folders: &[("Junk", "Spam")],
        },
        Provider::Icloud => Preset {
            imap_host: "imap.mail.me.com",
            pop3_host: None,
            oauth_only: false,
            token_url: "",
            device_url: "",
            auth_url: "",
            scope: "",
            folders: &[("Spam", "Junk"), ("Sent", "Sent Messages"), ("Trash", "Deleted Messages")],
        },
    }
}

/// Fills what `account.provider` implies and the file left unset; `auth` defaults to
/// `password` (to `xoauth2` for an `[accounts.oauth2]` table or a password-less provider).
pub fn apply_provider(account: &mut AccountConfig) {
    let Some(provider) = account.provider else {
        if account.auth.is_none() && account.oauth2.is_some() {
            account.auth = Some(AuthMethod::Xoauth2);
        }
        return;
    };
    let p = preset(provider);
    if account.host.is_empty() {
        account.host = match account.protocol {
            AccountProtocol::Imap => p.imap_host,
            AccountProtocol::Pop3 => p.pop3_host.unwrap_or_default(),
        }
        .to_string();
    }
    // Every provider here speaks implicit TLS on the standard ports (993, 995).
    if account.tls == AccountTls::Implicit && account.port.is_none() {
        account.port = Some(match account.protocol {
            AccountProtocol::Imap => 993,
            AccountProtocol::Pop3 => 995,
        });
    }
    if account.auth.is_none() && (p.oauth_only || account.oauth2.is_some()) {
        account.auth = Some(AuthMethod::Xoauth2);
    }
    if let Some(oauth2) = account.oauth2.as_mut() {
        let fill = |field: &mut String, value: &str| {
            if field.is_empty() {
                *field = value.to_string();
            }
        };
        fill(&mut oauth2.token_url, p.token_url);
        fill(&mut oauth2.device_url, p.device_url);
        fill(&mut oauth2.auth_url, p.auth_url);
        fill(&mut oauth2.scope, p.scope);
    }
    for (name, server) in p.folders {
        account.folders.entry(name.to_string()).or_insert_with(|| server.to_string());
    }
}

/// The folder a script's name stands for on this account (`folders`, filled by `provider`).
pub fn folder_alias<'a>(folders: &'a BTreeMap<String, String>, name: &'a str) -> &'a str {
    folders.get(name).map_or(name, String::as_str)
}

/// The checks of one account's login settings; messages start `[[accounts]] "name": …`.
pub fn validate_account(account: &AccountConfig) -> Result<(), String> {
    let name = &account.name;
    if account.host.is_empty() {
        return Err(match account.provider {
            Some(p) => format!("[[accounts]] {name:?}: provider {p:?} has no {:?} server", account.protocol),
            None => format!("[[accounts]] {name:?}: host is missing (or set provider)"),
        });
    }
    let auth = account.auth.unwrap_or_default();
    let secrets = usize::from(account.password.is_some()) + usize::from(account.password_command.is_some());
    match (&account.oauth2, auth) {
        (Some(_), AuthMethod::Password) => {
            return Err(format!(
                "[[accounts]] {name:?}: auth = \"password\" with an [accounts.oauth2] table; use auth = \"xoauth2\" or \"oauthbearer\""
            ))
        }
        (Some(oauth2), _) => {
            if secrets != 0 {
                return Err(format!(
                    "[[accounts]] {name:?}: password and password_command cannot be set with [accounts.oauth2] (tokens come from its refresh flow)"
                ));
            }
            if oauth2.token_url.is_empty() || oauth2.client_id.is_empty() {
                return Err(format!("[[accounts]] {name:?}: [accounts.oauth2] needs token_url and client_id"));
            }
            if oauth2.client_secret.is_some() && oauth2.client_secret_command.is_some() {
                return Err(format!(
                    "[[accounts]] {name:?}: set at most one of client_secret and client_secret_command"
                ));
            }
            for url in [&oauth2.token_url, &oauth2.device_url, &oauth2.auth_url] {
                if !url.is_empty() && !url.starts_with("https://") && !url.starts_with("http://") {
                    return Err(format!("[[accounts]] {name:?}: {url:?} is not an http(s) URL"));
                }
            }
        }
        (None, _) if secrets != 1 => {
            let what = if auth.is_oauth() { "the access token's password_command" } else { "password" };
            return Err(format!(
                "[[accounts]] {name:?}: set exactly one of password and password_command ({what}){}",
                if auth.is_oauth() { ", or an [accounts.oauth2] table" } else { "" }
            ));
        }
        (None, _) => {}
    }
    Ok(())
}

/// `[outbound] relay_account`: an account that logs in with OAuth2, on a relay without other
/// credentials.
pub fn validate_relay_account(config: &super::Config) -> Result<(), String> {
    let outbound = &config.outbound;
    let name = outbound.relay_account.as_str();
    if name.is_empty() {
        return Ok(());
    }
    let Some(account) = config.accounts.iter().find(|a| a.name == name) else {
        return Err(format!("[outbound] relay_account {name:?}: no [[accounts]] has that name"));
    };
    if !account.auth_method().is_oauth() {
        return Err(format!("[outbound] relay_account {name:?}: that account does not log in with OAuth2 (auth)"));
    }
    if outbound.mode != super::OutboundMode::Relay
        || outbound.relay.contains('@')
        || !outbound.relay_password.is_empty()
    {
        return Err(format!(
            "[outbound] relay_account {name:?}: needs mode = \"relay\" and a relay without a password"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
