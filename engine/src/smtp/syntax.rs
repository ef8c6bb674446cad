//! The replies to command lines that do not parse (RFC 5321 §4.2.4 codes with RFC 3463
//! enhanced status codes).
//!
//! Input: smtp-proto's parse error and the raw line. Output: the reply. Security: the line is
//! client input: only a verb that looks like one is echoed, without control characters.

use smtp_proto::Error as ProtoError;

use super::reply::Reply;

/// The reply for a line smtp-proto could not parse.
pub(crate) fn syntax_reply(error: &ProtoError, raw: &str) -> Reply {
    match error {
        ProtoError::UnknownCommand => {
            // Echo the verb only when it looks like one: a stray SASL line (base64 credentials
            // sent as a command) must not reach the reply or the log.
            let verb = raw.split_whitespace().next().unwrap_or("");
            if !verb.is_empty() && verb.len() <= 12 && verb.chars().all(|c| c.is_ascii_alphabetic()) {
                Reply::new(500, "5.5.2", format!("Syntax error, command unrecognized: {verb}"))
            } else {
                Reply::new(500, "5.5.2", "Syntax error, command unrecognized")
            }
        }
        ProtoError::InvalidSenderAddress => Reply::new(501, "5.1.7", "Bad sender address syntax"),
        ProtoError::InvalidRecipientAddress => Reply::new(501, "5.1.3", "Bad recipient address syntax"),
        ProtoError::SyntaxError { syntax } => Reply::new(501, "5.5.4", format!("Syntax: {syntax}")),
        ProtoError::InvalidParameter { param } => Reply::new(501, "5.5.4", format!("Invalid parameter {param}")),
        ProtoError::UnsupportedParameter { param } => {
            let param: String = param.chars().take(40).filter(|c| !c.is_control()).collect();
            Reply::new(555, "5.5.4", format!("Unsupported parameter {param}"))
        }
        ProtoError::NeedsMoreData { .. } => Reply::new(501, "5.5.2", "Incomplete command"),
        ProtoError::ResponseTooLong | ProtoError::InvalidResponse { .. } => Reply::new(500, "5.5.2", "Syntax error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtp_proto::Request;

    fn reply_for(line: &str) -> Option<Reply> {
        let raw = line.trim_end_matches(['\r', '\n']);
        Request::parse(&mut line.as_bytes().iter()).err().map(|e| syntax_reply(&e, raw))
    }

    #[test]
    fn command_edge_cases_get_the_contract_codes() {
        let code = |line: &str| reply_for(line).map(|r| (r.code, r.status));
        assert_eq!(code("FROB x\r\n"), Some((500, "5.5.2".into())));
        assert_eq!(code("\r\n"), Some((500, "5.5.2".into())));
        assert_eq!(code("MAIL FROM:a@b.c\r\n").map(|c| c.0), Some(501));
        assert_eq!(code("RCPT TO:<a@b.c> <d@e.f>\r\n").map(|c| c.0), Some(501));
        assert_eq!(code("MAIL FROM:<a@b.c> FROB=1\r\n").map(|c| c.0), Some(555));
        assert_eq!(code("NOOP\r\n"), None);
        assert_eq!(code("quit\n"), None);
    }

    #[test]
    fn unknown_verb_is_echoed_without_controls_and_short() {
        let reply = reply_for("\x1b[31mEVIL\x07VERB_THAT_IS_VERY_LONG_INDEED\r\n").unwrap();
        let wire = reply.to_wire();
        assert!(wire.starts_with("500 5.5.2 "), "{wire}");
        assert!(!wire[..wire.len() - 2].chars().any(char::is_control), "{wire:?}");
        assert!(wire.len() < 80, "{wire}");
    }
}
