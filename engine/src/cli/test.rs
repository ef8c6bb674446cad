//! `mailflow test`: the dry run. Runs one stage's scripts on a message with the state the
//! daemon would see and prints the verdict, the deciding file, every action, the log lines and
//! the resulting recipients and headers — carrying out nothing (like `sieve-test`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use serde::Serialize;

use crate::config::LoadedConfig;
use crate::errln;
use crate::message::{headers, MessageView};
use crate::script::{apply, Action, Context, Decision, ScriptCtx, ScriptSet, Stage};

#[derive(Debug, Args)]
pub struct TestArgs {
    /// connect, helo, mail_from, rcpt_to, data or fetched.
    #[arg(long, value_parser = parse_stage)]
    pub stage: Stage,
    /// Envelope sender (MAIL FROM); empty for the null sender.
    #[arg(long, default_value = "")]
    pub from: String,
    /// Envelope recipient; repeat for several. At `rcpt_to` the stage runs once per recipient.
    #[arg(long = "to")]
    pub to: Vec<String>,
    /// Client address as the scripts see it.
    #[arg(long, default_value = "127.0.0.1")]
    pub remote_ip: String,
    /// HELO name as the scripts see it.
    #[arg(long, default_value = "localhost")]
    pub helo: String,
    /// The session ran over TLS (`ctx.tls`).
    #[arg(long)]
    pub tls: bool,
    /// The authenticated user (`ctx.auth_user`); empty: not authenticated.
    #[arg(long, default_value = "")]
    pub auth_user: String,
    /// `fetched`: the account name (`ctx.account`).
    #[arg(long, default_value = "")]
    pub account: String,
    /// `fetched`: imap or pop3 (`ctx.protocol`).
    #[arg(long, default_value = "imap", value_parser = ["imap", "pop3"])]
    pub protocol: String,
    /// `fetched`: the mailbox polled (`ctx.mailbox`).
    #[arg(long, default_value = "INBOX")]
    pub mailbox: String,
    /// `fetched`: the message's UID (IMAP) or UIDL (POP3) (`ctx.uid`).
    #[arg(long, default_value = "")]
    pub uid: String,
    /// `fetched`: a flag the message has on the server (`msg.flags`); repeat for several.
    #[arg(long = "flag")]
    pub flags: Vec<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// The message (.eml).
    pub message: PathBuf,
}

fn parse_stage(s: &str) -> Result<Stage, String> {
    Stage::parse(s)
        .ok_or_else(|| format!("unknown stage {s:?}: use connect, helo, mail_from, rcpt_to, data or fetched"))
}

