//! DATA: read the message, refuse what must be refused (bare line ends, size, mail loops),
//! run the `data` stage, apply its edits, and store the message durably before the 250.

use std::sync::Arc;

use tracing::Instrument;

use super::data_reader::{DataOutcome, DataReader};
use super::received::Trace;
use super::reply::Reply;
use super::session::{Flow, ReadError, Session, SessionStream, State};
use crate::message::stored::{self, Held, BUDGET, SPILL_AT};
use crate::message::{headers, MessageView};
use crate::proto::authres::MessageAuth;
use crate::script::{apply, Action, Stage, Verdict};
use crate::spool::large::Staged;
use crate::spool::{new_id, unix_now, Envelope, SpoolRecord};
use crate::verify::message::without_forged_results;
use crate::verify::Peer;

/// Where the bytes of a message being read went besides the reader's buffer.
#[derive(Debug)]
pub(super) enum Staging {
    /// Nowhere: the message is small.
    None,
    /// Into a file of the spool.
    File(Staged),
    /// Writing the file failed: the rest is read and dropped, the answer is 451.
    Failed(std::io::Error),
}

impl Staging {
    /// Moves what the reader holds into the file (made on first use).
    fn take_from(&mut self, reader: &mut DataReader, create: impl FnOnce() -> std::io::Result<Staged>) {
        if matches!(self, Staging::None) {
            *self = match create() {
                Ok(staged) => Staging::File(staged),
                Err(e) => Staging::Failed(e),
            };
        }
        let result = match self {
            Staging::File(staged) => reader.take_pending(staged),
            _ => reader.take_pending(&mut std::io::sink()),
        };
        if let Err(e) = result {
            *self = Staging::Failed(e);
        }
    }
}

impl<S: SessionStream> Session<S> {
    pub(super) async fn handle_data(&mut self) -> std::io::Result<Flow> {
        match &self.tx {
            None => {
                self.reply(Reply::new(503, "5.5.1", "Need MAIL command"));
                return Ok(Flow::Continue);
            }
            Some(tx) if tx.recipients.is_empty() => {
                self.reply(Reply::new(503, "5.5.1", "Need RCPT command"));
                return Ok(Flow::Continue);
            }
            Some(_) => {}
        }
        // A session holds at most twice SPILL_AT before its message goes to a file (the
        // reader's buffer doubles past it).
        if !BUDGET.has_room(2 * SPILL_AT) {
            tracing::warn!(in_memory = BUDGET.used(), "max_inflight_memory reached: DATA refused for now");
            self.reply(Reply::new(
                451,
                "4.3.1",
                "Insufficient system resources: too much mail in flight, try again later",
            ));
            return Ok(Flow::Continue);
        }
        self.reply(Reply::plain(354, "End data with <CR><LF>.<CR><LF>"));
        self.flush().await?;
        let id = new_id();
        let mut held = BUDGET.hold(0);
        let (outcome, staged) = match self.read_data(&id, &mut held).await {
            Ok(read) => read,
            Err(ReadError::Io(e)) => return Err(e),
            Err(ReadError::Eof) => return Ok(Flow::Close),
            Err(ReadError::Timeout | ReadError::Shutdown) => {
                let hostname = self.config.smtp.hostname.clone();
                self.reply(Reply::new(421, "4.4.2", format!("{hostname} Error: timeout exceeded")));
                return Ok(Flow::Close);
            }
        };
        let Some(tx) = self.tx.take() else {
            return Ok(Flow::Continue);
        };
        let span = tracing::info_span!("message", id = %id);
        let reply = self.finish_message(id, tx, outcome, staged, &mut held).instrument(span).await;
        crate::prometheus::smtp_message(reply.code);
        self.reply(reply);
        Ok(Flow::Continue)
    }

