//! What a stage call produces: a verdict plus the ordered, typed actions the scripts asked
//! for. A stage call never does I/O; executors carry the actions out (or, in `mailflow test`,
//! only print them).

use serde::{Deserialize, Serialize};

use crate::proto::reply::Reply;

/// The script stages (docs/scripting.md), in the order a message meets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Connect,
    Helo,
    MailFrom,
    RcptTo,
    Data,
    Fetched,
}

// `Stage::ALL` lists the stages in declaration order, so `stage as usize` indexes tables built
// from it (the script set's files by stage, the compiled call statements). Checked at compile
// time.
const _: () = {
    let mut i = 0;
    while i < Stage::ALL.len() {
        assert!(Stage::ALL[i] as usize == i);
        i += 1;
    }
};

impl Stage {
    pub const ALL: [Stage; 6] =
        [Stage::Connect, Stage::Helo, Stage::MailFrom, Stage::RcptTo, Stage::Data, Stage::Fetched];

    /// The stage's name, which is also the script function's name.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Helo => "helo",
            Stage::MailFrom => "mail_from",
            Stage::RcptTo => "rcpt_to",
            Stage::Data => "data",
            Stage::Fetched => "fetched",
        }
    }

    /// How many arguments the stage function takes: `(ctx)` or `(ctx, msg)`.
    pub fn arity(self) -> usize {
        match self {
            Stage::Data | Stage::Fetched => 2,
            _ => 1,
        }
    }

    pub fn parse(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A script's decision for the stage. "No verdict" (pass to the next file) is `None` around it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Accept,
    Reject { code: u16, status: String, text: String },
    Tempfail { code: u16, status: String, text: String },
    Discard,
}

impl Verdict {
    /// The SMTP reply for a refusing verdict; `None` for accept and discard.
    pub fn reply(&self) -> Option<Reply> {
        match self {
            Verdict::Reject { code, status, text } | Verdict::Tempfail { code, status, text } => {
                Some(Reply::new(*code, status.clone(), text.clone()))
            }
            Verdict::Accept | Verdict::Discard => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Accept => "accept",
            Verdict::Reject { .. } => "reject",
            Verdict::Tempfail { .. } => "tempfail",
            Verdict::Discard => "discard",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Reject { code, status, text } | Verdict::Tempfail { code, status, text } => {
                write!(f, "{} {} {} {}", self.name(), code, status, text)
            }
            _ => f.write_str(self.name()),
        }
    }
}

/// Options of `msg.reply(#{...})`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplySpec {
    pub subject: Option<String>,
    pub body: String,
    pub from: Option<String>,
}

/// Options of `msg.vacation(#{...})`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VacationSpec {
    pub days: i64,
    pub subject: Option<String>,
    pub body: String,
    pub from: Option<String>,
    pub addresses: Vec<String>,
}

/// One thing a script asked for, in call order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    SetHeader {
        name: String,
        value: String,
    },
    AddHeader {
        name: String,
        value: String,
    },
    RemoveHeader {
        name: String,
    },
    SetSubject {
        text: String,
    },
    AddRcpt {
        addr: String,
    },
    RemoveRcpt {
        addr: String,
    },
    FileInto {
        folder: String,
    },
    Forward {
        addr: String,
    },
    Redirect {
        addr: String,
    },
    Reply(ReplySpec),
    Vacation(VacationSpec),
    Flag {
        flag: String,
    },
    MarkSeen,
    Delete,
    /// The message replaced by a plugin (`exec::rewrite`); applied in order with the header
    /// edits. Only the size is shown or stored: the bytes become the stored message.
    Rewrite {
        size: usize,
        #[serde(skip)]
        bytes: std::sync::Arc<Vec<u8>>,
    },
}

impl Action {
    /// Actions that edit the message itself (applied before it is stored).
    pub fn edits_message(&self) -> bool {
        matches!(
            self,
            Action::SetHeader { .. }
                | Action::AddHeader { .. }
                | Action::RemoveHeader { .. }
                | Action::SetSubject { .. }
                | Action::Rewrite { .. }
        )
    }

