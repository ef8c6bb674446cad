//! AUTH PLAIN and AUTH LOGIN (RFC 4954, RFC 4616), with or without an initial response.
//!
//! Offered and accepted only over TLS unless `allow_plain_auth = true` (538 otherwise).
//! Wrong credentials get `535 5.7.8` after a delay that grows with the address's recent
//! failures; past [`MAX_FAILURES`] the address may not try again for a while. AUTH PLAIN
//! with an authorization identity other than the authentication identity (acting as another
//! user) is refused with `535 5.7.8`: no account may act for another.
//! Security: the exchanged lines carry passwords — nothing here logs them, at any level.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use smtp_proto::{AUTH_LOGIN, AUTH_PLAIN};

use super::credentials::{verify_bounded, MAX_FAILURES};
use super::reply::Reply;
use super::session::{Flow, Session, SessionStream, State};

/// `334` prompts of AUTH LOGIN: "Username:" and "Password:" in base64.
const PROMPT_USERNAME: &str = "VXNlcm5hbWU6";
const PROMPT_PASSWORD: &str = "UGFzc3dvcmQ6";

/// A step of the SASL exchange that did not yield a value.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Cancelled,
    Malformed,
    Closed,
    /// AUTH PLAIN named an authorization identity other than the authentication identity.
    OtherAuthzid {
        authzid: String,
    },
}

impl<S: SessionStream> Session<S> {
    /// Whether AUTH may be advertised and used on this connection now.
    pub(super) fn auth_offered(&self) -> bool {
        let smtp = &self.config.smtp;
        !smtp.auth_users.is_empty() && (self.tls.is_some() || !self.auth_needs_tls())
    }

    pub(super) async fn handle_auth(&mut self, mechanism: u64, initial: String) -> std::io::Result<Flow> {
        let smtp = &self.config.smtp;
        if smtp.auth_users.is_empty() {
            self.reply(Reply::new(502, "5.5.1", "AUTH not available"));
            return Ok(Flow::Continue);
        }
        if self.tls.is_none() && self.auth_needs_tls() {
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
            Err(Step::OtherAuthzid { authzid }) => {
                // Refused before any password check: nothing is learnt about the credentials.
                tracing::warn!(authzid = %shown(&authzid), "AUTH PLAIN: acting as another user is not allowed");
                self.reply(Reply::new(535, "5.7.8", "Authorization identity must match the authentication identity"));
                return Ok(Flow::Continue);
            }
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
        plain_credentials(&response)
    }

    async fn sasl_login(&mut self, initial: Option<String>) -> Result<(String, String), Step> {
        let user_b64 = match initial {
            Some(text) => text,
            None => self.sasl_step(PROMPT_USERNAME).await?,
        };
        let user = decode_text(&user_b64)?;
        let password = decode_text(&self.sasl_step(PROMPT_PASSWORD).await?)?;
        Ok((user, password))
    }

    /// Sends `334 prompt` and reads the client's line.
    async fn sasl_step(&mut self, prompt: &str) -> Result<String, Step> {
        self.reply(Reply::plain(334, prompt.to_string()));
        let timeout = self.config.smtp.command_timeout;
        self.state = State::Sasl;
        let line = self.next_line(timeout).await;
        self.state = State::Command;
        match line {
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

/// RFC 4616 PLAIN response (base64 of `[authzid] NUL authcid NUL passwd`) as (authcid,
/// password). An authzid is accepted only when it is empty or equal to the authcid.
pub(crate) fn plain_credentials(response: &str) -> Result<(String, String), Step> {
    let decoded = B64.decode(response.trim()).map_err(|_| Step::Malformed)?;
    parse_plain(&decoded)
}

/// The decoded AUTH PLAIN message: (authcid, password).
fn parse_plain(decoded: &[u8]) -> Result<(String, String), Step> {
    let mut parts = decoded.split(|&b| b == 0);
    let (authzid, user, password) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(z), Some(u), Some(p), None) => (z, u, p),
        _ => return Err(Step::Malformed),
    };
    let authzid = String::from_utf8(authzid.to_vec()).map_err(|_| Step::Malformed)?;
    let user = String::from_utf8(user.to_vec()).map_err(|_| Step::Malformed)?;
    let password = String::from_utf8(password.to_vec()).map_err(|_| Step::Malformed)?;
    if !authzid.is_empty() && authzid != user {
        return Err(Step::OtherAuthzid { authzid });
    }
    Ok((user, password))
}

/// A base64 AUTH LOGIN response as text; `Malformed` when it is not base64 of UTF-8.
pub(crate) fn decode_text(b64: &str) -> Result<String, Step> {
    let bytes = B64.decode(b64.trim()).map_err(|_| Step::Malformed)?;
    String::from_utf8(bytes).map_err(|_| Step::Malformed)
}

#[cfg(test)]
mod tests {
    use super::{parse_plain, shown, Step};

    #[test]
    fn plain_authzid_must_be_empty_or_the_authcid() {
        let ok = |user: &str, pw: &str| Ok((user.to_string(), pw.to_string()));
        assert_eq!(parse_plain(b"\0me\0pw"), ok("me", "pw"));
        assert_eq!(parse_plain(b"me\0me\0pw"), ok("me", "pw"));
        assert_eq!(parse_plain(b"admin\0me\0pw"), Err(Step::OtherAuthzid { authzid: "admin".into() }));
        // Case matters: "Me" is another identity than "me".
        assert_eq!(parse_plain(b"Me\0me\0pw"), Err(Step::OtherAuthzid { authzid: "Me".into() }));
        assert_eq!(parse_plain(b"me\0pw"), Err(Step::Malformed));
        assert_eq!(parse_plain(b"a\0me\0pw\0x"), Err(Step::Malformed));
        assert_eq!(parse_plain(b"\xff\0me\0pw"), Err(Step::Malformed));
    }

    #[test]
    fn shown_names_stay_on_one_line() {
        assert_eq!(shown("me"), "me");
        assert_eq!(shown("a\nINFO forged"), "a\\nINFO forged");
        assert_eq!(shown("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(shown(&"x".repeat(100)).chars().count(), 65);
    }
}
