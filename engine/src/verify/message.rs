//! The checks of a message's content at the end of DATA: every DKIM signature, ARC, DMARC;
//! and the removal of `Authentication-Results:` fields that claim to be ours.
//!
//! Input: the message as received (bytes in memory, or the spool file of a large message,
//! mapped rather than read) and the session's [`Peer`]. Output: a [`MessageAuth`].
//!
//! Limits: a message larger than `SPILL_AT` is mapped from its file and checked on the
//! blocking pool, so hashing a 25 MB body neither copies it into the heap nor stalls the
//! session thread. Signatures with a body length (`l=`) get `policy`: content appended after
//! the signed length would otherwise pass.

use std::sync::Arc;

use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::Policy;
use mail_auth::{AuthenticatedMessage, DkimResult, DmarcResult, Error as AuthError, SpfOutput, SpfResult};

use super::{Peer, Verifier};
use crate::message::headers;
use crate::message::stored::Tail;
use crate::proto::authres::{claims_authserv_id, ArcVerdict, DkimVerdict, DmarcVerdict, MessageAuth, Outcome};

impl Verifier {
    /// DKIM, ARC and DMARC of `raw` (the whole message as received).
    pub async fn check_message(&self, raw: &[u8], peer: &Peer) -> MessageAuth {
        let checks = self.run_checks(raw, peer);
        let auth = match tokio::time::timeout(self.deadline(), checks).await {
            Ok(auth) => auth,
            Err(_) => {
                tracing::info!("authentication checks timed out: temperror");
                MessageAuth {
                    dkim: vec![DkimVerdict {
                        result: Outcome::TempError,
                        reason: "DNS timeout".into(),
                        ..DkimVerdict::default()
                    }],
                    dmarc: DmarcVerdict { result: Outcome::TempError, ..DmarcVerdict::default() },
                    arc: ArcVerdict { result: Outcome::TempError },
                }
            }
        };
        log(&auth);
        auth
    }

    /// [`Self::check_message`] for a message kept in a spool file: the file is mapped, and
    /// the checks run on the blocking pool (hashing the body is CPU work proportional to it).
    pub async fn check_file(self: &Arc<Self>, tail: &Tail, peer: Peer) -> MessageAuth {
        let map = match map_tail(tail) {
            Ok(map) => map,
            Err(e) => {
                tracing::error!(error = %e, file = %tail.path.display(), "cannot map the message file: DKIM temperror");
                return MessageAuth {
                    dkim: vec![DkimVerdict { result: Outcome::TempError, ..DkimVerdict::default() }],
                    ..MessageAuth::default()
                };
            }
        };
        let verifier = self.clone();
        let handle = tokio::runtime::Handle::current();
        let (offset, len) = (tail.offset as usize, tail.len as usize);
        let checked = tokio::task::spawn_blocking(move || {
            let bytes = map.get(offset..offset.saturating_add(len)).unwrap_or(&[]);
            // The session thread's runtime keeps driving DNS I/O and timers meanwhile.
            handle.block_on(verifier.check_message(bytes, &peer))
        });
        checked.await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "authentication checks failed");
            MessageAuth::default()
        })
    }

    async fn run_checks(&self, raw: &[u8], peer: &Peer) -> MessageAuth {
        // Not strict: signatures with `l=` are parsed (and reported as `policy` below) rather
        // than dropped unseen.
        let Some(message) = AuthenticatedMessage::parse_with_opts(raw, None, false) else {
            return MessageAuth::default();
        };
        let dkim_output = self.authenticator.verify_dkim(self.params(&message)).await;
        let mut dkim: Vec<DkimVerdict> = message
            .errors
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(b"DKIM-Signature"))
            .map(|h| malformed(h.value, &h.header))
            .collect();
        // DMARC must not count a signature we refuse by policy: keep only the others for it.
        let mut counted = Vec::with_capacity(dkim_output.len());
        for output in dkim_output {
            let Some(signature) = output.signature() else {
                continue; // a malformed signature: reported from `message.errors` above
            };
            let verdict = dkim_verdict(output.result(), signature);
            if verdict.result != Outcome::Policy {
                counted.push(output);
            }
            dkim.push(verdict);
        }
        let arc_output = self.authenticator.verify_arc(self.params(&message)).await;
        let arc = ArcVerdict { result: dkim_outcome(arc_output.result()) };
        let arc = match arc.result {
            Outcome::Neutral | Outcome::PermError | Outcome::Policy => ArcVerdict { result: Outcome::Fail },
            _ => arc,
        };
        let mail_from_domain = peer.sender.rsplit_once('@').map_or(peer.helo.as_str(), |(_, d)| d).to_ascii_lowercase();
        let spf_output = SpfOutput::new(peer.spf.domain.clone()).with_result(spf_result(peer.spf.result));
        let dmarc_params = DmarcParameters::new(&message, &counted, &mail_from_domain, &spf_output);
        let output = self.authenticator.verify_dmarc(self.params(dmarc_params)).await;
        let result = match output.result() {
            DmarcResult::Pass => Outcome::Pass,
            DmarcResult::Fail(_) => Outcome::Fail,
            DmarcResult::TempError(_) => Outcome::TempError,
            DmarcResult::PermError(_) => Outcome::PermError,
            DmarcResult::None => Outcome::None,
        };
        let mut aligned = Vec::new();
        if *output.dkim_result() == DmarcResult::Pass {
            aligned.push("dkim");
        }
        if *output.spf_result() == DmarcResult::Pass {
            aligned.push("spf");
        }
        let policy = match (result, output.policy()) {
            (Outcome::None, _) => "none",
            (_, Policy::Reject) => "reject",
            (_, Policy::Quarantine) => "quarantine",
            _ => "none",
        };
        let dmarc = DmarcVerdict { result, policy, domain: output.domain().to_ascii_lowercase(), aligned };
        MessageAuth { dkim, dmarc, arc }
    }
}

