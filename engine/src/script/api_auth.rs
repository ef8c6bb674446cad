//! The authentication verdicts in the script API: `ctx.spf`, `ctx.iprev` and `msg.auth`
//! (docs/scripting.md, docs/authentication.md). Read-only object maps built from the
//! verdicts of [`crate::verify`]; results are RFC 8601 keywords (`"pass"`, `"fail"`, ...).
//!
//! Every getter has its doc example, compiled by `tests/integration/test_docs.py`.

use rhai::{Array, Dynamic, Engine, ImmutableString, Map};

use super::context::ScriptCtx;
use crate::message::MessageView;
use crate::proto::authres::{DkimVerdict, MessageAuth};

/// Registers `ctx.spf` (a catalog entry: maps stay in rhai).
pub(crate) fn register_spf(engine: &mut Engine) {
    engine.register_get("spf", ctx_spf);
}

/// Registers `ctx.iprev`.
pub(crate) fn register_iprev(engine: &mut Engine) {
    engine.register_get("iprev", ctx_iprev);
}

/// Registers `msg.auth`.
pub(crate) fn register_auth(engine: &mut Engine) {
    engine.register_get("auth", msg_auth);
}

fn text(value: &str) -> Dynamic {
    Dynamic::from(ImmutableString::from(value))
}

fn map<const N: usize>(fields: [(&str, Dynamic); N]) -> Map {
    fields.into_iter().map(|(k, v)| (k.into(), v)).collect()
}

/// `ctx.spf`: the SPF verdict of the envelope sender's domain (RFC 7208), from `mail_from` on:
/// `#{result, domain}`. `result` is `"pass"`, `"fail"`, `"softfail"`, `"neutral"`, `"none"`,
/// `"temperror"` or `"permerror"`; `domain` is the domain checked (the HELO name for the
/// null sender). `"none"` and `""` when checks are off or the client authenticated.
///
/// ```rhai
/// fn mail_from(ctx) { if ctx.spf.result == "fail" { return reject("5.7.23 SPF check failed for " + ctx.spf.domain); } }
/// ```
fn ctx_spf(c: &mut ScriptCtx) -> Map {
    let spf = &c.0.spf;
    map([("result", text(spf.result.as_str())), ("domain", text(&spf.domain))])
}

/// `ctx.iprev`: whether the client's address has a name that leads back to it (forward-
/// confirmed reverse DNS), from `connect` on: `#{result, name}`; `result` is `"pass"`,
/// `"fail"`, `"temperror"`, `"permerror"` or `"none"`, `name` the PTR name ("" if none).
///
/// ```rhai
/// fn connect(ctx) { if ctx.iprev.result == "fail" { log("no forward-confirmed name for " + ctx.remote_ip); } }
/// ```
fn ctx_iprev(c: &mut ScriptCtx) -> Map {
    let iprev = &c.0.iprev;
    map([("result", text(iprev.result.as_str())), ("name", text(&iprev.name))])
}

/// `msg.auth`: the verdicts about the message, at `data`: `#{dkim, dmarc, arc}`.
/// - `dkim`: one `#{result, domain, selector, algorithm}` per DKIM-Signature (RFC 6376), in
///   header order; `result` is `"pass"`, `"fail"`, `"neutral"`, `"policy"` (a signature with
///   `l=`), `"temperror"` or `"permerror"`. Empty when the message is not signed.
/// - `dmarc`: `#{result, policy, domain, aligned}` (RFC 7489): `result` `"pass"`, `"fail"`,
///   `"none"`, `"temperror"` or `"permerror"`; `policy` what the From domain asks for
///   (`"reject"`, `"quarantine"`, `"none"`; `sp=` for a subdomain); `aligned` the identifiers
///   that passed in alignment (`["dkim", "spf"]`, either, or none).
/// - `arc`: `#{result}` (RFC 8617): `"pass"`, `"fail"` or `"none"`.
///
/// ```rhai
/// fn data(ctx, msg) {
///     if msg.auth.dmarc.result == "fail" && msg.auth.dmarc.policy == "reject" {
///         return reject("5.7.1 DMARC policy of " + msg.auth.dmarc.domain + " says reject");
///     }
///     for sig in msg.auth.dkim { log("dkim " + sig.domain + " " + sig.result); }
///     if "dkim" in msg.auth.dmarc.aligned { msg.add_header("X-Authenticated", "dkim"); }
///     if msg.auth.arc.result == "pass" { msg.add_header("X-ARC", "pass"); }
/// }
/// ```
fn msg_auth(m: &mut MessageView) -> Map {
    let empty = MessageAuth::default();
    let auth = m.auth().unwrap_or(&empty);
    let dkim: Array = auth.dkim.iter().map(|d| Dynamic::from_map(dkim_map(d))).collect();
    let dmarc = &auth.dmarc;
    let aligned: Array = dmarc.aligned.iter().map(|a| text(a)).collect();
    let dmarc = map([
        ("result", text(dmarc.result.as_str())),
        ("policy", text(dmarc.policy)),
        ("domain", text(&dmarc.domain)),
        ("aligned", Dynamic::from_array(aligned)),
    ]);
    let arc = map([("result", text(auth.arc.result.as_str()))]);
    map([("dkim", Dynamic::from_array(dkim)), ("dmarc", Dynamic::from_map(dmarc)), ("arc", Dynamic::from_map(arc))])
}

fn dkim_map(d: &DkimVerdict) -> Map {
    map([
        ("result", text(d.result.as_str())),
        ("domain", text(&d.domain)),
        ("selector", text(&d.selector)),
        ("algorithm", text(&d.algorithm)),
    ])
}