    /// Actions that send mail (carried out by the outbound queue).
    pub fn is_outbound(&self) -> bool {
        matches!(self, Action::Forward { .. } | Action::Redirect { .. } | Action::Reply(_) | Action::Vacation(_))
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::SetHeader { name, value } => write!(f, "set_header({name:?}, {value:?})"),
            Action::AddHeader { name, value } => write!(f, "add_header({name:?}, {value:?})"),
            Action::RemoveHeader { name } => write!(f, "remove_header({name:?})"),
            Action::SetSubject { text } => write!(f, "set_subject({text:?})"),
            Action::AddRcpt { addr } => write!(f, "add_rcpt({addr:?})"),
            Action::RemoveRcpt { addr } => write!(f, "remove_rcpt({addr:?})"),
            Action::FileInto { folder } => write!(f, "file_into({folder:?})"),
            Action::Forward { addr } => write!(f, "forward({addr:?})"),
            Action::Redirect { addr } => write!(f, "redirect({addr:?})"),
            Action::Reply(spec) => {
                write!(f, "reply(subject={:?}, from={:?}, body={} bytes)", spec.subject, spec.from, spec.body.len())
            }
            Action::Vacation(spec) => write!(
                f,
                "vacation(days={}, subject={:?}, from={:?}, addresses={:?}, body={} bytes)",
                spec.days,
                spec.subject,
                spec.from,
                spec.addresses,
                spec.body.len()
            ),
            Action::Flag { flag } => write!(f, "flag({flag:?})"),
            Action::MarkSeen => f.write_str("mark_seen()"),
            Action::Delete => f.write_str("delete()"),
            Action::Rewrite { size, .. } => write!(f, "rewrite({size} bytes)"),
        }
    }
}

/// A `log("...")` line from a script.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub file: String,
    pub text: String,
}

/// A script failure: runtime error, limit or timeout. Displayed as `FILE:LINE:COL: message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl std::fmt::Display for ScriptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.col, self.message)
    }
}

/// The outcome of one stage call over the whole script set.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Decision {
    /// `None`: no file decided, the stage's default (accept) applies.
    pub verdict: Option<Verdict>,
    /// The file whose stage function gave the verdict, when a script decided.
    pub decided_by: Option<String>,
    /// The line of the verdict call in that file (`reject(...)`), when known; for a script
    /// error, the error's line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<usize>,
    pub actions: Vec<Action>,
    pub logs: Vec<LogLine>,
    /// Set when a script failed; `verdict` then holds what `on_error` made of it.
    pub error: Option<ScriptError>,
}

impl Decision {
    /// Whether the stage refused (reject or tempfail).
    pub fn refusal(&self) -> Option<Reply> {
        self.verdict.as_ref().and_then(Verdict::reply)
    }

    /// The reply the receiver gives for this decision at `stage`. At `connect` a tempfail is
    /// `421` whatever code the script chose, and the connection is closed: RFC 5321 §3.1 lets
    /// a greeting be 220, 554 or 421 only.
    pub fn refusal_at(&self, stage: Stage) -> Option<Reply> {
        match (&self.verdict, stage) {
            (Some(Verdict::Tempfail { status, text, .. }), Stage::Connect) => {
                Some(Reply::new(421, status.clone(), text.clone()))
            }
            _ => self.refusal(),
        }
    }
}

impl Decision {
    /// This decision as a step of the message's trace (see [`crate::trace`]).
    pub fn trace_step(&self, stage: Stage, elapsed: std::time::Duration) -> crate::trace::Step {
        crate::trace::Step {
            stage: stage.name().to_string(),
            verdict: self.verdict.as_ref().map_or_else(|| "none".to_string(), |v| crate::trace::cut(&v.to_string())),
            decided_by: match (&self.decided_by, self.decided_at) {
                (Some(file), Some(line)) => Some(format!("{file}:{line}")),
                (file, _) => file.clone(),
            },
            error: self.error.as_ref().map(|e| crate::trace::cut(&e.to_string())),
            actions: self
                .actions
                .iter()
                .take(crate::trace::MAX_EVENTS)
                .map(|a| crate::trace::cut(&a.to_string()))
                .collect(),
            micros: elapsed.as_micros() as u64,
        }
    }
}
