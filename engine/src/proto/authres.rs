//! Authentication verdicts (SPF, iprev, DKIM, DMARC, ARC) as plain data, and the
//! `Authentication-Results:` header (RFC 8601) that reports them.
//!
//! Input: the verdicts [`crate::verify`] reached; names in them (domains, selectors, the HELO
//! name, PTR names) come from the client or from DNS. Output: the header text, and
//! [`claims_authserv_id`] for finding forged copies of it.
//!
//! Security: every value written into the header passes [`value`], which keeps it one line of
//! printable ASCII (quoted when it is not a plain token), so no name can add a field or a line.

use serde::Serialize;

/// An RFC 8601 result keyword (the ones SPF, DKIM, DMARC, ARC and iprev use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    #[default]
    None,
    Pass,
    Fail,
    SoftFail,
    Neutral,
    TempError,
    PermError,
    /// DKIM: a signature we do not accept by policy (one with a body length, `l=`).
    Policy,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::None => "none",
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::SoftFail => "softfail",
            Outcome::Neutral => "neutral",
            Outcome::TempError => "temperror",
            Outcome::PermError => "permerror",
            Outcome::Policy => "policy",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// SPF (RFC 7208) of the MAIL FROM identity, or of the HELO identity for the null sender.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SpfVerdict {
    pub result: Outcome,
    /// The domain whose record was evaluated ("" when no check ran).
    pub domain: String,
    /// The identity checked was the HELO name (the sender was null).
    pub helo_identity: bool,
}

/// iprev (RFC 8601 §3): the client's address maps to a name that maps back to it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IprevVerdict {
    pub result: Outcome,
    /// The first PTR name, without the final dot ("" when there is none).
    pub name: String,
}

/// One DKIM-Signature (RFC 6376) and what became of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DkimVerdict {
    pub result: Outcome,
    /// `d=`, `s=` and `a=` of the signature ("" when it could not be parsed).
    pub domain: String,
    pub selector: String,
    pub algorithm: String,
    /// Why it did not pass, for the log ("" on pass).
    pub reason: String,
}

/// DMARC (RFC 7489) for the domain of the From header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DmarcVerdict {
    pub result: Outcome,
    /// The policy the domain asks for: `reject`, `quarantine` or `none` (`sp=` for a
    /// subdomain; `none` when there is no record).
    pub policy: &'static str,
    /// The From domain ("" when the message has no single From domain).
    pub domain: String,
    /// The identifiers that passed and aligned: `"dkim"`, `"spf"`.
    pub aligned: Vec<&'static str>,
}

impl Default for DmarcVerdict {
    fn default() -> Self {
        DmarcVerdict { result: Outcome::None, policy: "none", domain: String::new(), aligned: Vec::new() }
    }
}

/// ARC (RFC 8617) chain validation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ArcVerdict {
    pub result: Outcome,
}

/// The verdicts about a message's content: every DKIM signature, DMARC, ARC.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MessageAuth {
    pub dkim: Vec<DkimVerdict>,
    pub dmarc: DmarcVerdict,
    pub arc: ArcVerdict,
}

/// What one `Authentication-Results:` header reports.
#[derive(Debug)]
pub struct Report<'a> {
    pub authserv_id: &'a str,
    pub remote_ip: &'a str,
    /// The client authenticated (AUTH) as this user: reported as `auth=pass`, no other checks.
    pub auth_user: Option<&'a str>,
    pub iprev: &'a IprevVerdict,
    pub spf: &'a SpfVerdict,
    pub helo: &'a str,
    pub message: &'a MessageAuth,
}

impl Report<'_> {
    /// The whole header field, folded one method per line, ending in CRLF.
    pub fn header(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if let Some(user) = self.auth_user {
            parts.push(format!("auth=pass smtp.auth={}", value(user)));
        } else {
            let iprev = self.iprev;
            let mut line = format!("iprev={} policy.iprev={}", iprev.result, value(self.remote_ip));
            if !iprev.name.is_empty() {
                line.push_str(&format!(" ({})", comment(&iprev.name)));
            }
            parts.push(line);
            let spf = self.spf;
            parts.push(if spf.helo_identity || spf.domain.is_empty() {
                format!("spf={} smtp.helo={}", spf.result, value(self.helo))
            } else {
                format!("spf={} smtp.mailfrom={}", spf.result, value(&spf.domain))
            });
            if self.message.dkim.is_empty() {
                parts.push("dkim=none".to_string());
            }
            for dkim in &self.message.dkim {
                let mut line = format!("dkim={}", dkim.result);
                if !dkim.reason.is_empty() {
                    line.push_str(&format!(" ({})", comment(&dkim.reason)));
                }
                for (key, v) in
                    [("header.d", &dkim.domain), ("header.s", &dkim.selector), ("header.a", &dkim.algorithm)]
                {
                    if !v.is_empty() {
                        line.push_str(&format!(" {key}={}", value(v)));
                    }
                }
                parts.push(line);
            }
            let dmarc = &self.message.dmarc;
            let mut line = format!("dmarc={}", dmarc.result);
            if !dmarc.domain.is_empty() {
                let aligned = if dmarc.aligned.is_empty() { "none".to_string() } else { dmarc.aligned.join(",") };
                line.push_str(&format!(" (p={} aligned={aligned}) header.from={}", dmarc.policy, value(&dmarc.domain)));
            }
            parts.push(line);
            parts.push(format!("arc={}", self.message.arc.result));
        }
        let mut out = format!("Authentication-Results: {};", value(self.authserv_id));
        let last = parts.len().saturating_sub(1);
        for (n, part) in parts.iter().enumerate() {
            out.push_str("\r\n\t");
            out.push_str(part);
            if n != last {
                out.push(';');
            }
        }
        out.push_str("\r\n");
        out
    }
}

