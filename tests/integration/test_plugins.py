"""Plugins (issue #7): kv, http and exec against the running daemon with real clients,
a real HTTP server on loopback and real commands."""

import http.server
import json
import os
import smtplib
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import BIN, wait_for


def send(port, subject, rcpt="me@example.org", body="hello world\r\n"):
    msg = f"From: a@sender.example\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\n{body}"
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        return s.sendmail("a@sender.example", [rcpt], msg.encode())


def send_expect_code(port, subject, rcpt="me@example.org"):
    try:
        send(port, subject, rcpt)
        return 250
    except smtplib.SMTPDataError as e:
        return e.smtp_code
    except smtplib.SMTPRecipientsRefused as e:
        return list(e.recipients.values())[0][0]
    except smtplib.SMTPSenderRefused as e:
        return e.smtp_code


def header_of(path, name):
    for line in path.read_text(errors="replace").split("\n"):
        if line.lower().startswith(name.lower() + ":"):
            return line.split(":", 1)[1].strip()
    return None


KV_SCRIPT = """
fn data(ctx, msg) {
    if msg.subject == "set" { kv::set("persist", "yes"); }
    else if msg.subject == "set-ttl" { kv::set("short", "v", 1); }
    else if msg.subject == "query" {
        msg.set_header("X-Persist", "" + kv::get("persist"));
        msg.set_header("X-Short", "" + kv::get("short"));
        msg.set_header("X-Count", "" + kv::get("n"));
    } else { kv::incr("n"); }
}
"""

KV_CONFIG = "[plugins]\nenabled = [\"kv\"]\n"


def test_kv_survives_restart(daemon):
    d = daemon(scripts={"10-kv.rhai": KV_SCRIPT}, extra=KV_CONFIG)
    send(d.port, "set")
    assert d.stop() == 0
    d.start()
    send(d.port, "query")
    files = wait_for(lambda: d.messages("me@example.org") if len(d.messages("me@example.org")) == 2 else None)
    query = [f for f in files if "Subject: query" in f.read_text()][0]
    assert header_of(query, "X-Persist") == "yes"


def test_kv_ttl_expiry(daemon):
    d = daemon(scripts={"10-kv.rhai": KV_SCRIPT}, extra=KV_CONFIG)
    send(d.port, "set-ttl")
    send(d.port, "query")
    time.sleep(2.2)
    send(d.port, "query")
    files = wait_for(lambda: d.messages("me@example.org") if len(d.messages("me@example.org")) == 3 else None)
    queries = sorted((f for f in files if "Subject: query" in f.read_text()), key=lambda f: f.stat().st_mtime)
    assert header_of(queries[0], "X-Short") == "v"
    assert header_of(queries[1], "X-Short") == ""


def test_kv_concurrent_incr_exact(daemon):
    d = daemon(scripts={"10-kv.rhai": KV_SCRIPT}, extra=KV_CONFIG)
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda i: send(d.port, f"m{i}"), range(100)))
    assert all(r == {} for r in results)
    send(d.port, "query")
    files = wait_for(lambda: d.messages("me@example.org") if len(d.messages("me@example.org")) == 101 else None, timeout=20)
    query = [f for f in files if "Subject: query" in f.read_text()][0]
    assert header_of(query, "X-Count") == "100"


class Hooks(http.server.BaseHTTPRequestHandler):
    received = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path.startswith("/slow"):
            time.sleep(3)
        Hooks.received.append((self.path, self.headers.get("content-type"), body))
        self.send_response(201)
        self.end_headers()
        self.wfile.write(b"created")

    def do_GET(self):
        if self.path.startswith("/slow"):
            time.sleep(3)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"pong")

    def log_message(self, *args):
        pass


@pytest.fixture
def hook_server():
    Hooks.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


HTTP_SCRIPT = """
fn data(ctx, msg) {
    if msg.subject == "notify" {
        let r = http::post_json(URL + "/hook", #{ subject: msg.subject, from: msg.from });
        msg.set_header("X-Status", "" + r.status);
        msg.set_header("X-Body", r.body);
    } else if msg.subject == "ping" {
        let r = http::get(URL + "/ping");
        msg.set_header("X-Body", r.body);
    } else if msg.subject == "slow" {
        http::post_json(URL + "/slow", #{});
    } else if msg.subject == "outside" {
        http::get("http://127.0.0.1:9/elsewhere");
    }
}
"""