/// One log line per message with every verdict: at info when a check could not be completed
/// (a DNS failure, a broken signature or record), else at debug (the header records them).
fn log(auth: &MessageAuth) {
    let dkim: Vec<String> = auth
        .dkim
        .iter()
        .map(|d| {
            if d.reason.is_empty() {
                format!("{}:{}", d.domain, d.result)
            } else {
                format!("{}:{} ({})", d.domain, d.result, d.reason)
            }
        })
        .collect();
    let troubled = |o: Outcome| matches!(o, Outcome::TempError | Outcome::PermError);
    let fields = (dkim.join(","), auth.dmarc.result, &auth.dmarc.domain, auth.dmarc.policy, auth.arc.result);
    if auth.dkim.iter().any(|d| troubled(d.result)) || troubled(auth.dmarc.result) || troubled(auth.arc.result) {
        tracing::info!(dkim = %fields.0, dmarc = %fields.1, dmarc_domain = %fields.2, dmarc_policy = fields.3, arc = %fields.4, "authentication checked");
    } else {
        tracing::debug!(dkim = %fields.0, dmarc = %fields.1, dmarc_domain = %fields.2, dmarc_policy = fields.3, arc = %fields.4, "authentication checked");
    }
}

fn dkim_outcome(result: &DkimResult) -> Outcome {
    match result {
        DkimResult::Pass => Outcome::Pass,
        DkimResult::Fail(_) => Outcome::Fail,
        // RFC 6376 §6.1.3: a body hash that does not match is a failed verification.
        DkimResult::Neutral(AuthError::Dkim(mail_auth::dkim::DkimError::FailedBodyHashMatch)) => Outcome::Fail,
        DkimResult::Neutral(_) => Outcome::Neutral,
        DkimResult::PermError(_) => Outcome::PermError,
        DkimResult::TempError(_) => Outcome::TempError,
        DkimResult::None => Outcome::None,
    }
}

fn dkim_verdict(result: &DkimResult, signature: &mail_auth::dkim::Signature) -> DkimVerdict {
    let mut outcome = dkim_outcome(result);
    let mut reason = match result {
        DkimResult::Pass | DkimResult::None => String::new(),
        DkimResult::Fail(e) | DkimResult::Neutral(e) | DkimResult::PermError(e) | DkimResult::TempError(e) => {
            e.to_string()
        }
    };
    if signature.l != 0 && outcome != Outcome::TempError {
        outcome = Outcome::Policy;
        reason = "signature covers only part of the body (l=)".into();
    }
    DkimVerdict {
        result: outcome,
        domain: signature.d.to_ascii_lowercase(),
        selector: signature.s.clone(),
        algorithm: match signature.a {
            mail_auth::common::crypto::Algorithm::RsaSha1 => "rsa-sha1",
            mail_auth::common::crypto::Algorithm::RsaSha256 => "rsa-sha256",
            mail_auth::common::crypto::Algorithm::Ed25519Sha256 => "ed25519-sha256",
        }
        .to_string(),
        reason,
    }
}

