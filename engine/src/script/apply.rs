//! Carrying out the SMTP-path actions that change the message or its envelope, shared by the
//! daemon and `mailflow test` (which prints the result instead of storing it).

use std::sync::Arc;

use super::decision::Action;
use crate::message::stored::Tail;
use crate::message::{headers, FileParts, MessageView};

/// The message after the header edits, in the order the scripts asked for them.
pub fn message_edits(raw: &[u8], actions: &[Action]) -> Vec<u8> {
    let mut current: Option<Vec<u8>> = None;
    for action in actions {
        let base = current.as_deref().unwrap_or(raw);
        let next = match action {
            Action::SetHeader { name, value } => headers::set(base, name, value),
            Action::AddHeader { name, value } => headers::prepend(base, name, value),
            Action::RemoveHeader { name } => headers::remove(base, name),
            Action::SetSubject { text } => headers::set(base, "Subject", text),
            Action::Rewrite { bytes, .. } => bytes.to_vec(),
            _ => continue,
        };
        current = Some(next);
    }
    current.unwrap_or_else(|| raw.to_vec())
}

/// The message after the scripts' edits, for storing: the bytes kept in memory and, for a
/// message kept in a file, the part that stays there. Header edits of such a message rewrite
/// only its header block (in memory, with the view's prefix); a rewrite of the whole message,
/// or a header block too large to have been found, reads it into memory.
pub fn edited_message(view: &MessageView, actions: &[Action]) -> std::io::Result<(Arc<Vec<u8>>, Option<Tail>)> {
    let edits = actions.iter().any(Action::edits_message);
    let Some(FileParts { prefix, tail, block_end }) = view.file_parts() else {
        return Ok(if edits {
            (Arc::new(message_edits(view.head(), actions)), None)
        } else {
            (view.head().clone(), None)
        });
    };
    if !edits {
        return Ok((prefix.clone(), Some(tail.clone())));
    }
    let edits_only_add = actions.iter().filter(|a| a.edits_message()).all(|a| matches!(a, Action::AddHeader { .. }));
    if edits_only_add {
        // A field added goes in front of everything: the prefix alone changes, wherever (and
        // whether) the header block ends.
        return Ok((Arc::new(message_edits(prefix, actions)), Some(tail.clone())));
    }
    match block_end {
        Some(end) if !actions.iter().any(|a| matches!(a, Action::Rewrite { .. })) => {
            Ok((Arc::new(message_edits(view.head(), actions)), Some(tail.skip(end as u64))))
        }
        _ => {
            let whole = view.raw();
            if whole.len() != view.size() {
                return Err(std::io::Error::other("message file unreadable"));
            }
            Ok((Arc::new(message_edits(whole, actions)), None))
        }
    }
}

/// The recipients after `add_rcpt` / `remove_rcpt`, without duplicates.
pub fn recipient_edits(recipients: &[String], actions: &[Action]) -> Vec<String> {
    let mut out: Vec<String> = recipients.to_vec();
    for action in actions {
        match action {
            Action::AddRcpt { addr } if !out.iter().any(|r| r.eq_ignore_ascii_case(addr)) => out.push(addr.clone()),
            Action::RemoveRcpt { addr } => out.retain(|r| !r.eq_ignore_ascii_case(addr)),
            _ => {}
        }
    }
    out
}

/// The folders `file_into` named, in order, without repeats (none: INBOX).
pub fn folders(actions: &[Action]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for action in actions {
        if let Action::FileInto { folder } = action {
            if !out.contains(&folder.as_str()) {
                out.push(folder);
            }
        }
    }
    out
}

/// The IMAP flags `flag` and `mark_seen` asked for.
pub fn flags(actions: &[Action]) -> Vec<&str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Flag { flag } => Some(flag.as_str()),
            Action::MarkSeen => Some("\\Seen"),
            _ => None,
        })
        .collect()
}

/// Whether a script redirected the message (then it is not delivered locally).
pub fn redirected(actions: &[Action]) -> bool {
    actions.iter().any(|a| matches!(a, Action::Redirect { .. }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_in_order() {
        let raw = b"Subject: old\r\nX-Spam: 1\r\n\r\nbody\r\n";
        let actions = vec![
            Action::RemoveHeader { name: "x-spam".into() },
            Action::SetSubject { text: "[tag] old".into() },
            Action::AddHeader { name: "X-Filed".into(), value: "yes".into() },
            Action::FileInto { folder: "A".into() },
        ];
        assert_eq!(message_edits(raw, &actions), b"X-Filed: yes\r\nSubject: [tag] old\r\n\r\nbody\r\n");
    }

    #[test]
    fn recipients() {
        let base = vec!["a@x.org".to_string(), "b@x.org".to_string()];
        let actions = vec![
            Action::AddRcpt { addr: "c@x.org".into() },
            Action::RemoveRcpt { addr: "A@x.org".into() },
            Action::AddRcpt { addr: "b@x.org".into() },
        ];
        assert_eq!(recipient_edits(&base, &actions), vec!["b@x.org", "c@x.org"]);
    }
}