def http_daemon(daemon, port, timeout_ms=500):
    script = HTTP_SCRIPT.replace("URL", f'"http://127.0.0.1:{port}"')
    extra = f'[plugins]\nenabled = ["http"]\n[plugins.http]\nallow = ["http://127.0.0.1:{port}/"]\ntimeout_ms = {timeout_ms}\n'
    return daemon(scripts={"10-http.rhai": script}, extra=extra)


def test_http_post_json_and_get(daemon, hook_server):
    d = http_daemon(daemon, hook_server)
    send(d.port, "notify")
    send(d.port, "ping")
    files = wait_for(lambda: d.messages("me@example.org") if len(d.messages("me@example.org")) == 2 else None)
    notify = [f for f in files if "Subject: notify" in f.read_text()][0]
    assert header_of(notify, "X-Status") == "201"
    assert header_of(notify, "X-Body") == "created"
    path, ctype, body = [r for r in Hooks.received if r[0] == "/hook"][0]
    assert path == "/hook" and ctype == "application/json"
    assert json.loads(body) == {"subject": "notify", "from": "a@sender.example"}
    ping = [f for f in files if "Subject: ping" in f.read_text()][0]
    assert header_of(ping, "X-Body") == "pong"


def test_http_timeout_is_tempfail(daemon, hook_server):
    d = http_daemon(daemon, hook_server, timeout_ms=500)
    start = time.time()
    assert send_expect_code(d.port, "slow") == 451
    assert time.time() - start < 2.5
    assert "timed out" in d.log().lower() or "timeout" in d.log().lower()
    assert d.messages("me@example.org") == []


def test_http_outside_allow_list_refused(daemon, hook_server):
    d = http_daemon(daemon, hook_server)
    assert send_expect_code(d.port, "outside") == 451
    assert "not in [plugins.http] allow" in d.log()


EXEC_SCRIPT = """
fn data(ctx, msg) {
    if msg.subject == "pipe" {
        let r = exec::pipe("upper", msg);
        msg.set_header("X-Code", "" + r.code);
        msg.set_header("X-Upper-Has-Hello", "" + r.stdout.contains("HELLO WORLD"));
    } else if msg.subject == "rewrite" {
        exec::rewrite("swap", msg);
    } else if msg.subject == "hang" {
        exec::pipe("hang", msg);
    } else if msg.subject == "unknown" {
        exec::pipe("nope", msg);
    }
}
"""

EXEC_CONFIG = """
[plugins]
enabled = ["exec"]
[plugins.exec]
timeout_ms = 400
[plugins.exec.commands]
upper = ["tr", "a-z", "A-Z"]
swap = ["sed", "s/hello world/goodbye world/"]
hang = ["sleep", "30"]
"""


def test_exec_pipe_and_rewrite(daemon):
    d = daemon(scripts={"10-exec.rhai": EXEC_SCRIPT}, extra=EXEC_CONFIG)
    send(d.port, "pipe")
    send(d.port, "rewrite")
    files = wait_for(lambda: d.messages("me@example.org") if len(d.messages("me@example.org")) == 2 else None)
    pipe = [f for f in files if "Subject: pipe" in f.read_text()][0]
    assert header_of(pipe, "X-Code") == "0"
    assert header_of(pipe, "X-Upper-Has-Hello") == "true"
    rewritten = [f for f in files if "Subject: rewrite" in f.read_text()][0].read_text()
    assert "goodbye world" in rewritten and "hello world" not in rewritten


def test_exec_hang_hits_timeout(daemon):
    d = daemon(scripts={"10-exec.rhai": EXEC_SCRIPT}, extra=EXEC_CONFIG)
    start = time.time()
    assert send_expect_code(d.port, "hang") == 451
    assert time.time() - start < 3
    assert "timed out" in d.log()
    # The hung command was killed, not left behind.
    # -x: the whole command line, so an unrelated "sleep 300" elsewhere does not count.
    out = subprocess.run(["pgrep", "-fx", "sleep 30"], capture_output=True, text=True)
    assert out.stdout.strip() == ""