    /// Reads the message. One over [`SPILL_AT`] goes to a file in the spool as it arrives
    /// (`Staged`, or a write error that makes the answer a 451): the session never holds more
    /// than a bounded buffer. `held` follows the memory the reader holds.
    async fn read_data(&mut self, id: &str, held: &mut Held) -> Result<(DataOutcome, Staging), ReadError> {
        let mut reader = DataReader::new(self.config.smtp.max_message_size);
        let mut staging = Staging::None;
        // Message data comes in bulk: room for a typical message in one read (bigger ones grow
        // the buffer as they come, see `fill`).
        self.inbuf_mut().reserve(16 * 1024);
        let timeout = self.config.smtp.data_timeout;
        self.state = State::Data;
        loop {
            let buffered = self.inbuf_mut();
            if !buffered.is_empty() {
                if let Some((outcome, used)) = reader.feed(buffered) {
                    buffered.drain(..used);
                    self.state = State::Command;
                    return Ok((outcome, staging));
                }
                buffered.clear();
            }
            if reader.pending() >= SPILL_AT {
                staging.take_from(&mut reader, || self.shared.spool.stage(id));
            }
            if reader.is_over() || matches!(staging, Staging::Failed(_)) {
                self.state = State::DrainData;
            }
            held.set(reader.capacity());
            // A message in flight is finished even during shutdown (the grace period bounds it).
            self.fill(timeout, false).await?;
        }
    }

