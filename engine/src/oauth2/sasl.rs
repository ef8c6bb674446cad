//! SASL messages for OAuth2 access tokens: XOAUTH2 (Google, Microsoft) and OAUTHBEARER
//! (RFC 7628), as IMAP `AUTHENTICATE`, POP3 `AUTH` (RFC 5034) and SMTP `AUTH` carry them.
//!
//! Input: user, token (and for OAUTHBEARER the server's host and port); output: the raw client
//! messages (the protocol code base64-encodes them). A failed login makes the server send one
//! challenge holding a JSON error; [`Sasl`] answers it as each mechanism requires and keeps it
//! for the error message.
//!
//! Security: the token is a secret; nothing here logs it.

use base64::Engine as _;

use crate::config::AuthMethod;

/// The client side of one XOAUTH2/OAUTHBEARER exchange.
#[derive(Debug)]
pub struct Sasl {
    initial: Vec<u8>,
    mechanism: AuthMethod,
    sent_initial: bool,
    /// The server's error challenge (JSON), when it sent one.
    pub error: Option<String>,
}

impl Sasl {
    pub fn new(mechanism: AuthMethod, user: &str, token: &str, host: &str, port: u16) -> Sasl {
        Sasl {
            initial: initial_response(mechanism, user, token, host, port),
            mechanism,
            sent_initial: false,
            error: None,
        }
    }

    /// The mechanism name to announce (`XOAUTH2`, `OAUTHBEARER`).
    pub fn mechanism(&self) -> &'static str {
        self.mechanism.mechanism()
    }

    /// The initial client response, base64-encoded (for SASL-IR and POP3 `AUTH m resp`).
    pub fn initial_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.initial)
    }

    /// The answer to a (decoded) server challenge: the initial response first; after that the
    /// server is reporting an error, which is kept and acknowledged (XOAUTH2: an empty
    /// response; OAUTHBEARER: `%x01`, RFC 7628 §3.2.3) so the server can send its final NO.
    pub fn respond(&mut self, challenge: &[u8]) -> Vec<u8> {
        if !self.sent_initial {
            self.sent_initial = true;
            return self.initial.clone();
        }
        self.note_error(challenge);
        match self.mechanism {
            AuthMethod::Oauthbearer => vec![0x01],
            _ => Vec::new(),
        }
    }

    /// Marks the initial response as sent (it went with the command).
    pub fn sent_inline(&mut self) {
        self.sent_initial = true;
    }

    fn note_error(&mut self, challenge: &[u8]) {
        let text: String = String::from_utf8_lossy(challenge).chars().filter(|c| !c.is_control()).take(300).collect();
        self.error = Some(text);
    }
}

impl async_imap::Authenticator for &mut Sasl {
    type Response = Vec<u8>;

    fn process(&mut self, challenge: &[u8]) -> Vec<u8> {
        self.respond(challenge)
    }
}

/// The raw initial client response of `mechanism`.
pub fn initial_response(mechanism: AuthMethod, user: &str, token: &str, host: &str, port: u16) -> Vec<u8> {
    match mechanism {
        AuthMethod::Oauthbearer => {
            // gs2-header with the authzid escaped (RFC 5801 saslname: `,` → =2C, `=` → =3D).
            let authzid = user.replace('=', "=3D").replace(',', "=2C");
            format!("n,a={authzid},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01").into_bytes()
        }
        _ => format!("user={user}\x01auth=Bearer {token}\x01\x01").into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xoauth2_initial_response_is_googles_format() {
        // The example of Google's XOAUTH2 documentation.
        let mut sasl = Sasl::new(
            AuthMethod::Xoauth2,
            "someuser@example.com",
            "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg",
            "h",
            993,
        );
        assert_eq!(
            sasl.initial_base64(),
            "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
        );
        assert_eq!(
            sasl.respond(b""),
            b"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\x01\x01"
        );
        assert_eq!(sasl.respond(b"{\"status\":\"401\"}"), b"");
        assert_eq!(sasl.error.as_deref(), Some("{\"status\":\"401\"}"));
    }

    #[test]
    fn oauthbearer_initial_response_is_rfc7628s() {
        // RFC 7628 §4.1, with the authzid escaped as a saslname.
        let raw = initial_response(
            AuthMethod::Oauthbearer,
            "user@example.com",
            "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==",
            "server.example.com",
            143,
        );
        assert_eq!(
            raw,
            b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01"
        );
        assert!(initial_response(AuthMethod::Oauthbearer, "a,b=c", "t", "h", 1).starts_with(b"n,a=a=2Cb=3Dc,"));
        let mut sasl = Sasl::new(AuthMethod::Oauthbearer, "u", "t", "h", 1);
        sasl.sent_inline();
        assert_eq!(sasl.respond(b"{\"status\":\"invalid_token\"}"), vec![0x01]);
    }
}
