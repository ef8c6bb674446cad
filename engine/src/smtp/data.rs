//! DATA: read the message, refuse what must be refused (bare line ends, size, mail loops),
//! run the `data` stage, apply its edits, and store the message durably before the 250.

use std::sync::Arc;

use tracing::Instrument;

use super::data_reader::{DataOutcome, DataReader};
use super::received::Trace;
use super::reply::Reply;
use super::session::{Flow, ReadError, Session};
use crate::message::{headers, MessageView};
use crate::script::{apply, Action, Stage, Verdict};
use crate::spool::{new_id, unix_now, Envelope, SpoolRecord};

impl Session {
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
        self.reply(Reply::plain(354, "End data with <CR><LF>.<CR><LF>"));
        self.flush().await?;
        let outcome = match self.read_data().await {
            Ok(outcome) => outcome,
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
        let id = new_id();
        let span = tracing::info_span!("message", id = %id);
        let reply = self.finish_message(id, tx, outcome).instrument(span).await;
        crate::prometheus::smtp_message(reply.code);
        self.reply(reply);
        Ok(Flow::Continue)
    }

    async fn read_data(&mut self) -> Result<DataOutcome, ReadError> {
        let mut reader = DataReader::new(self.config.smtp.max_message_size);
        // Message data comes in bulk: room for a typical message in one read (bigger ones grow
        // the buffer as they come, see `fill`).
        self.inbuf_mut().reserve(16 * 1024);
        let timeout = self.config.smtp.data_timeout;
        loop {
            let buffered = self.inbuf_mut();
            if !buffered.is_empty() {
                if let Some((outcome, used)) = reader.feed(buffered) {
                    buffered.drain(..used);
                    return Ok(outcome);
                }
                buffered.clear();
            }
            // A message in flight is finished even during shutdown (the grace period bounds it).
            self.fill(timeout, false).await?;
        }
    }

    async fn finish_message(&mut self, id: String, tx: super::session::Transaction, outcome: DataOutcome) -> Reply {
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
        let hops = headers::count(&outcome.body, "Received");
        if hops > config.smtp.max_received_headers {
            tracing::warn!(hops, "mail loop suspected");
            return Reply::new(554, "5.4.6", format!("Too many hops ({hops} Received headers): mail loop?"));
        }
        let helo = self.helo.clone().unwrap_or_default();
        let remote_ip = self.remote_text.clone();
        let trace = Trace {
            helo: &helo,
            remote_ip: &remote_ip,
            hostname: &config.smtp.hostname,
            protocol: &self.received_protocol(),
            tls: self.tls.as_ref(),
            id: &id,
            single_recipient: (tx.recipients.len() == 1).then(|| tx.recipients[0].as_str()),
        };
        let header = trace.header();
        let mut body = Vec::with_capacity(header.len() + outcome.body.len());
        body.extend_from_slice(header.as_bytes());
        body.extend_from_slice(&outcome.body);
        let body = Arc::new(body);

        let view = MessageView::new(body.clone());
        let mut context = self.context("");
        context.sender = tx.sender.clone();
        context.recipients = tx.recipients.clone();
        let decision = self.run_stage_for(Stage::Data, context, Some(&view), &id).await;
        if let Some(reply) = decision.refusal() {
            return reply;
        }
        if decision.verdict == Some(Verdict::Discard) {
            tracing::info!(sender = %tx.sender, recipients = %tx.recipients.join(","), decided_by = ?decision.decided_by, outcome = "discarded", "message discarded by script");
            return Reply::new(250, "2.0.0", format!("Ok: queued as {id}"));
        }
        let mut actions: Vec<Action> = tx.actions;
        actions.extend(decision.actions);
        let edited = if actions.iter().any(Action::edits_message) {
            Arc::new(apply::message_edits(&body, &actions))
        } else {
            body
        };
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
        };
        let size = edited.len();
        match self.shared.spool.store(record, edited).await {
            Ok(()) => {
                tracing::info!(sender = %tx.sender, recipients = %recipients.join(","), size, outcome = "queued", "message accepted");
                Reply::new(250, "2.0.0", format!("Ok: queued as {id}"))
            }
            Err(e) => {
                tracing::error!(error = %e, "spool failed: message not accepted");
                Reply::new(451, "4.3.0", "Local error: message not stored, try again later")
            }
        }
    }
}

impl Session {
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
