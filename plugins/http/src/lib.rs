//! `http`: call webhooks and small HTTP APIs from scripts, only at URLs the config allows.
//!
//! ```toml
//! [plugins.http]
//! allow = ["https://hooks.example/"]   # scheme, host, port and path prefix; anything else is refused
//! timeout_ms = 5000
//! ```
//! ```rhai
//! fn data(ctx, msg) {
//!     if msg.subject.contains("invoice") {
//!         let r = http::post_json("https://hooks.example/notify", #{ subject: msg.subject, from: msg.from });
//!         if r.status != 200 { log("webhook answered " + r.status); }
//!     }
//! }
//! ```
//! Both functions return `#{status, body}` for any HTTP status; a refused URL, a connection
//! error or a timeout (its own `timeout_ms`, capped by what is left of the hook's time) is a
//! script error. Response bodies are capped at 1 MiB.
//!
//! Security: URLs come from scripts (and so, indirectly, from mail). Each is checked against
//! `allow` (see [`allow`]: parsed, compared by scheme, host, port and path segments, no
//! userinfo) and the normalized URL is what is sent. Redirects are never followed: a 3xx is
//! returned to the script as it is, so an allowed endpoint cannot send mailflow elsewhere.
#![forbid(unsafe_code)]

mod allow;

use std::sync::Arc;
use std::time::Duration;

use mailflow_plugin::{error, parse_config, Plugin, PluginContext, PluginError};
use rhai::{Dynamic, EvalAltResult, Map, Module};
use serde::Deserialize;

use allow::Allow;

const MAX_BODY: u64 = 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpConfig {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
}

fn default_timeout() -> u64 {
    5000
}

/// The `http` plugin.
pub struct Http {
    inner: Arc<Inner>,
}

struct Inner {
    allow: Allow,
    timeout: Duration,
    agent: ureq::Agent,
    ctx: PluginContext,
}

/// Builds the plugin from `[plugins.http]`.
pub fn build(table: &toml::Table, ctx: &PluginContext) -> Result<Box<dyn Plugin>, PluginError> {
    let config: HttpConfig = parse_config("http", table)?;
    let allow = Allow::parse(&config.allow).map_err(|e| PluginError::config("http", format!("allow: {e}")))?;
    // No redirects: a hop would go to a URL `allow` never saw.
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().into();
    Ok(Box::new(Http {
        inner: Arc::new(Inner { allow, timeout: Duration::from_millis(config.timeout_ms), agent, ctx: ctx.clone() }),
    }))
}

impl Inner {
    /// The URL to send (normalized) and the time the call may take.
    fn check(&self, url: &str) -> Result<(String, Duration), Box<EvalAltResult>> {
        let url = self.allow.check(url).map_err(|e| error(format!("http: {e}")))?;
        let budget = self.ctx.call_budget(self.timeout);
        if budget.is_zero() {
            return Err(error("http: no time left in the hook"));
        }
        Ok((url.into(), budget))
    }

    fn finish(
        &self,
        url: &str,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        let mut response = result.map_err(|e| error(format!("http {url}: {e}")))?;
        let status = i64::from(response.status().as_u16());
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(|e| error(format!("http {url}: reading the body: {e}")))?;
        let mut map = Map::new();
        map.insert("status".into(), status.into());
        map.insert("body".into(), body.into());
        Ok(Dynamic::from_map(map))
    }

    fn get(&self, url: &str) -> Result<Dynamic, Box<EvalAltResult>> {
        let (url, budget) = self.check(url)?;
        let result = self.agent.get(&url).config().timeout_global(Some(budget)).build().call();
        self.finish(&url, result)
    }

    fn post_json(&self, url: &str, value: Map) -> Result<Dynamic, Box<EvalAltResult>> {
        let (url, budget) = self.check(url)?;
        let json = serde_json::to_vec(&Dynamic::from_map(value))
            .map_err(|e| error(format!("http: cannot encode JSON: {e}")))?;
        let result = self
            .agent
            .post(&url)
            .config()
            .timeout_global(Some(budget))
            .build()
            .header("content-type", "application/json")
            .send(&json[..]);
        self.finish(&url, result)
    }
}

impl Plugin for Http {
    fn name(&self) -> &'static str {
        "http"
    }

    fn module(&self) -> Module {
        let mut module = Module::new();
        let inner = self.inner.clone();
        module.set_native_fn("get", move |url: &str| inner.get(url));
        let inner = self.inner.clone();
        module.set_native_fn("post_json", move |url: &str, value: Map| inner.post_json(url, value));
        module
    }
}
