//! HELO and EHLO: greet, run the `helo` stage, advertise the extensions.

use super::reply::Reply;
use super::session::{Flow, Session, SessionStream};
use crate::script::Stage;

impl<S: SessionStream> Session<S> {
    pub(super) async fn handle_helo(&mut self, host: String, esmtp: bool) -> Flow {
        // A new greeting resets any transaction (RFC 5321 §4.1.4).
        self.tx = None;
        self.scripts = self.shared.scripts.current();
        let mut context = self.context("");
        context.helo = host.clone();
        let decision = self.run_stage(Stage::Helo, context, None).await;
        if let Some(reply) = decision.refusal() {
            self.reply(reply);
            return Flow::Continue;
        }
        self.helo = Some(host);
        self.esmtp = esmtp;
        let config = &self.config.smtp;
        let mut lines: Vec<super::reply::Text> =
            vec![format!("{} greets {}", config.hostname, self.remote_text).into()];
        if esmtp {
            lines.extend([
                "PIPELINING".into(),
                format!("SIZE {}", config.max_message_size).into(),
                "8BITMIME".into(),
                "ENHANCEDSTATUSCODES".into(),
                "SMTPUTF8".into(),
                "HELP".into(),
            ]);
            if self.shared.tls.load().is_some() && self.tls.is_none() {
                lines.push("STARTTLS".into());
            }
            if self.auth_offered() {
                lines.push("AUTH PLAIN LOGIN".into());
            }
        }
        self.reply(Reply { code: 250, status: "".into(), lines });
        Flow::Continue
    }
}
