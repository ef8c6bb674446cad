//! `http`: call webhooks and small HTTP APIs from scripts, only at URLs the config allows.
//!
//! ```toml
//! [plugins.http]
//! allow = ["https://hooks.example/"]   # URL prefixes; anything else is refused
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
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use mailflow_plugin::{error, parse_config, Plugin, PluginContext, PluginError};
use rhai::{Dynamic, EvalAltResult, Map, Module};
use serde::Deserialize;

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
    allow: Vec<String>,
    timeout: Duration,
    agent: ureq::Agent,
    ctx: PluginContext,
}

/// Builds the plugin from `[plugins.http]`.
pub fn build(table: &toml::Table, ctx: &PluginContext) -> Result<Box<dyn Plugin>, PluginError> {
    let config: HttpConfig = parse_config("http", table)?;
    for prefix in &config.allow {
        if !(prefix.starts_with("http://") || prefix.starts_with("https://")) {
            return Err(PluginError::config(
                "http",
                format!("allow: {prefix:?} is not an http:// or https:// URL prefix"),
            ));
        }
    }
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    Ok(Box::new(Http {
        inner: Arc::new(Inner {
            allow: config.allow,
            timeout: Duration::from_millis(config.timeout_ms),
            agent,
            ctx: ctx.clone(),
        }),
    }))
}

impl Inner {
    fn check(&self, url: &str) -> Result<Duration, Box<EvalAltResult>> {
        if !self.allow.iter().any(|prefix| url.starts_with(prefix.as_str())) {
            return Err(error(format!("http: {url:?} is not in [plugins.http] allow")));
        }
        let budget = self.ctx.call_budget(self.timeout);
        if budget.is_zero() {
            return Err(error("http: no time left in the hook"));
        }
        Ok(budget)
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
        let budget = self.check(url)?;
        let result = self.agent.get(url).config().timeout_global(Some(budget)).build().call();
        self.finish(url, result)
    }

    fn post_json(&self, url: &str, value: Map) -> Result<Dynamic, Box<EvalAltResult>> {
        let budget = self.check(url)?;
        let json = serde_json::to_vec(&Dynamic::from_map(value))
            .map_err(|e| error(format!("http: cannot encode JSON: {e}")))?;
        let result = self
            .agent
            .post(url)
            .config()
            .timeout_global(Some(budget))
            .build()
            .header("content-type", "application/json")
            .send(&json[..]);
        self.finish(url, result)
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