/// A DKIM-Signature mail-auth could not parse: `permerror` (RFC 6376 §6.1.1), with whatever
/// `d=`, `s=` and `a=` tags can be read from it.
fn malformed(value: &[u8], error: &AuthError) -> DkimVerdict {
    let tag = |name: &str| -> String {
        String::from_utf8_lossy(value)
            .split(';')
            .filter_map(|t| t.split_once('='))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.split_whitespace().collect::<String>())
            .unwrap_or_default()
            .chars()
            .take(253)
            .collect()
    };
    DkimVerdict {
        result: Outcome::PermError,
        domain: tag("d").to_ascii_lowercase(),
        selector: tag("s"),
        algorithm: tag("a"),
        reason: format!("malformed signature: {error}"),
    }
}

fn spf_result(outcome: Outcome) -> SpfResult {
    match outcome {
        Outcome::Pass => SpfResult::Pass,
        Outcome::Fail => SpfResult::Fail,
        Outcome::SoftFail => SpfResult::SoftFail,
        Outcome::Neutral => SpfResult::Neutral,
        Outcome::TempError => SpfResult::TempError,
        Outcome::PermError => SpfResult::PermError,
        Outcome::None | Outcome::Policy => SpfResult::None,
    }
}

/// The spool file of a large message, mapped.
fn map_tail(tail: &Tail) -> std::io::Result<memmap2::Mmap> {
    let file = std::fs::File::open(&tail.path)?;
    // SAFETY: a mapping is undefined behaviour only if the file changes under it. A staged
    // message file is written by this session alone, completely, before DATA ends; it is
    // then only renamed or unlinked (the mapping keeps the data), never written again.
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::Mmap::map(&file)? };
    Ok(map)
}

/// `raw` (a header block, or a whole message) without the `Authentication-Results` fields
/// that name `authserv_id`; `None` when there are none (RFC 8601 §5).
pub fn without_forged_results(raw: &[u8], authserv_id: &str) -> Option<Vec<u8>> {
    if headers::count(raw, "Authentication-Results") == 0 {
        return None;
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut pos = 0;
    let mut removed = 0;
    for (name, start, end) in headers::fields(raw) {
        if !name.eq_ignore_ascii_case("Authentication-Results") {
            continue;
        }
        let line = &raw[start..end];
        let value = memchr::memchr(b':', line).map_or(&b""[..], |colon| &line[colon + 1..]);
        if claims_authserv_id(value, authserv_id) {
            out.extend_from_slice(&raw[pos..start]);
            pos = end;
            removed += 1;
        }
    }
    if removed == 0 {
        return None;
    }
    tracing::info!(removed, "removed Authentication-Results fields that claimed our authserv-id");
    out.extend_from_slice(&raw[pos..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_results_go_and_others_stay() {
        let raw = b"Authentication-Results: mx.example.org; spf=pass\r\n\
                    Subject: hi\r\n\
                    Authentication-Results: other.example;\r\n\tdkim=pass\r\n\
                    authentication-results: (x) MX.EXAMPLE.ORG;\r\n\tdmarc=pass\r\n\
                    \r\n\
                    Authentication-Results: mx.example.org; body\r\n";
        let out = without_forged_results(raw, "mx.example.org").unwrap();
        assert_eq!(
            out,
            b"Subject: hi\r\nAuthentication-Results: other.example;\r\n\tdkim=pass\r\n\r\n\
              Authentication-Results: mx.example.org; body\r\n"
        );
        assert_eq!(without_forged_results(b"Subject: x\r\n\r\nbody", "mx.example.org"), None);
        assert_eq!(without_forged_results(&out, "mx.example.org"), None);
    }

    #[test]
    fn malformed_signatures_keep_their_names() {
        let v = malformed(b" v=1; a=rsa-sha256; d=Example.COM; s=sel\r\n 1; b=!!", &AuthError::Base64);
        assert_eq!(v.result, Outcome::PermError);
        assert_eq!(
            (v.domain.as_str(), v.selector.as_str(), v.algorithm.as_str()),
            ("example.com", "sel1", "rsa-sha256")
        );
    }
}
