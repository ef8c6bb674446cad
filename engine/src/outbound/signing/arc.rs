//! ARC sealing of forwards (RFC 8617): the seal carries our verdicts on the message as it
//! arrived, so the next hop can trust SPF and DKIM results that the forward itself breaks.
//!
//! The verdicts are read from the topmost `Authentication-Results` header with our
//! authserv-id (the receiver adds it at receipt and removes forged ones), and rebuilt with
//! `mail-auth`'s builders for the `ARC-Authentication-Results` header. Without such a header
//! the message is sealed with what we have (`none`), and a message that already carries an
//! ARC chain is then not sealed at all: without a verdict on that chain we could only break it.

use std::net::{IpAddr, Ipv4Addr};

use mail_auth::arc::{ArcSealer, Set};
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::{Header, HeaderWriter};
use mail_auth::dkim::{Canonicalization, Done};
use mail_auth::{
    ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcOutput, DmarcResult, Error,
    IprevOutput, IprevResult, SpfOutput, SpfResult,
};

use super::keys::DkimKey;
use crate::config::DkimConfig;

/// Headers the ARC-Message-Signature covers, when present.
const SEALED_HEADERS: [&str; 10] =
    ["From", "To", "Cc", "Subject", "Date", "Message-ID", "Reply-To", "MIME-Version", "Content-Type", "DKIM-Signature"];

pub(super) enum KeyedSealer {
    Ed25519(ArcSealer<Ed25519Key, Done>),
    Rsa(ArcSealer<RsaKey<Sha256>, Done>),
}

pub(super) fn sealer(config: &DkimConfig, key: DkimKey) -> KeyedSealer {
    macro_rules! build {
        ($key:expr) => {
            ArcSealer::from_key($key)
                .domain(config.domain.to_ascii_lowercase())
                .selector(config.selector.clone())
                .headers(SEALED_HEADERS)
                .header_canonicalization(Canonicalization::Relaxed)
                .body_canonicalization(Canonicalization::Relaxed)
        };
    }
    match key {
        DkimKey::Ed25519(key) => KeyedSealer::Ed25519(build!(key)),
        DkimKey::Rsa(key) => KeyedSealer::Rsa(build!(key)),
    }
}

/// One `method=result` of an Authentication-Results header, with its properties.
#[derive(Debug, Default, PartialEq)]
struct Verdict {
    method: String,
    result: String,
    props: Vec<(String, String)>,
}

impl Verdict {
    fn prop(&self, name: &str) -> &str {
        self.props.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map_or("", |(_, v)| v.as_str())
    }
}

/// The three ARC header lines for `message`, or `None` (logged) when it cannot be sealed.
pub(super) fn seal(
    sealer: &KeyedSealer,
    message: &[u8],
    authserv_id: &str,
    remote_ip: Option<IpAddr>,
) -> Option<String> {
    let Some(parsed) = AuthenticatedMessage::parse(message) else {
        tracing::warn!("ARC: message does not parse; forwarded without a seal");
        return None;
    };
    let verdicts = our_results(&parsed, authserv_id);
    let chain_result = verdicts.as_ref().and_then(|v| v.iter().find(|v| v.method == "arc")).map(|v| v.result.as_str());
    if !parsed.as_headers.is_empty() && chain_result.is_none() {
        tracing::info!("ARC: the message has an ARC chain but no verdict of ours on it; not sealed");
        return None;
    }
    let ip = remote_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let verdicts = verdicts.unwrap_or_default();
    let mut results = AuthenticationResults::new(authserv_id);
    let mut arc_output = ArcOutput::default();
    for verdict in &verdicts {
        match verdict.method.as_str() {
            "spf" => {
                let from = verdict.prop("smtp.mailfrom");
                let domain = from.rsplit_once('@').map_or(from, |(_, d)| d);
                let spf = SpfOutput::new(domain.to_string()).with_result(spf_result(&verdict.result));
                results = results.with_spf_mailfrom_result(&spf, ip, from, verdict.prop("smtp.helo"));
            }
            "dkim" => {
                let (d, s) = (verdict.prop("header.d"), verdict.prop("header.s"));
                let signature = parsed
                    .dkim_headers
                    .iter()
                    .find(|h| {
                        h.header.d.eq_ignore_ascii_case(d) && (s.is_empty() || h.header.s.eq_ignore_ascii_case(s))
                    })
                    .map(|h| &h.header);
                let output = match dkim_result(&verdict.result) {
                    Some(output) => output,
                    None => continue,
                };
                let output = match signature {
                    Some(signature) => output.with_signature(signature),
                    None => output,
                };
                let from = parsed.from.first().map(String::as_str).unwrap_or("");
                results = results.with_dkim_result(&output, from);
            }
            "dmarc" => {
                let r = dmarc_result(&verdict.result);
                let dmarc = DmarcOutput::new(verdict.prop("header.from").to_string())
                    .with_dkim_result(r.clone())
                    .with_spf_result(r);
                results = results.with_dmarc_result(&dmarc);
            }
            "iprev" => {
                let iprev = IprevOutput { result: iprev_result(&verdict.result), ptr: None };
                results = results.with_iprev_result(&iprev, ip);
            }
            "arc" => {
                arc_output = arc_output.with_result(if verdict.result == "pass" {
                    DkimResult::Pass
                } else {
                    DkimResult::Fail(Error::NotAligned)
                });
                results = results.with_arc_result(&arc_output, ip);
            }
            _ => {}
        }
    }
    for ((signature, seal), result) in parsed.ams_headers.iter().zip(&parsed.as_headers).zip(&parsed.aar_headers) {
        arc_output = arc_output.with_set(Set {
            signature: Header { name: signature.name, value: signature.value, header: &signature.header },
            seal: Header { name: seal.name, value: seal.value, header: &seal.header },
            results: Header { name: result.name, value: result.value, header: &result.header },
        });
    }
    let set = match sealer {
        KeyedSealer::Ed25519(s) => s.seal(&parsed, &results, &arc_output),
        KeyedSealer::Rsa(s) => s.seal(&parsed, &results, &arc_output),
    };
    match set {
        Ok(set) => Some(set.to_header()),
        Err(e) => {
            tracing::warn!(error = %e, "ARC sealing failed; forwarded without a seal");
            None
        }
    }
}