def hung_commands(root_pid):
    """Pids of the `sleep 30` processes (the `hang` command) descending from `root_pid`, read
    from /proc."""
    parent, argv = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv[int(entry)] = f.read().split(b"\0")[:-1]
        except OSError:
            continue  # gone meanwhile
        # The command name (in parentheses) may hold spaces: the ppid is the 2nd field after it.
        parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])

    def descends(pid):
        while pid in parent and pid > 1:
            pid = parent[pid]
            if pid == root_pid:
                return True
        return False

    return [pid for pid, args in argv.items() if args == [b"sleep", b"30"] and descends(pid)]


def test_exec_hang_holds_only_its_own_session(daemon):
    """A hook blocked in a plugin call waits on a thread of its own: the sessions sharing its
    session thread (one per two cores) are answered meanwhile."""
    d = daemon(scripts={"10-exec.rhai": EXEC_SCRIPT}, extra=EXEC_CONFIG)
    with ThreadPoolExecutor(3) as pool:
        hangs = [pool.submit(send_expect_code, d.port, "hang") for _ in range(2)]
        # Both hooks are in `sleep 30` now: the daemon has started both commands.
        assert wait_for(lambda: len(hung_commands(d.proc.pid)) == 2, timeout=0.4), hung_commands(d.proc.pid)
        start = time.monotonic()
        assert send_expect_code(d.port, "plain") == 250
        elapsed = time.monotonic() - start
        # ... and were still held there when the plain session got its 250.
        assert not any(h.done() for h in hangs)
        assert [h.result(timeout=10) for h in hangs] == [451, 451]
    # The exec timeout is 400 ms: a session held behind a hung hook would take longer.
    assert elapsed < 0.3, elapsed
    assert len(d.messages("me@example.org")) == 1


def test_exec_unknown_command_is_script_error(daemon):
    d = daemon(scripts={"10-exec.rhai": EXEC_SCRIPT}, extra=EXEC_CONFIG)
    assert send_expect_code(d.port, "unknown") == 451
    # The log writer thread may write the line just after the 451 went out.
    assert wait_for(lambda: 'no command named "nope"' in d.log()), d.log()


