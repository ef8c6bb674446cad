"""Hostile input against the real daemon: the http plugin's allow list and redirects, exec's
timeout with a background child, AUTH PLAIN with another authorization identity, auto-replies
to mail carrying our own X-Loop, imports through a symlink, and pollers against a broken server.

The broken IMAP and POP3 servers here are tiny Python fakes on purpose: they play a server that
misbehaves (garbage after the login, a message announced at 2^63-1 bytes), which no real server
can be made to do. Everything else talks to real software.
"""

import http.server
import re
import socketserver
import subprocess
import threading
import time

import pytest

from conftest import BIN, wait_for
from smtpclient import make_message, wait_log
from test_outbound import BOTH, outbound, raw_server, send  # noqa: F401  (raw_server: fixture)
from test_plugins import send_expect_code
from test_tls_auth import PASSWORD, USER, Client, b64, cert, password_hash, tls_daemon  # noqa: F401  (fixtures)


# --- http: redirects and the allow list ----------------------------------------------------


class Recorder(http.server.BaseHTTPRequestHandler):
    """Answers /redirect with a 302 to `target`, everything else with 200 "reached"."""

    target = None
    hits = []

    def do_GET(self):
        Recorder.hits.append((self.server.server_address[1], self.path))
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", Recorder.target)
            self.end_headers()
            return
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"reached")

    def log_message(self, *args):
        pass


@pytest.fixture
def two_servers():
    """(allowed port, other port): two HTTP servers recording the requests they get."""
    Recorder.hits = []
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder) for _ in range(2)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    allowed, other = (s.server_address[1] for s in servers)
    Recorder.target = f"http://127.0.0.1:{other}/secret"
    yield allowed, other
    for s in servers:
        s.shutdown()


HTTP_SCRIPT = """
fn data(ctx, msg) {
    let r = http::get(msg.subject);
    msg.set_header("X-Status", "" + r.status);
    msg.set_header("X-Body", r.body);
}
"""


def http_daemon(daemon, allow):
    extra = f'[plugins]\nenabled = ["http"]\n[plugins.http]\nallow = ["{allow}"]\ntimeout_ms = 2000\n'
    return daemon(scripts={"10-http.rhai": HTTP_SCRIPT}, extra=extra)


def header(path, name):
    m = re.search(rf"^{name}: (.*)$", path.read_text(), re.M | re.I)
    return m and m.group(1).strip()


def test_http_redirect_is_returned_not_followed(daemon, two_servers):
    allowed, other = two_servers
    d = http_daemon(daemon, f"http://127.0.0.1:{allowed}/")
    assert send_expect_code(d.port, f"http://127.0.0.1:{allowed}/redirect") == 250
    (f,) = wait_for(lambda: d.messages("me@example.org"))
    assert header(f, "X-Status") == "302"
    assert header(f, "X-Body") != "reached"
    assert [port for port, _ in Recorder.hits] == [allowed], Recorder.hits


def test_http_userinfo_cannot_reach_another_port(daemon, two_servers):
    allowed, other = two_servers
    d = http_daemon(daemon, f"http://127.0.0.1:{allowed}")
    assert send_expect_code(d.port, f"http://127.0.0.1:{allowed}@127.0.0.1:{other}/x") == 451
    assert "carries a user name or password" in wait_log(d, "carries a user name")
    assert Recorder.hits == []


def test_http_allow_entry_is_not_a_string_prefix(daemon, two_servers):
    allowed, other = two_servers
    # "http://127.0.0.1:1" is a string prefix of "http://127.0.0.1:1xxxx/": not the same port.
    d = http_daemon(daemon, f"http://127.0.0.1:{str(allowed)[0]}")
    assert send_expect_code(d.port, f"http://127.0.0.1:{allowed}/x") == 451
    assert "not in [plugins.http] allow" in wait_log(d, "not in [plugins.http] allow")
    assert Recorder.hits == []