/// The verdicts of the topmost `Authentication-Results` header naming `authserv_id`.
fn our_results(parsed: &AuthenticatedMessage<'_>, authserv_id: &str) -> Option<Vec<Verdict>> {
    parsed
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case(b"Authentication-Results"))
        .map(|(_, value)| parse_results(&String::from_utf8_lossy(value)))
        .find(|(id, _)| id.eq_ignore_ascii_case(authserv_id))
        .map(|(_, verdicts)| verdicts)
}

/// RFC 8601, simply: comments dropped, `authserv-id [version]; method=result prop=value …; …`.
fn parse_results(value: &str) -> (String, Vec<Verdict>) {
    let mut plain = String::with_capacity(value.len());
    let mut depth = 0usize;
    for c in value.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            c if depth == 0 => plain.push(if c.is_whitespace() { ' ' } else { c }),
            _ => {}
        }
    }
    let mut parts = plain.split(';');
    let id = parts.next().unwrap_or("").split_whitespace().next().unwrap_or("").to_string();
    let verdicts = parts
        .filter_map(|part| {
            let mut words = part.split_whitespace();
            let (method, result) = words.next()?.split_once('=')?;
            let method = method.split('/').next().unwrap_or(method).to_ascii_lowercase();
            let props = words
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_ascii_lowercase(), v.trim_matches('"').to_string()))
                .collect();
            Some(Verdict { method, result: result.to_ascii_lowercase(), props })
        })
        .collect();
    (id, verdicts)
}

fn spf_result(result: &str) -> SpfResult {
    match result {
        "pass" => SpfResult::Pass,
        "fail" => SpfResult::Fail,
        "softfail" => SpfResult::SoftFail,
        "neutral" => SpfResult::Neutral,
        "temperror" => SpfResult::TempError,
        "permerror" => SpfResult::PermError,
        _ => SpfResult::None,
    }
}

fn dkim_result(result: &str) -> Option<DkimOutput<'static>> {
    Some(match result {
        "pass" => DkimOutput::pass(),
        "fail" => DkimOutput::fail(Error::NotAligned),
        "neutral" | "policy" => DkimOutput::neutral(Error::NotAligned),
        "temperror" => DkimOutput::temp_err(Error::NotAligned),
        "permerror" => DkimOutput::perm_err(Error::NotAligned),
        _ => return None,
    })
}

fn dmarc_result(result: &str) -> DmarcResult {
    match result {
        "pass" => DmarcResult::Pass,
        "fail" => DmarcResult::Fail(Error::NotAligned),
        "temperror" => DmarcResult::TempError(Error::NotAligned),
        "permerror" => DmarcResult::PermError(Error::NotAligned),
        _ => DmarcResult::None,
    }
}

fn iprev_result(result: &str) -> IprevResult {
    match result {
        "pass" => IprevResult::Pass,
        "fail" => IprevResult::Fail(Error::NotAligned),
        "temperror" => IprevResult::TempError(Error::NotAligned),
        "permerror" => IprevResult::PermError(Error::NotAligned),
        _ => IprevResult::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_read_without_comments() {
        let (id, verdicts) = parse_results(
            "mx.example.org 1;\r\n\tspf=pass (sender ok) smtp.mailfrom=a@b.example;\r\n\tdkim=fail header.d=b.example header.s=\"s1\"; arc=none",
        );
        assert_eq!(id, "mx.example.org");
        assert_eq!(verdicts.len(), 3);
        assert_eq!(verdicts[0].prop("smtp.mailfrom"), "a@b.example");
        assert_eq!(verdicts[1].result, "fail");
        assert_eq!(verdicts[1].prop("header.s"), "s1");
        assert_eq!(verdicts[2].method, "arc");
    }
}
