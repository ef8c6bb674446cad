//! `rspamd`: score a message with a running rspamd, and teach its Bayes classifier.
//!
//! ```toml
//! [plugins.rspamd]
//! url = "http://127.0.0.1:11333"              # the normal worker: /checkv2
//! controller_url = "http://127.0.0.1:11334"   # the controller: /learnspam, /learnham
//! password = "..."                            # the controller's password, if it has one
//! timeout_ms = 5000
//! ```
//! ```rhai
//! fn data(ctx, msg) {
//!     let r = rspamd::check(msg);   // #{score, required_score, action, symbols, thresholds, is_skipped}
//!     if r.action == "reject" { return reject(550, "5.7.1 spam"); }
//! }
//! ```
//! `check` passes the hook's envelope as rspamd's `From`, `Rcpt`, `IP`, `Helo` and `User`
//! request headers. The message is streamed as the request body with a `Content-Length`: a
//! message the daemon keeps in a file is read from it as it is sent, never copied whole into
//! memory. Each call ends within `timeout_ms`, capped by what is left of the hook's time; a
//! connection error, a timeout, an HTTP status other than 200 (208 for an already-learned
//! message) or an answer that is not rspamd's JSON is a script error. Answers are capped at
//! 1 MiB.
//!
//! Security: the URLs come from the config only. The message (untrusted) goes to rspamd as
//! it is; rspamd's answer is parsed as typed JSON and nothing else of it is used.
#![forbid(unsafe_code)]

mod reply;

use std::sync::Arc;
use std::time::Duration;

use mailflow_plugin::{error, parse_config, MessageSource, Plugin, PluginContext, PluginError};
use rhai::{Dynamic, EvalAltResult, Module};
use serde::Deserialize;

/// rspamd's answers are small JSON documents; anything larger is not one.
const MAX_REPLY: u64 = 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RspamdConfig {
    #[serde(default = "default_url")]
    url: String,
    #[serde(default = "default_controller_url")]
    controller_url: String,
    #[serde(default)]
    password: Option<String>,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
}

fn default_url() -> String {
    "http://127.0.0.1:11333".into()
}

fn default_controller_url() -> String {
    "http://127.0.0.1:11334".into()
}

fn default_timeout() -> u64 {
    5000
}

/// The `rspamd` plugin.
pub struct Rspamd {
    inner: Arc<Inner>,
}

struct Inner {
    check_url: String,
    learn_spam_url: String,
    learn_ham_url: String,
    password: Option<String>,
    timeout: Duration,
    agent: ureq::Agent,
    ctx: PluginContext,
}

/// Which Bayes class a message is taught as.
#[derive(Debug, Clone, Copy)]
enum Class {
    Spam,
    Ham,
}

impl Class {
    fn name(self) -> &'static str {
        match self {
            Class::Spam => "spam",
            Class::Ham => "ham",
        }
    }
}