def test_http_invalid_allow_entry_is_a_config_error(tmp_path):
    (tmp_path / "mailflow.toml").write_text('[plugins]\nenabled = ["http"]\n[plugins.http]\nallow = ["https://u:p@hooks.example/"]\n')
    out = subprocess.run([str(BIN), "check", "--config", str(tmp_path / "mailflow.toml")], capture_output=True, text=True)
    assert out.returncode != 0
    assert "user name or password" in out.stderr + out.stdout


# --- exec: a background child holding stdout -----------------------------------------------


EXEC_CONFIG = """
[plugins]
enabled = ["exec"]
[plugins.exec]
timeout_ms = 1000
[plugins.exec.commands]
background = ["/bin/sh", "-c", "sleep 14.25 & echo started"]
"""


def test_exec_background_child_does_not_outlive_the_timeout(daemon):
    d = daemon(scripts={"10-exec.rhai": 'fn data(ctx, msg) { exec::pipe("background", msg); }\n'}, extra=EXEC_CONFIG)
    start = time.monotonic()
    assert send_expect_code(d.port, "bg") == 451
    assert time.monotonic() - start < 4
    assert "timed out after" in wait_log(d, "timed out after")
    time.sleep(0.2)
    out = subprocess.run(["pgrep", "-fx", "sleep 14.25"], capture_output=True, text=True)
    assert out.stdout.strip() == "", "the background child was left running"


# --- AUTH PLAIN: the authorization identity -------------------------------------------------


def test_auth_plain_as_another_user_is_535(tls_daemon):
    d = tls_daemon()
    with Client(d.port) as c:
        c.starttls(d.cert.context())
        c.ehlo()
        r = c.cmd(f"AUTH PLAIN {b64('admin' + chr(0) + USER + chr(0) + PASSWORD)}")
        assert (r.code, r.status) == (535, "5.7.8"), r
        # Still unauthenticated; an authzid equal to the user (or none) is fine.
        r = c.cmd(f"AUTH PLAIN {b64(USER + chr(0) + USER + chr(0) + PASSWORD)}")
        assert (r.code, r.status) == (235, "2.7.0"), r
    assert "acting as another user is not allowed" in wait_log(d, "acting as another user")


# --- auto-replies: our own X-Loop -----------------------------------------------------------


def test_no_auto_reply_to_mail_with_our_x_loop(daemon, raw_server):  # noqa: F811
    relay = raw_server()
    d = daemon(scripts={"10-both.rhai": BOTH}, extra=outbound(relay.port))
    extra = "X-Loop: other.example\nx-loop: MX.TEST.EXAMPLE\n"
    send(d, sender="a1@remote.example", message=make_message(subject="looped", to="me@example.org", extra=extra))
    send(d, sender="a2@remote.example", message=make_message(subject="control", to="me@example.org"))
    relay.wait(2)
    time.sleep(0.5)
    subjects = sorted(re.search(rb"^Subject: (.*?)\r$", t["wire"], re.M).group(1).decode() for t in relay.transactions)
    assert subjects == ["Reply: control", "Vacation: control"], subjects
    for action in ("reply", "vacation"):
        assert re.search(rf'auto-reply suppressed action="{action}" reason=the message has X-Loop: MX.TEST.EXAMPLE', d.log()), d.log()


# --- imports: a symlink out of the scripts folder -------------------------------------------


def test_import_through_a_symlink_outside_is_refused(tmp_path):
    (tmp_path / "outside.rhai").write_text('fn secret() { "leaked" }\n')
    scripts = tmp_path / "scripts"
    (scripts / "lib").mkdir(parents=True)
    (scripts / "lib" / "evil.rhai").symlink_to(tmp_path / "outside.rhai")
    (scripts / "10-imp.rhai").write_text('import "lib/evil" as x;\nfn data(ctx, msg) { log(x::secret()); }\n')
    (tmp_path / "mailflow.toml").write_text('[smtp]\nlocal_domains = ["example.org"]\n')
    out = subprocess.run([str(BIN), "check", "--config", str(tmp_path / "mailflow.toml")], capture_output=True, text=True)
    assert out.returncode == 1, out.stdout
    assert "a symlink leads outside the scripts folder" in out.stderr, out.stderr


# --- pollers against a broken server --------------------------------------------------------


