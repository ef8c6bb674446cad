//! `exec`: run an external program configured by name, with the message on stdin.
//!
//! ```toml
//! [plugins.exec]
//! timeout_ms = 5000
//! [plugins.exec.commands]
//! classify = ["/usr/bin/bogofilter", "-T"]   # argv, never a shell string
//! ```
//! ```rhai
//! fn data(ctx, msg) {
//!     let r = exec::pipe("classify", msg);      // #{code, stdout}
//!     if r.stdout.starts_with("S") { msg.file_into("Junk"); }
//!     exec::rewrite("strip-attachments", msg);   // the command's stdout replaces the message
//! }
//! ```
//! Scripts name a command; they never supply argv or a shell string. Each run is bounded by
//! `timeout_ms` and by what is left of the hook's time; a command still running then is
//! killed and the call fails (a script error: `on_error` applies). Output is capped.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailflow_plugin::{error, parse_config, Plugin, PluginContext, PluginError};
use rhai::{Dynamic, EvalAltResult, Map, Module};
use serde::Deserialize;

/// Output beyond this is an error (a rewrite could otherwise grow a message without bound).
const MAX_OUTPUT: usize = 64 * 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecConfig {
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
    #[serde(default)]
    commands: BTreeMap<String, Vec<String>>,
}

fn default_timeout() -> u64 {
    5000
}

/// The `exec` plugin.
pub struct Exec {
    inner: Arc<Inner>,
}

struct Inner {
    commands: BTreeMap<String, Vec<String>>,
    timeout: Duration,
    ctx: PluginContext,
}

/// Builds the plugin from `[plugins.exec]`.
pub fn build(table: &toml::Table, ctx: &PluginContext) -> Result<Box<dyn Plugin>, PluginError> {
    let config: ExecConfig = parse_config("exec", table)?;
    for (name, argv) in &config.commands {
        if argv.is_empty() || argv[0].is_empty() {
            return Err(PluginError::config("exec", format!("commands.{name}: argv is empty")));
        }
    }
    Ok(Box::new(Exec {
        inner: Arc::new(Inner {
            commands: config.commands,
            timeout: Duration::from_millis(config.timeout_ms),
            ctx: ctx.clone(),
        }),
    }))
}

/// A finished command.
struct Output {
    code: i64,
    stdout: Vec<u8>,
}

impl Inner {
    fn run(&self, name: &str, input: &[u8]) -> Result<Output, Box<EvalAltResult>> {
        let argv = self
            .commands
            .get(name)
            .ok_or_else(|| error(format!("exec: no command named {name:?} in [plugins.exec.commands]")))?;
        let budget = self.ctx.call_budget(self.timeout);
        if budget.is_zero() {
            return Err(error(format!("exec {name}: no time left in the hook")));
        }
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .spawn()
            .map_err(|e| error(format!("exec {name}: cannot start {:?}: {e}", argv[0])))?;
        // Feed stdin and drain stdout on their own threads so a command that writes before
        // reading cannot deadlock us.
        let mut stdin = child.stdin.take();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            if let Some(stdin) = stdin.as_mut() {
                let _ = stdin.write_all(&input);
            }
        });
        let mut stdout = child.stdout.take();
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            if let Some(stdout) = stdout.as_mut() {
                let _ = stdout.take(MAX_OUTPUT as u64 + 1).read_to_end(&mut out);
            }
            out
        });
        let deadline = Instant::now() + budget;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(error(format!("exec {name}: timed out after {} ms", budget.as_millis())));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                Err(e) => return Err(error(format!("exec {name}: {e}"))),
            }
        };
        let _ = writer.join();
        let stdout = reader.join().unwrap_or_default();
        if stdout.len() > MAX_OUTPUT {
            return Err(error(format!("exec {name}: output larger than {MAX_OUTPUT} bytes")));
        }
        Ok(Output { code: status.code().map_or(-1, i64::from), stdout })
    }

    fn message(&self, msg: &Dynamic) -> Result<Arc<Vec<u8>>, Box<EvalAltResult>> {
        self.ctx.host.message_bytes(msg).ok_or_else(|| error("exec: the second argument must be msg"))
    }
}

impl Plugin for Exec {
    fn name(&self) -> &'static str {
        "exec"
    }

    fn module(&self) -> Module {
        let mut module = Module::new();
        let inner = self.inner.clone();
        module.set_native_fn("pipe", move |name: &str, msg: Dynamic| {
            let bytes = inner.message(&msg)?;
            let out = inner.run(name, &bytes)?;
            let mut map = Map::new();
            map.insert("code".into(), out.code.into());
            map.insert("stdout".into(), String::from_utf8_lossy(&out.stdout).into_owned().into());
            Ok(Dynamic::from_map(map))
        });
        let inner = self.inner.clone();
        module.set_native_fn("rewrite", move |name: &str, msg: Dynamic| {
            let bytes = inner.message(&msg)?;
            let out = inner.run(name, &bytes)?;
            if out.code != 0 {
                return Err(error(format!("exec {name}: exited with {}; message left unchanged", out.code)));
            }
            if out.stdout.is_empty() {
                return Err(error(format!("exec {name}: empty output; message left unchanged")));
            }
            inner.ctx.host.rewrite_message(out.stdout).map_err(error)?;
            Ok(())
        });
        module
    }
}