/// The verdicts an `Authentication-Results` field value written by [`Report::header`] holds:
/// how `mailflow test` replays the checks of a message mailflow received (best effort: an
/// unknown method or property is skipped).
pub fn parse_header(field_value: &str) -> (IprevVerdict, SpfVerdict, MessageAuth) {
    let (mut iprev, mut spf, mut message) = (IprevVerdict::default(), SpfVerdict::default(), MessageAuth::default());
    let unfolded: String = field_value.split(['\r', '\n']).collect::<Vec<_>>().join(" ");
    for part in unfolded.split(';').skip(1) {
        let (comment, rest) = match (part.find('('), part.find(')')) {
            (Some(open), Some(close)) if open < close => {
                (&part[open + 1..close], format!("{} {}", &part[..open], &part[close + 1..]))
            }
            _ => ("", part.to_string()),
        };
        let mut words = rest.split_whitespace();
        let Some((method, result)) = words.next().and_then(|w| w.split_once('=')) else {
            continue;
        };
        let result = outcome_of(result);
        let props: Vec<(&str, String)> =
            words.filter_map(|w| w.split_once('=')).map(|(k, v)| (k, v.trim_matches('"').to_string())).collect();
        let prop = |key: &str| props.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.clone());
        match method.to_ascii_lowercase().as_str() {
            "iprev" => iprev = IprevVerdict { result, name: comment.trim().to_string() },
            "spf" => {
                let helo = prop("smtp.helo");
                spf = SpfVerdict {
                    result,
                    helo_identity: helo.is_some(),
                    domain: prop("smtp.mailfrom").or(helo).unwrap_or_default(),
                }
            }
            "dkim" if result != Outcome::None => message.dkim.push(DkimVerdict {
                result,
                domain: prop("header.d").unwrap_or_default(),
                selector: prop("header.s").unwrap_or_default(),
                algorithm: prop("header.a").unwrap_or_default(),
                reason: String::new(),
            }),
            "dmarc" => {
                let tag = |name: &str| {
                    comment.split_whitespace().find_map(|t| t.strip_prefix(name)).unwrap_or("").to_string()
                };
                message.dmarc = DmarcVerdict {
                    result,
                    policy: match tag("p=").as_str() {
                        "reject" => "reject",
                        "quarantine" => "quarantine",
                        _ => "none",
                    },
                    domain: prop("header.from").unwrap_or_default(),
                    aligned: tag("aligned=")
                        .split(',')
                        .filter_map(|a| match a {
                            "dkim" => Some("dkim"),
                            "spf" => Some("spf"),
                            _ => None,
                        })
                        .collect(),
                };
            }
            "arc" => message.arc = ArcVerdict { result },
            _ => {}
        }
    }
    (iprev, spf, message)
}

fn outcome_of(word: &str) -> Outcome {
    match word.to_ascii_lowercase().as_str() {
        "pass" => Outcome::Pass,
        "fail" | "hardfail" => Outcome::Fail,
        "softfail" => Outcome::SoftFail,
        "neutral" => Outcome::Neutral,
        "temperror" => Outcome::TempError,
        "permerror" => Outcome::PermError,
        "policy" => Outcome::Policy,
        _ => Outcome::None,
    }
}

/// Longest name written into the header (a DNS name is at most 253 octets).
const MAX_VALUE: usize = 255;

/// `text` as an RFC 8601 `pvalue`: as it is when it is a plain token or domain or address,
/// else a quoted string of its printable ASCII; at most [`MAX_VALUE`] characters.
pub fn value(text: &str) -> String {
    let plain = !text.is_empty()
        && text.len() <= MAX_VALUE
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'@' | b'+' | b':'));
    if plain {
        return text.to_string();
    }
    let mut out = String::from("\"");
    for c in text.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').take(MAX_VALUE) {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// `text` for inside `( )`: printable ASCII without parentheses or backslashes.
fn comment(text: &str) -> String {
    text.chars()
        .filter(|c| (c.is_ascii_graphic() || *c == ' ') && !matches!(c, '(' | ')' | '\\'))
        .take(MAX_VALUE)
        .collect()
}

