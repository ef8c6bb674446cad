//! The `Received:` trace header (RFC 5321 §4.4) mailflow puts in front of every accepted
//! message.

use crate::message::date::push_rfc5322_now;

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
        let mut out = String::with_capacity(256);
        out.push_str("Received: from ");
        let helo_at = out.len();
        out.extend(self.helo.chars().filter(|c| !c.is_control()).take(255));
        if out.len() == helo_at {
            out.push_str("unknown");
        }
        for part in [" ([", self.remote_ip, "])"] {
            out.push_str(part);
        }
        if let Some(tls) = self.tls {
            for part in ["\r\n\t(using ", &tls.version, " with cipher ", &tls.cipher, ")"] {
                out.push_str(part);
            }
        }
        for part in ["\r\n\tby ", self.hostname, " (mailflow) with ", self.protocol, " id ", self.id] {
            out.push_str(part);
        }
        if let Some(rcpt) = self.single_recipient {
            for part in ["\r\n\tfor <", rcpt, ">"] {
                out.push_str(part);
            }
        }
        out.push_str(";\r\n\t");
        push_rfc5322_now(&mut out);
        out.push_str("\r\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::tls::TlsInfo;

    /// The header as it was written with `format!` before, up to its date.
    fn reference(t: &Trace) -> String {
        let helo: String = t.helo.chars().filter(|c| !c.is_control()).take(255).collect();
        let mut out = format!(
            "Received: from {} ([{}]){}\r\n\tby {} (mailflow) with {} id {}",
            if helo.is_empty() { "unknown" } else { &helo },
            t.remote_ip,
            t.tls.map(|x| format!("\r\n\t(using {} with cipher {})", x.version, x.cipher)).unwrap_or_default(),
            t.hostname,
            t.protocol,
            t.id
        );
        if let Some(rcpt) = t.single_recipient {
            out.push_str(&format!("\r\n\tfor <{rcpt}>"));
        }
        out.push_str(";\r\n\t");
        out
    }

    #[test]
    fn header_text_and_date() {
        let tls = TlsInfo { version: "TLSv1.3".into(), cipher: "TLS13_AES_256_GCM_SHA384".into() };
        let long_helo = "h".repeat(300);
        let cases = [
            Trace {
                helo: "client.example",
                remote_ip: "192.0.2.7",
                hostname: "mx.example",
                protocol: "ESMTPS",
                tls: Some(&tls),
                id: "6616B44B89BA8004",
                single_recipient: Some("a@example.org"),
            },
            Trace {
                helo: "",
                remote_ip: "2001:db8::7",
                hostname: "mx.example",
                protocol: "SMTP",
                tls: None,
                id: "X",
                single_recipient: None,
            },
            Trace {
                helo: "evil\r\nInjected: yes",
                remote_ip: "192.0.2.7",
                hostname: "mx",
                protocol: "ESMTP",
                tls: None,
                id: "Y",
                single_recipient: None,
            },
            Trace {
                helo: &long_helo,
                remote_ip: "192.0.2.7",
                hostname: "mx",
                protocol: "ESMTP",
                tls: None,
                id: "Z",
                single_recipient: Some("b@c.d"),
            },
        ];
        for trace in &cases {
            let header = trace.header();
            let expected = reference(trace);
            assert!(header.starts_with(&expected), "{header:?} vs {expected:?}");
            let date = header[expected.len()..].strip_suffix("\r\n").unwrap();
            assert!(date.ends_with(" +0000") && date.split(' ').count() == 6, "{date:?}");
            assert_eq!(header.matches("\r\n").count(), expected.matches("\r\n").count() + 1);
        }
    }
}
