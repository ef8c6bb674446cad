//! `ctx`: who is talking and what the envelope says so far (docs/scripting.md). Read-only for scripts;
//! `ctx.add_rcpt`/`ctx.remove_rcpt` record actions instead of editing it.

use std::sync::Arc;

use serde::Serialize;

use crate::proto::authres::{IprevVerdict, SpfVerdict};

/// The facts a stage call can see. Strings are "" when not applicable.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Context {
    pub remote_ip: String,
    pub helo: String,
    pub tls: bool,
    pub auth_user: String,
    /// The role of the SMTP listener: "mx" or "submission" ("" for pollers).
    pub listener: String,
    /// Envelope MAIL FROM, "" for the null sender.
    pub sender: String,
    /// The recipient being checked (`rcpt_to`).
    pub rcpt: String,
    /// Recipients accepted so far (all of them at `data`).
    pub recipients: Vec<String>,
    pub account: String,
    pub protocol: String,
    pub mailbox: String,
    pub uid: String,
    /// SPF of the envelope sender (from `mail_from` on; "none" when not checked).
    pub spf: SpfVerdict,
    /// iprev of the client (from `connect` on).
    pub iprev: IprevVerdict,
}

/// The rhai-side handle: cheap to clone into every call.
#[derive(Debug, Clone)]
pub struct ScriptCtx(pub Arc<Context>);

impl ScriptCtx {
    pub fn new(context: Context) -> ScriptCtx {
        ScriptCtx(Arc::new(context))
    }
}