class FakeServer:
    """A TCP server calling `handler(conn)` for each connection, recording connection times."""

    def __init__(self, handler):
        self.times = []
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                outer.times.append(time.monotonic())
                self.request.settimeout(10)
                try:
                    handler(self.request, self.request.makefile("rb"))
                except OSError:
                    pass

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def garbage_after_select(conn, reader):
    """IMAP that logs in, lists and selects fine, then answers anything else with 20 KB of
    garbage."""
    conn.sendall(b"* OK [CAPABILITY IMAP4rev1 IDLE] ready\r\n")
    for line in reader:
        tag, _, command = line.decode(errors="replace").strip().partition(" ")
        verb = command.split(" ")[0].upper()
        if verb == "LOGIN":
            conn.sendall(f"{tag} OK LOGIN done\r\n".encode())
        elif verb == "CAPABILITY":
            conn.sendall(f"* CAPABILITY IMAP4rev1 IDLE\r\n{tag} OK done\r\n".encode())
        elif verb == "LIST":
            conn.sendall(f'* LIST (\\HasNoChildren) "/" INBOX\r\n{tag} OK done\r\n'.encode())
        elif verb == "SELECT":
            conn.sendall(
                f"* 0 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n* OK [UIDNEXT 1] ok\r\n{tag} OK [READ-WRITE] done\r\n".encode()
            )
        elif verb == "LOGOUT":
            conn.sendall(f"* BYE\r\n{tag} OK bye\r\n".encode())
            return
        else:
            conn.sendall(b"\x01\x1b[31m GARBAGE " + b"%" * 20_000 + b"\r\n")


def account(name, protocol, port, poll_interval="1s"):
    return (
        f'[[accounts]]\nname = "{name}"\nprotocol = "{protocol}"\nhost = "127.0.0.1"\nport = {port}\n'
        f'tls = "none"\nusername = "me"\npassword = "pw"\npoll_interval = "{poll_interval}"\n\n'
    )


def test_imap_garbage_after_login_backs_off(daemon):
    fake = FakeServer(garbage_after_select)
    try:
        d = daemon(extra=account("hostile", "imap", fake.port))
        time.sleep(8.5)
        times = list(fake.times)
    finally:
        fake.close()
    gaps = [b - a for a, b in zip(times, times[1:])]
    # 1 s, 2 s, 4 s (±20 %): not a reconnection every second.
    assert 3 <= len(times) <= 5, gaps
    assert gaps[1] > gaps[0] * 1.25, gaps
    if len(gaps) > 2:
        assert gaps[2] > gaps[1] * 1.25, gaps
    lines = [l for l in d.log().splitlines() if "IMAP connection failed" in l]
    assert lines, d.log()[-2000:]
    for line in lines:
        assert len(line) < 1000, line[:300]
        assert "37, 37, 37" not in line, line[:300]  # no decimal byte arrays
    assert "cannot parse the server's response" in lines[0], lines[0][:300]
    assert "\x1b" not in d.log()


def huge_message(conn, reader):
    """POP3 holding one message announced at 2^63-1 bytes."""
    conn.sendall(b"+OK ready\r\n")
    for line in reader:
        verb = line.decode(errors="replace").strip().split(" ")[0].upper()
        if verb == "UIDL":
            conn.sendall(b"+OK\r\n1 uid-huge\r\n.\r\n")
        elif verb == "LIST":
            conn.sendall(b"+OK\r\n1 9223372036854775807\r\n.\r\n")
        elif verb == "STAT":
            conn.sendall(b"+OK 1 9223372036854775807\r\n")
        elif verb == "QUIT":
            conn.sendall(b"+OK bye\r\n")
            return
        else:
            conn.sendall(b"+OK\r\n")


def test_pop3_unfetchable_message_is_reported_once(daemon):
    fake = FakeServer(huge_message)
    try:
        d = daemon(extra=account("huge", "pop3", fake.port))
        assert wait_for(lambda: len(fake.times) >= 4, timeout=10), fake.times
    finally:
        fake.close()
    assert d.log().count("message larger than the fetch limit") == 1, d.log()[-2000:]