/// One stage call's result, as printed.
#[derive(Debug, Serialize)]
struct RunReport {
    /// The recipient checked (rcpt_to only).
    #[serde(skip_serializing_if = "Option::is_none")]
    rcpt: Option<String>,
    verdict: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply: Option<String>,
    decided_by: Option<String>,
    actions: Vec<Action>,
    logs: Vec<String>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct Report {
    stage: Stage,
    runs: Vec<RunReport>,
    /// Recipients after add_rcpt/remove_rcpt.
    recipients: Vec<String>,
    /// Subject and header fields after the header edits.
    subject: String,
    headers: Vec<(String, String)>,
    /// What the outbound actions would do: sent, or suppressed and why (RFC 3834 rules).
    outbound: Vec<String>,
}

/// Returns the exit code: 0, or 1 when the config or a script failed.
pub fn run(config: Option<&Path>, args: &TestArgs) -> i32 {
    let loaded = match LoadedConfig::load(config) {
        Ok(loaded) => loaded,
        Err(e) => {
            errln!("{e}");
            return 1;
        }
    };
    // Plugins run against a throw-away in-memory store: a dry run changes nothing.
    let extend = match crate::state::in_memory()
        .map_err(|e| e.to_string())
        .and_then(|store| crate::plugins::hook_for(&loaded.config, store).map_err(|e| e.to_string()))
    {
        Ok(extend) => extend,
        Err(e) => {
            errln!("{e}");
            return 1;
        }
    };
    let set = match ScriptSet::compile(&loaded.config.scripts, extend.as_deref()) {
        Ok(set) => set,
        Err(errors) => {
            for e in errors {
                errln!("{e}");
            }
            return 1;
        }
    };
    let raw = match std::fs::read(&args.message) {
        Ok(raw) => raw,
        Err(e) => {
            errln!("{}: cannot read: {e}", args.message.display());
            return 1;
        }
    };
    match dry_run(&loaded.config, &set, args, raw) {
        Ok((text, failed)) => {
            emit(&text);
            i32::from(failed)
        }
        Err(e) => {
            errln!("{e}");
            1
        }
    }
}

/// The dry run on `raw` with a compiled set: the report (JSON when `args.json`), and whether a
/// script failed. Also what the status page's "Try a script" shows.
pub fn dry_run(
    config: &crate::config::Config,
    set: &ScriptSet,
    args: &TestArgs,
    raw: Vec<u8>,
) -> Result<(String, bool), String> {
    let fetched = args.stage == Stage::Fetched;
    let view = MessageView::with_flags(Arc::new(raw.clone()), if fetched { args.flags.clone() } else { Vec::new() });
    let only_fetched = |value: &String| if fetched { value.clone() } else { String::new() };
    // A message mailflow received carries its verdicts: replay them (docs/authentication.md).
    let (iprev, spf) = match replayed_results(&raw, config.auth.authserv_id_or(&config.smtp.hostname)) {
        Some((iprev, spf, auth)) if !fetched => {
            view.set_auth(auth);
            (iprev, spf)
        }
        _ => Default::default(),
    };
    let base = Context {
        remote_ip: if fetched { String::new() } else { args.remote_ip.clone() },
        helo: if matches!(args.stage, Stage::Connect | Stage::Fetched) { String::new() } else { args.helo.clone() },
        tls: args.tls && !fetched,
        auth_user: if fetched { String::new() } else { args.auth_user.clone() },
        sender: args.from.clone(),
        recipients: args.to.clone(),
        account: only_fetched(&args.account),
        protocol: only_fetched(&args.protocol),
        mailbox: only_fetched(&args.mailbox),
        uid: only_fetched(&args.uid),
        spf: if matches!(args.stage, Stage::MailFrom | Stage::RcptTo | Stage::Data) { spf } else { Default::default() },
        iprev,
        ..Context::default()
    };
    let msg = matches!(args.stage, Stage::Data | Stage::Fetched).then_some(&view);
    let mut runs = Vec::new();
    let mut all_actions = Vec::new();
    // The envelope's recipients as the daemon would hold them: at `rcpt_to` only those the
    // scripts did not refuse (a refused RCPT is never added), in order.
    let mut recipients = args.to.clone();
    if args.stage == Stage::RcptTo {
        let mut accepted: Vec<String> = Vec::new();
        for rcpt in &args.to {
            let context = Context { rcpt: rcpt.clone(), recipients: accepted.clone(), ..base.clone() };
            let decision = set.call(Stage::RcptTo, &ScriptCtx::new(context), None, "test");
            if decision.refusal().is_none() {
                if !accepted.iter().any(|r| r.eq_ignore_ascii_case(rcpt)) {
                    accepted.push(rcpt.clone());
                }
                all_actions.extend(decision.actions.clone());
            }
            runs.push(report(Some(rcpt.clone()), Stage::RcptTo, decision));
        }
        recipients = accepted;
    } else {
        let decision = set.call(args.stage, &ScriptCtx::new(base), msg, "test");
        all_actions.extend(decision.actions.clone());
        runs.push(report(None, args.stage, decision));
    }
    let edited = apply::message_edits(&raw, &all_actions);
    let edited_view = MessageView::new(Arc::new(edited.clone()));
    let own = crate::deliver::own_addresses(&config.smtp.hostname, &config.smtp.local_domains);
    let outbound = outbound_preview(&view, &args.from, recipients.first().map(String::as_str), &all_actions, &own);
    let report = Report {
        outbound,
        stage: args.stage,
        recipients: apply::recipient_edits(&recipients, &all_actions),
        subject: edited_view.subject().to_string(),
        headers: headers::fields(&edited)
            .into_iter()
            .map(|(name, start, end)| {
                let text = String::from_utf8_lossy(&edited[start..end]);
                let value = text.split_once(':').map(|(_, v)| headers::unfold(v)).unwrap_or_default();
                (name, value)
            })
            .collect(),
        runs,
    };
    let failed = report.runs.iter().any(|r| r.error.is_some());
    if args.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| format!("cannot print JSON: {e}"))?;
        Ok((format!("{text}\n"), failed))
    } else {
        Ok((text_of(&report), failed))
    }
}

