//! AUTH PLAIN and AUTH LOGIN (RFC 4954, RFC 4616), with or without an initial response.
//!
//! Offered and accepted only over TLS unless `allow_plain_auth = true` (538 otherwise).
//! Wrong credentials get `535 5.7.8` after a delay that grows with the address's recent
//! failures; past [`MAX_FAILURES`] the address may not try again for a while.
//! Security: the exchanged lines carry passwords — nothing here logs them, at any level.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use smtp_proto::{AUTH_LOGIN, AUTH_PLAIN};

use super::credentials::{verify_bounded, MAX_FAILURES};
use super::reply::Reply;
use super::session::{Flow, Session};

/// `334` prompts of AUTH LOGIN: "Username:" and "Password:" in base64.
const PROMPT_USERNAME: &str = "VXNlcm5hbWU6";
const PROMPT_PASSWORD: &str = "UGFzc3dvcmQ6";

/// A step of the SASL exchange that did not yield a value.
enum Step {
    Cancelled,
    Malformed,
    Closed,
}

impl Session {
    /// Whether AUTH may be advertised and used on this connection now.
    pub(super) fn auth_offered(&self) -> bool {
        let smtp = &self.config.smtp;
        !smtp.auth_users.is_empty() && (self.tls.is_some() || smtp.allow_plain_auth)
    }

    pub(super) async fn handle_auth(&mut self, mechanism: u64, initial: String) -> std::io::Result<Flow> {
        let smtp = &self.config.smtp;
        if smtp.auth_users.is_empty() {
            self.reply(Reply::new(502, "5.5.1", "AUTH not available"));
            return Ok(Flow::Continue);
        }
        if self.tls.is_none() && !smtp.allow_plain_auth {
            self.reply(Reply::new(538, "5.7.11", "Encryption required for requested authentication mechanism"));
            return Ok(Flow::Continue);
        }
        if self.helo.is_none() || !self.esmtp {
            self.reply(Reply::new(503, "5.5.1", "Send EHLO first"));
            return Ok(Flow::Continue);
        }
        if self.auth_user.is_some() {
            self.reply(Reply::new(503, "5.5.1", "Already authenticated"));
            return Ok(Flow::Continue);
        }
        if self.tx.is_some() {
            self.reply(Reply::new(503, "5.5.1", "AUTH not allowed during a mail transaction"));
            return Ok(Flow::Continue);
        }
        if self.shared.auth_failures.recent(self.remote_ip) >= MAX_FAILURES {
            self.reply(Reply::new(454, "4.7.0", "Too many failed authentications; try again later"));
            return Ok(Flow::Continue);
        }
        let initial = (!initial.is_empty()).then_some(initial);
        let credentials = if mechanism == AUTH_PLAIN {
            self.sasl_plain(initial).await
        } else if mechanism == AUTH_LOGIN {
            self.sasl_login(initial).await
        } else {
            self.reply(Reply::new(504, "5.5.4", "Mechanism not supported; use PLAIN or LOGIN"));
            return Ok(Flow::Continue);
        };
        let (user, password) = match credentials {
            Ok(pair) => pair,
            Err(Step::Cancelled) => {
                self.reply(Reply::new(501, "5.0.0", "Authentication cancelled"));
                return Ok(Flow::Continue);
            }
            Err(Step::Malformed) => {
                self.reply(Reply::new(501, "5.5.2", "Cannot decode the response"));
                return Ok(Flow::Continue);
            }
            Err(Step::Closed) => return Ok(Flow::Close),
        };
        let users = self.config.smtp.auth_users.clone();
        let Some(ok) = verify_bounded(users, user.clone(), password).await else {
            tracing::warn!("AUTH: no password verification slot free in time");
            self.reply(Reply::new(454, "4.7.0", "Server busy; try again later"));
            return Ok(Flow::Continue);
        };
        if ok {
            // A success does not wipe this address's recent failures: one valid account must
            // not let a client guess other accounts' passwords at the lowest delay.
            tracing::info!(user = %user, "authenticated");
            self.auth_user = Some(user);
            self.reply(Reply::new(235, "2.7.0", "Authentication successful"));
        } else {
            let delay = self.shared.auth_failures.fail(self.remote_ip);
            // The name is whatever the client sent: escaped, so it cannot forge log lines.
            tracing::warn!(user = %shown(&user), "authentication failed");
            tokio::time::sleep(delay).await;
            self.reply(Reply::new(535, "5.7.8", "Authentication credentials invalid"));
        }
        Ok(Flow::Continue)
    }

    /// RFC 4616: `[authzid] NUL authcid NUL passwd`, base64.
    async fn sasl_plain(&mut self, initial: Option<String>) -> Result<(String, String), Step> {
        let response = match initial {
            Some(text) if text == "=" => String::new(),
            Some(text) => text,
            None => self.sasl_step("").await?,
        };
        plain_credentials(&response).ok_or(Step::Malformed)
    }

    async fn sasl_login(&mut self, initial: Option<String>) -> Result<(String, String), Step> {
        let user_b64 = match initial {
            Some(text) => text,
            None => self.sasl_step(PROMPT_USERNAME).await?,
        };
        let user = decode_text(&user_b64).ok_or(Step::Malformed)?;
        let password = decode_text(&self.sasl_step(PROMPT_PASSWORD).await?).ok_or(Step::Malformed)?;
        Ok((user, password))
    }

    /// Sends `334 prompt` and reads the client's line.
    async fn sasl_step(&mut self, prompt: &str) -> Result<String, Step> {
        self.reply(Reply::plain(334, prompt.to_string()));
        let timeout = self.config.smtp.command_timeout;
        match self.next_line(timeout).await {
            Ok(Some(line)) => {
                let text = String::from_utf8(line).map_err(|_| Step::Malformed)?;
                let text = text.trim_end_matches(['\r', '\n']).to_string();
                if text == "*" {
                    return Err(Step::Cancelled);
                }
                Ok(text)
            }
            Ok(None) => Err(Step::Malformed),
            Err(_) => Err(Step::Closed),
        }
    }
}

/// A client-supplied name fit for one log line: control characters escaped, length bounded.
pub(crate) fn shown(name: &str) -> String {
    let mut out: String = name.chars().take(64).flat_map(char::escape_debug).collect();
    if name.chars().count() > 64 {
        out.push('…');
    }
    out
}

/// A base64 AUTH LOGIN response as text; `None` when it is not base64 of UTF-8.
pub(crate) fn decode_text(b64: &str) -> Option<String> {
    let bytes = B64.decode(b64.trim()).ok()?;
    String::from_utf8(bytes).ok()
}

/// RFC 4616 PLAIN response (base64 of `[authzid] NUL authcid NUL passwd`) as (user, password);
/// `None` when malformed.
pub(crate) fn plain_credentials(response: &str) -> Option<(String, String)> {
    let decoded = B64.decode(response.trim()).ok()?;
    let mut parts = decoded.split(|&b| b == 0);
    let (_authzid, user, password) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(z), Some(u), Some(p), None) => (z, u, p),
        _ => return None,
    };
    let user = String::from_utf8(user.to_vec()).ok()?;
    let password = String::from_utf8(password.to_vec()).ok()?;
    Some((user, password))
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn shown_names_stay_on_one_line() {
        assert_eq!(shown("me"), "me");
        assert_eq!(shown("a\nINFO forged"), "a\\nINFO forged");
        assert_eq!(shown("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(shown(&"x".repeat(100)).chars().count(), 65);
    }
}