/// `base` (an http or https URL without query) with `path` appended to its path.
fn endpoint(key: &str, base: &str, path: &str) -> Result<String, PluginError> {
    let parsed = url::Url::parse(base).map_err(|e| PluginError::config("rspamd", format!("{key}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.query().is_some() || !parsed.username().is_empty() {
        return Err(PluginError::config("rspamd", format!("{key}: want http://host:port or https://host:port")));
    }
    Ok(format!("{}/{path}", parsed.as_str().trim_end_matches('/')))
}

/// Builds the plugin from `[plugins.rspamd]`.
pub fn build(table: &toml::Table, ctx: &PluginContext) -> Result<Box<dyn Plugin>, PluginError> {
    let config: RspamdConfig = parse_config("rspamd", table)?;
    if config.timeout_ms == 0 {
        return Err(PluginError::config("rspamd", "timeout_ms must be above 0"));
    }
    // rspamd never redirects; a 3xx is an error, not a hop elsewhere with the message. Every
    // session may scan at once: keep that many connections to the scanner open (ureq keeps
    // three per host by default, and a new connection per message costs rspamd a handshake).
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .max_idle_connections(256)
        .max_idle_connections_per_host(256)
        .build()
        .into();
    Ok(Box::new(Rspamd {
        inner: Arc::new(Inner {
            check_url: endpoint("url", &config.url, "checkv2")?,
            learn_spam_url: endpoint("controller_url", &config.controller_url, "learnspam")?,
            learn_ham_url: endpoint("controller_url", &config.controller_url, "learnham")?,
            password: config.password,
            timeout: Duration::from_millis(config.timeout_ms),
            agent,
            ctx: ctx.clone(),
        }),
    }))
}

impl Inner {
    fn message(&self, msg: &Dynamic) -> Result<MessageSource, Box<EvalAltResult>> {
        self.ctx.host.message_source(msg).ok_or_else(|| error("rspamd: the argument must be msg"))
    }

    /// POSTs the message to `url` with `headers`; the status and the (capped) body.
    fn post(
        &self,
        url: &str,
        source: &MessageSource,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Vec<u8>), Box<EvalAltResult>> {
        let budget = self.ctx.call_budget(self.timeout);
        if budget.is_zero() {
            return Err(error("rspamd: no time left in the hook"));
        }
        let body = source.reader().map_err(|e| error(format!("rspamd: cannot read the message: {e}")))?;
        let mut request = self
            .agent
            .post(url)
            .config()
            .timeout_global(Some(budget))
            .build()
            // A length, not chunks: the body is streamed and rspamd knows its size up front.
            .header("content-length", source.len().to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut response = request.send(ureq::SendBody::from_owned_reader(body)).map_err(|e| match e {
            ureq::Error::Timeout(_) => error(format!("rspamd {url}: timed out after {} ms", budget.as_millis())),
            e => error(format!("rspamd {url}: {e}")),
        })?;
        let status = response.status().as_u16();
        let body = response.body_mut().with_config().limit(MAX_REPLY).read_to_vec().map_err(|e| match e {
            ureq::Error::Timeout(_) => error(format!("rspamd {url}: timed out after {} ms", budget.as_millis())),
            e => error(format!("rspamd {url}: reading the answer: {e}")),
        })?;
        Ok((status, body))
    }

    fn check(&self, msg: &Dynamic) -> Result<Dynamic, Box<EvalAltResult>> {
        let source = self.message(msg)?;
        let envelope = self.ctx.host.envelope().unwrap_or_default();
        let mut headers: Vec<(&str, &str)> = Vec::new();
        for (name, value) in [
            ("From", &envelope.sender),
            ("IP", &envelope.remote_ip),
            ("Helo", &envelope.helo),
            ("User", &envelope.auth_user),
        ] {
            if !value.is_empty() && is_header_safe(value) {
                headers.push((name, value));
            }
        }
        for rcpt in envelope.recipients.iter().filter(|r| is_header_safe(r)) {
            headers.push(("Rcpt", rcpt));
        }
        let (status, body) = self.post(&self.check_url, &source, &headers)?;
        if status != 200 {
            return Err(error(format!("rspamd: check answered {status}: {}", reply::error_text(&body))));
        }
        let map = reply::check(&body).map_err(|e| error(format!("rspamd: {e}")))?;
        Ok(map.into())
    }

    /// Teaches the message as `class`: `true` when learned now, `false` when rspamd had
    /// already learned it (HTTP 208), so running twice is harmless.
    fn learn(&self, msg: &Dynamic, class: Class) -> Result<bool, Box<EvalAltResult>> {
        let source = self.message(msg)?;
        let url = match class {
            Class::Spam => &self.learn_spam_url,
            Class::Ham => &self.learn_ham_url,
        };
        let mut headers = Vec::new();
        if let Some(password) = &self.password {
            headers.push(("Password", password.as_str()));
        }
        let (status, body) = self.post(url, &source, &headers)?;
        match status {
            200 => Ok(true),
            208 => Ok(false),
            _ => Err(error(format!(
                "rspamd: learning as {} answered {status}: {}",
                class.name(),
                reply::error_text(&body)
            ))),
        }
    }
}

/// Whether `value` can be sent as a header value as it is (no control characters): an
/// envelope field that is not is left out rather than sent mangled.
fn is_header_safe(value: &str) -> bool {
    value.bytes().all(|b| b >= 0x20 && b != 0x7f)
}

impl Plugin for Rspamd {
    fn name(&self) -> &'static str {
        "rspamd"
    }

    fn module(&self) -> Module {
        let mut module = Module::new();
        let inner = self.inner.clone();
        module.set_native_fn("check", move |msg: Dynamic| inner.check(&msg));
        let inner = self.inner.clone();
        module.set_native_fn("learn_spam", move |msg: Dynamic| inner.learn(&msg, Class::Spam));
        let inner = self.inner.clone();
        module.set_native_fn("learn_ham", move |msg: Dynamic| inner.learn(&msg, Class::Ham));
        module
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(endpoint("url", "http://127.0.0.1:11333", "checkv2").unwrap(), "http://127.0.0.1:11333/checkv2");
        assert_eq!(endpoint("url", "http://h:1/rspamd/", "checkv2").unwrap(), "http://h:1/rspamd/checkv2");
        for bad in ["ftp://h/", "h:11333", "http://u:p@h/", "http://h/?x=1", ""] {
            assert!(endpoint("url", bad, "checkv2").is_err(), "{bad}");
        }
    }

    #[test]
    fn header_safety() {
        assert!(is_header_safe("a@b.example"));
        assert!(!is_header_safe("a@b\r\nX-Evil: 1"));
    }
}
