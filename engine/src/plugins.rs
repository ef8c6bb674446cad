//! The compiled-in plugins (crates under `plugins/`) and the glue that lets them see the
//! daemon: which are enabled (`[plugins] enabled`), their config tables, and the [`Host`]
//! services they call back into (hook deadline, message bytes, message rewrite).
//!
//! A plugin that is not enabled registers nothing, and scripts run with rhai's strict
//! variables mode, so `kv::get` without `kv` enabled fails to compile with a message naming
//! the module.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailflow_plugin::{Envelope, Host, MessageSource, Plugin, PluginContext, PluginError};
use rhai::Dynamic;

use crate::config::PluginsConfig;
use crate::message::MessageView;
use crate::script::set::EngineHook;
use crate::script::{sandbox, Action, Stage};

pub use crate::config::AVAILABLE_PLUGINS as AVAILABLE;

type Builder = fn(&toml::Table, &PluginContext) -> Result<Box<dyn Plugin>, PluginError>;

fn builder(name: &str) -> Option<Builder> {
    match name {
        "kv" => Some(mailflow_plugin_kv::build),
        "http" => Some(mailflow_plugin_http::build),
        "exec" => Some(mailflow_plugin_exec::build),
        "rspamd" => Some(mailflow_plugin_rspamd::build),
        "spamd" => Some(mailflow_plugin_spamd::build),
        _ => None,
    }
}

/// The daemon side of [`Host`].
pub struct EngineHost;

impl Host for EngineHost {
    fn hook_time_left(&self) -> Option<Duration> {
        sandbox::with(|s| s.deadline.saturating_duration_since(Instant::now()))
    }

    fn message_source(&self, value: &Dynamic) -> Option<MessageSource> {
        let view = value.clone().try_cast::<MessageView>()?;
        Some(match view.file_parts() {
            Some(parts) => MessageSource::File {
                prefix: parts.prefix.clone(),
                path: parts.tail.path.clone(),
                offset: parts.tail.offset,
                len: parts.tail.len,
            },
            None => MessageSource::Memory(view.raw().clone()),
        })
    }

    fn rewrite_message(&self, bytes: Vec<u8>) -> Result<(), String> {
        match sandbox::stage() {
            Stage::Data | Stage::Fetched => {
                sandbox::push_action(Action::Rewrite { size: bytes.len(), bytes: Arc::new(bytes) });
                Ok(())
            }
            stage => Err(format!("a message rewrite is only possible in the data and fetched stages, not {stage}")),
        }
    }

    fn envelope(&self) -> Option<Envelope> {
        let ctx = sandbox::with(|s| s.ctx.clone()).flatten()?;
        let c = &ctx.0;
        Some(Envelope {
            sender: c.sender.clone(),
            recipients: c.recipients.clone(),
            remote_ip: c.remote_ip.clone(),
            helo: c.helo.clone(),
            auth_user: c.auth_user.clone(),
        })
    }
}

/// Builds the enabled plugins; an unknown name or a bad table is an error naming it.
pub fn build(
    config: &PluginsConfig,
    store: Arc<redb::Database>,
    state_dir: &Path,
) -> Result<Vec<Box<dyn Plugin>>, PluginError> {
    let ctx = PluginContext { store, state_dir: state_dir.to_path_buf(), host: Arc::new(EngineHost) };
    let empty = toml::Table::new();
    let mut plugins = Vec::new();
    for name in &config.enabled {
        let build = builder(name).ok_or_else(|| PluginError::Setup {
            plugin: "enabled",
            message: format!("unknown plugin {name:?}; available: {}", AVAILABLE.join(", ")),
        })?;
        let table = match name.as_str() {
            "kv" => config.kv.as_ref(),
            "http" => config.http.as_ref(),
            "exec" => config.exec.as_ref(),
            "rspamd" => config.rspamd.as_ref(),
            "spamd" => config.spamd.as_ref(),
            _ => None,
        };
        plugins.push(build(table.unwrap_or(&empty), &ctx)?);
        tracing::debug!(plugin = %name, "plugin enabled");
    }
    Ok(plugins)
}

/// A table for a plugin that is not enabled is still checked (a typo in it is an error now, not
/// when the plugin is switched on later): built once and dropped.
fn check_disabled(config: &PluginsConfig, store: &Arc<redb::Database>, state_dir: &Path) -> Result<(), PluginError> {
    let tables = [
        ("kv", &config.kv),
        ("http", &config.http),
        ("exec", &config.exec),
        ("rspamd", &config.rspamd),
        ("spamd", &config.spamd),
    ];
    let disabled: Vec<String> = tables
        .iter()
        .filter(|(name, table)| table.is_some() && !config.enabled.iter().any(|e| e == name))
        .map(|(name, _)| name.to_string())
        .collect();
    if disabled.is_empty() {
        return Ok(());
    }
    let check = PluginsConfig { enabled: disabled, ..config.clone() };
    build(&check, store.clone(), state_dir).map(drop)
}

/// The engine hook that registers each plugin's module under its name.
pub fn engine_hook(plugins: Vec<Box<dyn Plugin>>) -> Arc<EngineHook> {
    let modules: Vec<(&'static str, rhai::Shared<rhai::Module>)> =
        plugins.iter().map(|p| (p.name(), rhai::Shared::new(p.module()))).collect();
    Arc::new(move |engine: &mut rhai::Engine| {
        for (name, module) in &modules {
            engine.register_static_module(*name, module.clone());
        }
    })
}

/// The engine hook for `config`'s enabled plugins over `store` (`None` when none is enabled).
pub fn hook_for(
    config: &crate::config::Config,
    store: Arc<redb::Database>,
) -> Result<Option<Arc<EngineHook>>, PluginError> {
    check_disabled(&config.plugins, &store, &config.state.dir)?;
    if config.plugins.enabled.is_empty() {
        return Ok(None);
    }
    let plugins = build(&config.plugins, store, &config.state.dir)?;
    Ok(Some(engine_hook(plugins)))
}