/// What the daemon would do with each outbound action, with the same suppression checks (the
/// vacation memory of a dry run is empty: a real daemon may also suppress a repeat).
fn outbound_preview(
    view: &MessageView,
    sender: &str,
    rcpt: Option<&str>,
    actions: &[Action],
    own: &[String],
) -> Vec<String> {
    use crate::outbound::autoreply;
    let rcpt = rcpt.unwrap_or("");
    let outcome = |what: &str, checked: Result<(), autoreply::Suppressed>| match checked {
        Ok(()) => format!("{what}: would be sent to <{sender}> from <>"),
        Err(reason) => format!("{what}: suppressed: {reason}"),
    };
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Forward { addr } => Some(format!("forward: a copy would be sent to <{addr}>")),
            Action::Redirect { addr } => Some(format!("redirect: would be sent to <{addr}> instead of local delivery")),
            Action::Reply(_) => Some(outcome("reply", autoreply::check_reply(view, sender, own))),
            Action::Vacation(spec) => {
                Some(outcome("vacation", autoreply::check_vacation(view, sender, rcpt, spec, own)))
            }
            _ => None,
        })
        .collect()
}

fn report(rcpt: Option<String>, stage: Stage, decision: Decision) -> RunReport {
    let closes = stage == Stage::Connect && matches!(decision.verdict, Some(crate::script::Verdict::Tempfail { .. }));
    RunReport {
        rcpt,
        verdict: decision.verdict.as_ref().map_or("accept", |v| v.name()).to_string(),
        reply: decision.refusal_at(stage).map(|r| {
            if closes {
                format!("{r} (and the connection is closed)")
            } else {
                r.to_string()
            }
        }),
        decided_by: decision.decided_by.clone(),
        actions: decision.actions,
        logs: decision.logs.iter().map(|l| format!("{}: {}", l.file, l.text)).collect(),
        error: decision.error.map(|e| e.to_string()),
    }
}

/// The report as text.
fn text_of(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "stage: {}", report.stage);
    for run in &report.runs {
        if let Some(rcpt) = &run.rcpt {
            let _ = writeln!(out, "rcpt: {rcpt}");
        }
        match (&run.reply, &run.decided_by) {
            (Some(reply), Some(file)) => {
                let _ = writeln!(out, "verdict: {} {} (by {file})", run.verdict, reply);
            }
            (None, Some(file)) => {
                let _ = writeln!(out, "verdict: {} (by {file})", run.verdict);
            }
            (Some(reply), None) => {
                let _ = writeln!(out, "verdict: {} {}", run.verdict, reply);
            }
            (None, None) => {
                let _ = writeln!(out, "verdict: accept (default: no script decided)");
            }
        }
        if let Some(error) = &run.error {
            let _ = writeln!(out, "error: {error}");
        }
        for action in &run.actions {
            let _ = writeln!(out, "action: {action}");
        }
        for line in &run.logs {
            let _ = writeln!(out, "log: {line}");
        }
    }
    if !report.recipients.is_empty() {
        let _ = writeln!(out, "recipients: {}", report.recipients.join(", "));
    }
    for line in &report.outbound {
        let _ = writeln!(out, "outbound: {line}");
    }
    let _ = writeln!(out, "subject: {}", report.subject);
    let _ = writeln!(out, "headers:");
    for (name, value) in &report.headers {
        let _ = writeln!(out, "  {name}: {value}");
    }
    out
}

/// Prints to stdout; a reader that went away ends the command quietly.
fn emit(text: &str) {
    crate::cli::output::write_out(format_args!("{text}"));
}

/// The verdicts of the first `Authentication-Results` field of `raw` that names `authserv_id`.
fn replayed_results(
    raw: &[u8],
    authserv_id: &str,
) -> Option<(crate::proto::authres::IprevVerdict, crate::proto::authres::SpfVerdict, crate::proto::authres::MessageAuth)>
{
    use crate::proto::authres::{claims_authserv_id, parse_header};
    headers::fields(raw).into_iter().find_map(|(name, start, end)| {
        let line = &raw[start..end];
        let value = &line[memchr::memchr(b':', line)? + 1..];
        (name.eq_ignore_ascii_case("Authentication-Results") && claims_authserv_id(value, authserv_id))
            .then(|| parse_header(&String::from_utf8_lossy(value)))
    })
}
