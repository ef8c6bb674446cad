"""Shared harness: start the real `mailflow` binary on a loopback port in a temp folder.

Every test gets its own folder, config, scripts folder and port. The daemon is started as a
subprocess exactly as a user would (`mailflow run --config FILE`), and stopped with SIGTERM (or
killed with SIGKILL where a test wants a crash).
"""

import os
import signal
import socket
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The binary test.sh built: where cargo put it (CARGO_TARGET_DIR, as cargo honours it), unless
# MAILFLOW_BIN names another.
BIN = Path(os.environ.get("MAILFLOW_BIN", Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "debug" / "mailflow"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"mailflow exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"port {port} not listening after {timeout}s")


def maildir_files(root, folder=None):
    """Message files (new/ and cur/) of a Maildir root, or of its `.Folder` sub-folder."""
    base = Path(root) if folder is None else Path(root) / ("." + folder.replace("/", "."))
    files = []
    for sub in ("new", "cur"):
        d = base / sub
        if d.is_dir():
            files.extend(sorted(p for p in d.iterdir() if p.is_file()))
    return files


def wait_for(predicate, timeout=5.0, interval=0.02):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def peak_rss_kb(pid):
    """The kernel's record of a process's peak resident memory (VmHWM), in kB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


class Daemon:
    """A running mailflow in its own folder."""

    def __init__(self, root: Path, config: str, scripts: dict, port: int):
        self.root = root
        self.port = port
        self.config_path = root / "mailflow.toml"
        self.config_path.write_text(config)
        self.scripts_dir = root / "scripts"
        self.scripts_dir.mkdir(exist_ok=True)
        for name, text in (scripts or {}).items():
            path = self.scripts_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))
        self.log_path = root / "mailflow.log"
        self.proc = None

    def start(self, env=None, wait=True):
        full_env = dict(os.environ)
        full_env.setdefault("RUST_LOG", "info")
        full_env.update(env or {})
        self.log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(BIN), "run", "--config", str(self.config_path)],
            cwd=self.root,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
        if wait:
            wait_port(self.port, proc=self.proc)
            self._check_it_is_ours()
        return self

    def _check_it_is_ours(self, timeout=5.0):
        """wait_port only proves that *something* listens on the port. When tests run in
        parallel (several engineers, one machine) another daemon may hold it, ours then exits
        with "cannot listen" and the test would talk to a stranger. `mailflow running` is logged
        once every listener is bound: wait for it, or for our process to die."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mailflow exited with {self.proc.returncode}:\n{self.log()[-2000:]}")
            if "mailflow running" in self.log():
                return
            time.sleep(0.01)
        # RUST_LOG may filter info lines out: then the process being alive is all we know.

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            self.log_file.close()
        return code

    def kill(self):
        return self.stop(signal.SIGKILL)

    def reload(self):
        self.proc.send_signal(signal.SIGHUP)

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def maildir(self, rcpt):
        return self.root / "data" / "mail" / rcpt.lower()

    def messages(self, rcpt, folder=None):
        return maildir_files(self.maildir(rcpt), folder)

    def write_script(self, name, text):
        """Atomically replace a script, as an editor saving via rename does."""
        tmp = self.scripts_dir / f".{name}.tmp"
        tmp.write_text(textwrap.dedent(text))
        os.replace(tmp, self.scripts_dir / name)


def make_config(port, extra_smtp="", extra=""):
    return textwrap.dedent(
        f"""\
        [smtp]
        listen = ["127.0.0.1:{port}"]
        hostname = "mx.test.example"
        local_domains = ["example.org", "test.example"]
        {extra_smtp}

        [delivery]
        maildir = "data/mail/{{local}}@{{domain}}"
        """
    ) + textwrap.dedent(extra)


@pytest.fixture
def daemon(tmp_path):
    """Factory: daemon(scripts={...}, extra_smtp="max_recipients = 3", extra="[scripts]\\n...")."""
    started = []

    def factory(scripts=None, extra_smtp="", extra="", start=True, config=None):
        port = free_port()
        text = config.format(port=port) if config else make_config(port, extra_smtp, extra)
        d = Daemon(tmp_path, text, scripts, port)
        started.append(d)
        if start:
            d.start()
        return d

    yield factory
    for d in started:
        try:
            d.stop(signal.SIGKILL)
        except Exception:
            pass


@pytest.fixture(scope="session", autouse=True)
def built_binary():
    if not BIN.exists():
        pytest.fail(f"{BIN} is missing: run `cargo build` first (test.sh does)")


# Tests that need IPv6 skip with this reason where the machine has none (pytest.fail would be
# wrong there); the terminal summary then names them loudly, so the gap is not overlooked.
NO_IPV6 = "no IPv6 on this machine"


def pytest_terminal_summary(terminalreporter):
    skipped = [
        r for r in terminalreporter.stats.get("skipped", [])
        if isinstance(r.longrepr, tuple) and NO_IPV6 in str(r.longrepr[2])
    ]
    if skipped:
        terminalreporter.section("NOT RUN: no IPv6 on this machine", sep="!", red=True, bold=True)
        for r in skipped:
            terminalreporter.write_line(f"SKIPPED (no IPv6, IPv6 behaviour untested): {r.nodeid}", red=True, bold=True)
    # Other tests that could not run here skip with a reason starting "NOT RUN:".
    not_run = [
        r for r in terminalreporter.stats.get("skipped", [])
        if isinstance(r.longrepr, tuple) and "NOT RUN:" in str(r.longrepr[2])
    ]
    if not_run:
        terminalreporter.section("NOT RUN", sep="!", red=True, bold=True)
        for r in not_run:
            terminalreporter.write_line(f"SKIPPED {r.nodeid}: {r.longrepr[2]}", red=True, bold=True)