/// Whether an `Authentication-Results` field value names `authserv_id` (any case) as the
/// host that made it (RFC 8601 §5: such fields from elsewhere are forgeries). Leading
/// whitespace and comments are skipped; the id ends at whitespace, `;` or a comment.
pub fn claims_authserv_id(field_value: &[u8], authserv_id: &str) -> bool {
    let mut rest = field_value;
    loop {
        rest = rest.trim_ascii_start();
        match rest.first() {
            Some(b'(') => {
                let mut depth = 0usize;
                let mut end = rest.len();
                for (i, b) in rest.iter().enumerate() {
                    match b {
                        b'(' => depth += 1,
                        b')' => {
                            depth -= 1;
                            if depth == 0 {
                                end = i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                rest = &rest[end..];
            }
            _ => break,
        }
    }
    let id_end = rest.iter().position(|b| b.is_ascii_whitespace() || matches!(b, b';' | b'(')).unwrap_or(rest.len());
    let id = &rest[..id_end];
    let id = id.strip_prefix(b"\"").and_then(|i| i.strip_suffix(b"\"")).unwrap_or(id);
    !id.is_empty() && id.eq_ignore_ascii_case(authserv_id.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_reports_every_method_on_its_own_line() {
        let message = MessageAuth {
            dkim: vec![DkimVerdict {
                result: Outcome::Pass,
                domain: "example.com".into(),
                selector: "s1".into(),
                algorithm: "ed25519-sha256".into(),
                reason: String::new(),
            }],
            dmarc: DmarcVerdict {
                result: Outcome::Pass,
                policy: "reject",
                domain: "example.com".into(),
                aligned: vec!["dkim"],
            },
            arc: ArcVerdict::default(),
        };
        let iprev = IprevVerdict { result: Outcome::Pass, name: "mail.example.com".into() };
        let spf = SpfVerdict { result: Outcome::SoftFail, domain: "example.com".into(), helo_identity: false };
        let report = Report {
            authserv_id: "mx.example.org",
            remote_ip: "192.0.2.1",
            auth_user: None,
            iprev: &iprev,
            spf: &spf,
            helo: "mail.example.com",
            message: &message,
        };
        assert_eq!(
            report.header(),
            "Authentication-Results: mx.example.org;\r\n\
             \tiprev=pass policy.iprev=192.0.2.1 (mail.example.com);\r\n\
             \tspf=softfail smtp.mailfrom=example.com;\r\n\
             \tdkim=pass header.d=example.com header.s=s1 header.a=ed25519-sha256;\r\n\
             \tdmarc=pass (p=reject aligned=dkim) header.from=example.com;\r\n\
             \tarc=none\r\n"
        );
    }

    #[test]
    fn a_written_header_parses_back() {
        let message = MessageAuth {
            dkim: vec![DkimVerdict {
                result: Outcome::Fail,
                domain: "example.com".into(),
                selector: "s1".into(),
                algorithm: "rsa-sha256".into(),
                reason: "bad (really) signature".into(),
            }],
            dmarc: DmarcVerdict {
                result: Outcome::Pass,
                policy: "quarantine",
                domain: "example.com".into(),
                aligned: vec!["dkim", "spf"],
            },
            arc: ArcVerdict { result: Outcome::Pass },
        };
        let iprev = IprevVerdict { result: Outcome::Pass, name: "mail.example.com".into() };
        let spf = SpfVerdict { result: Outcome::Pass, domain: "example.com".into(), helo_identity: false };
        let report = Report {
            authserv_id: "mx",
            remote_ip: "192.0.2.1",
            auth_user: None,
            iprev: &iprev,
            spf: &spf,
            helo: "h",
            message: &message,
        };
        let header = report.header();
        let value = header.split_once(':').unwrap().1;
        let (iprev2, spf2, mut message2) = parse_header(value);
        assert_eq!((iprev2, spf2), (iprev, spf));
        message2.dkim[0].reason = message.dkim[0].reason.clone();
        assert_eq!(message2, message);
    }

    #[test]
    fn names_from_the_client_cannot_break_the_header() {
        assert_eq!(value("evil\r\nX-Injected: 1"), "\"evilX-Injected: 1\"");
        assert_eq!(value("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(value(""), "\"\"");
        assert_eq!(value("[192.0.2.1]"), "\"[192.0.2.1]\"");
        assert_eq!(comment("x) (y\r\n"), "x y");
        assert!(value(&"a".repeat(10_000)).len() < 300);
    }

    #[test]
    fn finds_the_authserv_id_a_field_claims() {
        assert!(claims_authserv_id(b" mx.example.org; spf=pass", "MX.example.org"));
        assert!(claims_authserv_id(b"mx.example.org 1; none", "mx.example.org"));
        assert!(claims_authserv_id(b" (forged) mx.example.org;dkim=pass", "mx.example.org"));
        assert!(claims_authserv_id(b"\r\n\tmx.example.org(c);", "mx.example.org"));
        assert!(!claims_authserv_id(b" other.example; spf=pass", "mx.example.org"));
        assert!(!claims_authserv_id(b" mx.example.org.evil; spf=pass", "mx.example.org"));
        assert!(!claims_authserv_id(b"", "mx.example.org"));
        assert!(!claims_authserv_id(b"((((", "mx.example.org"));
    }
}
