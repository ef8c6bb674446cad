//! The `Received:` trace header (RFC 5321 §4.4) mailflow puts in front of every accepted
//! message.

use std::time::SystemTime;

use crate::message::date::rfc5322;

/// What the header records about the session.
pub struct Trace<'a> {
    pub helo: &'a str,
    pub remote_ip: &'a str,
    pub hostname: &'a str,
    /// `SMTP`, `ESMTP` (RFC 3848 adds `ESMTPS`, `ESMTPSA` under TLS/AUTH).
    pub protocol: &'a str,
    /// The TLS version and cipher, when the session used TLS.
    pub tls: Option<&'a super::tls::TlsInfo>,
    pub id: &'a str,
    /// Named only for a single recipient, so a Bcc list is not revealed.
    pub single_recipient: Option<&'a str>,
}

impl Trace<'_> {
    pub fn header(&self) -> String {
        let helo: String = self.helo.chars().filter(|c| !c.is_control()).take(255).collect();
        let mut out = format!(
            "Received: from {} ([{}]){}\r\n\tby {} (mailflow) with {} id {}",
            if helo.is_empty() { "unknown" } else { &helo },
            self.remote_ip,
            self.tls.map(|t| format!("\r\n\t(using {} with cipher {})", t.version, t.cipher)).unwrap_or_default(),
            self.hostname,
            self.protocol,
            self.id
        );
        if let Some(rcpt) = self.single_recipient {
            out.push_str(&format!("\r\n\tfor <{rcpt}>"));
        }
        out.push_str(&format!(";\r\n\t{}\r\n", rfc5322(SystemTime::now())));
        out
    }
}
