//! rspamd's JSON answers, read into what scripts see: `/checkv2` → `#{score, required_score,
//! action, symbols, thresholds, is_skipped}`, and the `error` text of a refused request.
//!
//! Input: the response body, already capped by the caller. A body that is not the JSON rspamd
//! sends (a proxy's HTML page, a truncated answer, a missing `score`) is an error, never a
//! guess.

use std::collections::BTreeMap;

use rhai::{Dynamic, Map};
use serde::Deserialize;

/// Why an answer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    #[error("not an rspamd check reply: {0}")]
    Json(#[from] serde_json::Error),
}

#[derive(Debug, Deserialize)]
struct CheckReply {
    score: f64,
    required_score: f64,
    action: String,
    #[serde(default)]
    is_skipped: bool,
    #[serde(default)]
    symbols: BTreeMap<String, Symbol>,
    #[serde(default)]
    thresholds: BTreeMap<String, f64>,
}

#[derive(Debug, Deserialize)]
struct Symbol {
    #[serde(default)]
    score: f64,
}

/// The script value of a `/checkv2` answer.
pub fn check(body: &[u8]) -> Result<Map, ReplyError> {
    let reply: CheckReply = serde_json::from_slice(body)?;
    let mut symbols = Map::new();
    for (name, symbol) in reply.symbols {
        symbols.insert(name.into(), Dynamic::from_float(symbol.score));
    }
    let mut thresholds = Map::new();
    for (action, score) in reply.thresholds {
        thresholds.insert(action.into(), Dynamic::from_float(score));
    }
    let mut map = Map::new();
    map.insert("score".into(), Dynamic::from_float(reply.score));
    map.insert("required_score".into(), Dynamic::from_float(reply.required_score));
    map.insert("action".into(), reply.action.into());
    map.insert("is_skipped".into(), reply.is_skipped.into());
    map.insert("symbols".into(), symbols.into());
    map.insert("thresholds".into(), thresholds.into());
    Ok(map)
}

/// The `error` field rspamd puts in a refusal, else the start of the body (lossy, short).
pub fn error_text(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Refusal {
        error: String,
    }
    match serde_json::from_slice::<Refusal>(body) {
        Ok(r) => r.error,
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtube_reply() {
        let body = br#"{"is_skipped":false,"score":15.0,"required_score":15.0,"action":"reject",
            "thresholds":{"reject":15.0,"add header":6.0,"greylist":4.0},
            "symbols":{"GTUBE":{"name":"GTUBE","score":0.0,"metric_score":0.0},
                       "MIME_GOOD":{"name":"MIME_GOOD","score":-0.1}},
            "messages":{"smtp_message":"Gtube pattern"},"message-id":"x@y"}"#;
        let map = check(body).unwrap();
        assert_eq!(map["score"].as_float().unwrap(), 15.0);
        assert_eq!(map["action"].clone().into_string().unwrap(), "reject");
        let symbols = map["symbols"].clone().cast::<Map>();
        assert_eq!(symbols["MIME_GOOD"].as_float().unwrap(), -0.1);
        assert!(symbols.contains_key("GTUBE"));
        let thresholds = map["thresholds"].clone().cast::<Map>();
        assert_eq!(thresholds["add header"].as_float().unwrap(), 6.0);
    }

    #[test]
    fn not_a_check_reply_is_an_error() {
        for body in [&b""[..], b"<html>bad gateway</html>", b"{\"score\":1.0}", b"{\"score\":\"x\"", b"[]"] {
            assert!(check(body).is_err(), "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn refusal_text() {
        assert_eq!(error_text(br#"{"error":"already learned"}"#), "already learned");
        assert_eq!(error_text(b"  plain text \n"), "plain text");
        assert_eq!(error_text(&[b'x'; 1000]).len(), 200);
    }
}