    async fn finish_message(
        &mut self,
        id: String,
        tx: super::session::Transaction,
        outcome: DataOutcome,
        staging: Staging,
        held: &mut Held,
    ) -> Reply {
        let config = self.config.clone();
        if outcome.bare_line_ending {
            return Reply::new(554, "5.6.0", "Message contains bare CR or LF line endings; refused (RFC 5321 2.3.8)");
        }
        if outcome.oversize {
            return Reply::new(
                552,
                "5.3.4",
                format!("Message size exceeds fixed limit of {} bytes", config.smtp.max_message_size),
            );
        }
        let mut staged = match staging {
            Staging::None => None,
            Staging::File(staged) => Some(staged),
            Staging::Failed(e) => {
                return not_stored("cannot write the message file", &e);
            }
        };
        if let Some(file) = &mut staged {
            if let Err(e) = std::io::Write::write_all(file, &outcome.body) {
                return not_stored("cannot write the message file", &e);
            }
        }
        // The header block: the message itself when small, its start when in a file.
        let file_head = match &staged {
            None => None,
            Some(file) => match stored::header_block(&file.tail()) {
                Ok(head) => Some(head),
                Err(e) => {
                    return not_stored("cannot read the message file", &e);
                }
            },
        };
        let header_part = file_head.as_ref().map_or(outcome.body.as_slice(), |(_, block)| block.as_slice());
        let hops = headers::count(header_part, "Received");
        if hops > config.smtp.max_received_headers {
            tracing::warn!(hops, "mail loop suspected");
            return Reply::new(554, "5.4.6", format!("Too many hops ({hops} Received headers): mail loop?"));
        }
        let helo = self.helo.clone().unwrap_or_default();
        let remote_ip = self.remote_text.clone();
        // Checks on receipt (docs/authentication.md), on the message as it arrived.
        let verifier = self.shared.verifier.clone();
        let auth = match &verifier {
            Some(verifier) if self.verifies() => {
                let peer = Peer {
                    ip: self.remote_ip,
                    helo: helo.clone(),
                    sender: tx.sender.clone(),
                    spf: self.checks.spf.clone(),
                };
                Some(match &staged {
                    None => verifier.check_message(&outcome.body, &peer).await,
                    Some(file) => verifier.check_file(&file.tail(), peer).await,
                })
            }
            _ => None,
        };
        let trace = Trace {
            helo: &helo,
            remote_ip: &remote_ip,
            hostname: &config.smtp.hostname,
            protocol: &self.received_protocol(),
            tls: self.tls.as_ref(),
            id: &id,
            single_recipient: (tx.recipients.len() == 1).then(|| tx.recipients[0].as_str()),
        };
        let mut header = trace.header();
        let mut tail = staged.as_ref().map(Staged::tail);
        let mut block_end = file_head.as_ref().and_then(|(end, _)| *end);
        let mut header_part = header_part;
        // With a header block cleaned of forged results, the prefix holds the whole block.
        let mut cleaned_block = false;
        let cleaned = verifier.as_ref().and_then(|verifier| {
            let none = MessageAuth::default();
            let message = auth.as_ref().unwrap_or(&none);
            header.push_str(&verifier.report_header(
                &self.checks,
                &remote_ip,
                &helo,
                self.auth_user.as_deref(),
                message,
            ));
            without_forged_results(header_part, verifier.authserv_id())
        });
        if let Some(cleaned) = &cleaned {
            match (&mut tail, block_end) {
                (None, _) => header_part = cleaned,
                (Some(file_tail), Some(end)) => {
                    *file_tail = file_tail.skip(end as u64);
                    block_end = Some(0);
                    header_part = cleaned;
                    cleaned_block = true;
                }
                (Some(_), None) => tracing::warn!("header block too large: forged Authentication-Results kept"),
            }
        }
        let mut head = Vec::with_capacity(header.len() + header_part.len());
        head.extend_from_slice(header.as_bytes());
        head.extend_from_slice(header_part);
        let head = Arc::new(head);
        let view = match &tail {
            None => MessageView::new(head.clone()),
            Some(tail) => MessageView::spilled(
                if cleaned_block { head.clone() } else { Arc::new(header.into_bytes()) },
                head.clone(),
                tail.clone(),
                block_end,
                Vec::new(),
            ),
        };
        if let Some(auth) = auth {
            view.set_auth(auth);
        }
        drop(outcome);
        held.set(head.len());

        if let Some(reply) = self.header_from_policy(&view) {
            return reply;
        }
        let mut context = self.context("");
        context.sender = tx.sender.clone();
        context.recipients = tx.recipients.clone();
        let decision = self.run_stage_for(Stage::Data, context, Some(&view), &id).await;
        let trace_head = view.head().clone();
        let summary = crate::trace::Summary {
            source: "smtp",
            sender: &tx.sender,
            recipients: &tx.recipients,
            head: &trace_head,
            size: view.size() as u64,
        };
        if let Some(reply) = decision.refusal() {
            crate::trace::refused(&id, Some(&self.id), &summary, "rejected");
            return reply;
        }
        if decision.verdict == Some(Verdict::Discard) {
            crate::trace::refused(&id, Some(&self.id), &summary, "discarded");
            tracing::info!(sender = %tx.sender, recipients = %tx.recipients.join(","), decided_by = ?decision.decided_by, outcome = "discarded", "message discarded by script");
            return Reply::new(250, "2.0.0", format!("Ok: queued as {id}"));
        }
        let mut actions: Vec<Action> = tx.actions;
        actions.extend(decision.actions);
        let (stored, tail) = match apply::edited_message(&view, &actions) {
            Ok(parts) => parts,
            Err(e) => {
                return not_stored("cannot read the message file", &e);
            }
        };
        drop(view);
        if let (Some(file), Some(_)) = (&staged, &tail) {
            // The file and its name are on disk before the record that names them.
            let synced = match file.syncer() {
                Ok(sync) => tokio::task::spawn_blocking(sync).await.unwrap_or_else(|e| Err(std::io::Error::other(e))),
                Err(e) => Err(e),
            };
            if let Err(e) = synced {
                return not_stored("cannot sync the message file", &e);
            }
        }
        let recipients = apply::recipient_edits(&tx.recipients, &actions);
        let record = SpoolRecord {
            id: id.clone(),
            envelope: Envelope {
                sender: tx.sender.clone(),
                recipients: recipients.clone(),
                helo,
                remote_ip,
                tls: self.tls.is_some(),
                auth_user: self.auth_user.clone().unwrap_or_default(),
            },
            deliver_locally: !apply::redirected(&actions),
            actions: actions.into_iter().filter(|a| !a.edits_message()).collect(),
            received_at: unix_now(),
            tail: tail.clone(),
        };
        let size = stored.len() + tail.as_ref().map_or(0, |t| t.len as usize);
        match self.shared.spool.store(record, stored).await {
            Ok(()) => {
                if let (Some(file), Some(_)) = (staged, &tail) {
                    file.keep();
                }
                tracing::info!(sender = %tx.sender, recipients = %recipients.join(","), size, outcome = "queued", "message accepted");
                crate::trace::received(&id, Some(&self.id), &summary);
                Reply::new(250, "2.0.0", format!("Ok: queued as {id}"))
            }
            Err(e) => not_stored("spool failed", &e),
        }
    }
}

/// The 451 for a message that could not be kept, with the reason logged.
fn not_stored(what: &str, e: &dyn std::fmt::Display) -> Reply {
    tracing::error!(error = %e, "{what}: message not accepted");
    Reply::new(451, "4.3.0", "Local error: message not stored, try again later")
}

impl<S: SessionStream> Session<S> {
    /// RFC 3848's `with` keyword: SMTP, ESMTP, plus S for TLS and A for AUTH.
    fn received_protocol(&self) -> String {
        if !self.esmtp {
            return "SMTP".to_string();
        }
        let mut protocol = "ESMTP".to_string();
        if self.tls.is_some() {
            protocol.push('S');
        }
        if self.auth_user.is_some() {
            protocol.push('A');
        }
        protocol
    }
}
