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
//!
//! Security: each command runs in a process group of its own. A run is over when the command
//! has exited and its stdout is closed, or at the deadline: then the whole group gets SIGKILL
//! and the output is no longer waited for, so a background child holding stdout open
//! (`sleep 15 & echo started`) is a timeout, not a hook stretched past its time. Whatever a
//! command that finished in time left running in its group is killed too.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rustix::process::{kill_process_group, waitid, Pid, Signal, WaitId, WaitIdOptions};

use mailflow_plugin::{error, parse_config, MessageSource, Plugin, PluginContext, PluginError};
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
    fn run(&self, name: &str, input: MessageSource) -> Result<Output, Box<EvalAltResult>> {
        let argv = self
            .commands
            .get(name)
            .ok_or_else(|| error(format!("exec: no command named {name:?} in [plugins.exec.commands]")))?;
        let budget = self.ctx.call_budget(self.timeout);
        if budget.is_zero() {
            return Err(error(format!("exec {name}: no time left in the hook")));
        }
        let finished = run_command(argv, input, budget)
            .map_err(|e| error(format!("exec {name}: cannot run {:?}: {e}", argv[0])))?;
        let Some((code, stdout)) = finished else {
            return Err(error(format!("exec {name}: timed out after {} ms", budget.as_millis())));
        };
        if stdout.len() > MAX_OUTPUT {
            return Err(error(format!("exec {name}: output larger than {MAX_OUTPUT} bytes")));
        }
        Ok(Output { code, stdout })
    }

    fn message(&self, msg: &Dynamic) -> Result<MessageSource, Box<EvalAltResult>> {
        self.ctx.host.message_source(msg).ok_or_else(|| error("exec: the second argument must be msg"))
    }
}

/// Runs `argv` (not empty) with `input` streamed on stdin (a large message from its file,
/// never copied whole into memory), for at most `budget`: its exit code and stdout (up to one
/// byte past [`MAX_OUTPUT`]), or `None` on a timeout.
fn run_command(argv: &[String], input: MessageSource, budget: Duration) -> std::io::Result<Option<(i64, Vec<u8>)>> {
    let deadline = Instant::now() + budget;
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .process_group(0)
        .spawn()?;
    let group = Pid::from_child(&child);
    // Feed stdin and drain stdout on their own threads so a command that writes before
    // reading cannot deadlock us. Neither is joined: a process that left the group (setsid)
    // may hold the pipes open past the deadline.
    let mut stdin = child.stdin.take();
    std::thread::spawn(move || {
        if let Some(stdin) = stdin.as_mut() {
            let _ = input.write_to(stdin);
        }
    });
    let mut stdout = child.stdout.take();
    let (output_tx, output_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(stdout) = stdout.as_mut() {
            let _ = stdout.take(MAX_OUTPUT as u64 + 1).read_to_end(&mut out);
        }
        let _ = output_tx.send(out);
    });
    wait_until(&mut child, group, &output_rx, deadline)
}

/// Waits until `child` has exited and its output is complete (every holder of its stdout,
/// background children included, closed it), or until `deadline`. Then kills its process
/// `group` either way — what it left running, or the whole command at the deadline — and
/// reaps it. `None` when the deadline came first.
fn wait_until(
    child: &mut Child,
    group: Pid,
    output: &mpsc::Receiver<Vec<u8>>,
    deadline: Instant,
) -> std::io::Result<Option<(i64, Vec<u8>)>> {
    // WNOWAIT: the leader stays a zombie, so its pid (the group id) cannot be reused before
    // the group is killed.
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    let mut exited = false;
    let mut stdout = None;
    let result = loop {
        if !exited {
            match waitid(WaitId::Pid(group), options) {
                Ok(status) => exited = status.is_some(),
                Err(e) => break Err(e),
            }
        }
        if stdout.is_none() {
            stdout = output.try_recv().ok();
        }
        if exited && stdout.is_some() {
            break Ok(true);
        }
        if Instant::now() >= deadline {
            break Ok(false);
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let _ = kill_process_group(group, Signal::KILL);
    let status = child.wait()?;
    Ok(match (result?, stdout) {
        (true, Some(stdout)) => Some((status.code().map_or(-1, i64::from), stdout)),
        _ => None,
    })
}

impl Plugin for Exec {
    fn name(&self) -> &'static str {
        "exec"
    }

    fn module(&self) -> Module {
        let mut module = Module::new();
        let inner = self.inner.clone();
        module.set_native_fn("pipe", move |name: &str, msg: Dynamic| {
            let source = inner.message(&msg)?;
            let out = inner.run(name, source)?;
            let mut map = Map::new();
            map.insert("code".into(), out.code.into());
            map.insert("stdout".into(), String::from_utf8_lossy(&out.stdout).into_owned().into());
            Ok(Dynamic::from_map(map))
        });
        let inner = self.inner.clone();
        module.set_native_fn("rewrite", move |name: &str, msg: Dynamic| {
            let source = inner.message(&msg)?;
            let out = inner.run(name, source)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(input: &[u8]) -> MessageSource {
        MessageSource::Memory(Arc::new(input.to_vec()))
    }

    #[test]
    fn a_file_part_is_streamed_to_stdin() {
        let dir = std::env::temp_dir().join(format!("mf-exec-{}", std::process::id()));
        std::fs::write(&dir, b"xxBODY\n").unwrap();
        let source =
            MessageSource::File { prefix: Arc::new(b"Head: 1\n".to_vec()), path: dir.clone(), offset: 2, len: 5 };
        let out = run_command(&sh("cat"), source, Duration::from_secs(5)).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(out, Some((0, b"Head: 1\nBODY\n".to_vec())));
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    /// Whether a process whose command line is exactly `cmdline` exists.
    fn running(cmdline: &str) -> bool {
        std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
            std::fs::read(entry.path().join("cmdline")).is_ok_and(|raw| {
                raw.split(|&b| b == 0).filter(|a| !a.is_empty()).collect::<Vec<_>>().join(&b' ') == cmdline.as_bytes()
            })
        })
    }

    #[test]
    fn output_and_exit_code() {
        let out = run_command(&sh("tr a-z A-Z; exit 3"), bytes(b"hello"), Duration::from_secs(5)).unwrap();
        assert_eq!(out, Some((3, b"HELLO".to_vec())));
    }

    #[test]
    fn a_background_child_holding_stdout_is_a_timeout() {
        let started = Instant::now();
        let out = run_command(&sh("sleep 14.5 & echo started"), bytes(b""), Duration::from_millis(300)).unwrap();
        assert_eq!(out, None);
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        std::thread::sleep(Duration::from_millis(50));
        assert!(!running("sleep 14.5"), "the background child was left running");
    }

    #[test]
    fn a_hung_command_is_killed_with_its_group() {
        let started = Instant::now();
        let out = run_command(&sh("sleep 14.6; echo never"), bytes(b""), Duration::from_millis(300)).unwrap();
        assert_eq!(out, None);
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        std::thread::sleep(Duration::from_millis(50));
        assert!(!running("sleep 14.6"));
    }

    #[test]
    fn children_left_behind_by_a_finished_command_are_killed() {
        let out = run_command(&sh("sleep 14.7 >/dev/null & echo done"), bytes(b""), Duration::from_secs(5)).unwrap();
        assert_eq!(out, Some((0, b"done\n".to_vec())));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!running("sleep 14.7"), "the background child leaked");
    }
}