def test_disabled_plugin_fails_check(tmp_path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "10-kv.rhai").write_text(KV_SCRIPT)
    (tmp_path / "mailflow.toml").write_text("[smtp]\nhostname = \"x.test\"\n")
    out = subprocess.run([str(BIN), "check", "--config", str(tmp_path / "mailflow.toml")], capture_output=True, text=True)
    assert out.returncode == 1
    assert "10-kv.rhai:" in out.stderr
    assert "kv plugin is not enabled" in out.stderr
    (tmp_path / "mailflow.toml").write_text("[smtp]\nhostname = \"x.test\"\n[plugins]\nenabled = [\"kv\"]\n")
    out = subprocess.run([str(BIN), "check", "--config", str(tmp_path / "mailflow.toml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_unknown_plugin_key_is_config_error(tmp_path):
    (tmp_path / "mailflow.toml").write_text('[plugins]\nenabled = ["http"]\n[plugins.http]\nalow = ["http://x/"]\n')
    out = subprocess.run([str(BIN), "check", "--config", str(tmp_path / "mailflow.toml")], capture_output=True, text=True)
    assert out.returncode == 1
    assert "alow" in out.stderr


def test_notify_webhook_example_in_the_daemon(daemon, hook_server):
    """examples/notify-webhook, run by the daemon against a real HTTP server: an invoice is
    filed and notified, an ordinary message is neither."""
    from conftest import REPO

    example = REPO / "examples" / "notify-webhook"
    script = (example / "scripts" / "10-notify.rhai").read_text().replace("127.0.0.1:8765", f"127.0.0.1:{hook_server}")
    extra = f'[plugins]\nenabled = ["http"]\n[plugins.http]\nallow = ["http://127.0.0.1:{hook_server}/"]\ntimeout_ms = 2000\n'
    d = daemon(scripts={"10-notify.rhai": script}, extra=extra)
    for name in ["invoice.eml", "ordinary.eml"]:
        with smtplib.SMTP("127.0.0.1", d.port, timeout=20) as s:
            s.sendmail("sender@remote.example", ["me@example.org"], (example / "mail" / name).read_bytes())
    assert wait_for(lambda: d.messages("me@example.org", "Invoices"))
    assert wait_for(lambda: d.messages("me@example.org"))
    # A slow handler of an earlier test may still append to the shared list: look at ours.
    notified = [r for r in Hooks.received if r[0] == "/notify"]
    assert len(notified) == 1
    assert json.loads(notified[0][2]) == {"from": "billing@shop.example", "subject": "Your invoice INV-77"}
    assert "webhook answered 201" in d.log()


def test_rate_limit_example_in_the_daemon(daemon):
    """examples/rate-limit with its limit lowered to 3: the 4th message from one sender within
    the hour is tempfailed, another sender is not affected."""
    from conftest import REPO

    example = REPO / "examples" / "rate-limit"
    scripts = {p.name: p.read_text().replace("n > 20", "n > 3") for p in (example / "scripts").glob("*.rhai")}
    d = daemon(scripts=scripts, extra=KV_CONFIG)
    codes = []
    for i in range(4):
        try:
            with smtplib.SMTP("127.0.0.1", d.port, timeout=20) as s:
                s.sendmail("busy@remote.example", ["me@example.org"], f"From: busy@remote.example\r\nSubject: {i}\r\n\r\nx\r\n")
            codes.append(250)
        except smtplib.SMTPSenderRefused as e:
            codes.append(e.smtp_code)
    assert codes == [250, 250, 250, 451]
    send(d.port, "other sender")
    files = wait_for(lambda: d.messages("me@example.org") if len(d.messages("me@example.org")) == 4 else None)
    first = [f for f in files if "Subject: 0" in f.read_text()][0]
    assert header_of(first, "X-First-Contact") == "yes"
    second = [f for f in files if "Subject: 1" in f.read_text()][0]
    assert header_of(second, "X-First-Contact") is None


def test_unknown_key_in_a_disabled_plugin_table_is_config_error(tmp_path):
    """A typo in `[plugins.http]` is an error even before `http` is enabled (docs/reference/configuration.md)."""
    (tmp_path / "mailflow.toml").write_text('[plugins]\nenabled = []\n[plugins.http]\nallwo = ["http://x/"]\n')
    out = subprocess.run([str(BIN), "check", "--config", str(tmp_path / "mailflow.toml")], capture_output=True, text=True)
    assert out.returncode == 1
    assert "allwo" in out.stderr


def test_exec_relative_command_is_found_beside_the_config(tmp_path):
    """`["./classify.sh"]` resolves against the config file's folder, whatever the current
    folder of the process (here `/`)."""
    cfg = tmp_path / "cfg"
    (cfg / "scripts").mkdir(parents=True)
    tool = cfg / "classify.sh"
    tool.write_text("#!/bin/sh\necho beside-the-config\n")
    tool.chmod(0o755)
    (cfg / "mailflow.toml").write_text('[plugins]\nenabled = ["exec"]\n[plugins.exec.commands]\nmine = ["./classify.sh"]\n')
    (cfg / "scripts" / "10.rhai").write_text(
        'fn data(ctx, msg) { let r = exec::pipe("mine", msg); let s = r.stdout; s.trim(); msg.set_header("X-Class", s); }\n'
    )
    eml = tmp_path / "m.eml"
    eml.write_bytes(b"Subject: hi\r\nFrom: a@example.org\r\n\r\nbody\r\n")
    out = subprocess.run(
        [str(BIN), "test", "--config", str(cfg / "mailflow.toml"), "--stage", "data", str(eml)],
        capture_output=True, text=True, cwd="/", timeout=30,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "X-Class: beside-the-config" in out.stdout, out.stdout
