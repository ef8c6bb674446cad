"""The outbound sender (issue #4): forward, redirect, reply and vacation, the durable queue
with its retries and bounces, `mailflow queue`, relay and MX delivery.

The relay target is a real, independent SMTP server on loopback: Postfix's `smtp-sink`
(its options inject 4xx/5xx answers; `-d` dumps each accepted transaction to a file). Where
a test needs the exact bytes on the wire (CRLF, dot-stuffing) or per-recipient answers, a
small socket-level SMTP server in this file plays the relay. MX mode asks a tiny UDP DNS
server (dnslib) started here, through `[outbound] dns_server`; MX hosts are smtp-sinks on
127.0.0.2, 127.0.0.3... sharing one port (`mx_port`).

Nothing here is skipped: a missing smtp-sink or dnslib is a failure (test.sh installs both).
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import threading
import time
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from conftest import BIN, Daemon, free_port, make_config, wait_for
from smtpclient import make_message, mailflow, parse, transaction, wait_delivered, wait_log

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
HOST = "mx.test.example"  # the hostname make_config gives the daemon


# --- the relay target: Postfix's smtp-sink --------------------------------------------------


class Sink:
    """One smtp-sink on `host:port`. `args` are extra smtp-sink options (e.g. `-r RCPT` to
    answer every RCPT with a 4xx). Accepted transactions are dumped into a folder."""

    def __init__(self, host="127.0.0.1", port=None, args=()):
        if not os.path.exists(SMTP_SINK):
            pytest.fail("smtp-sink (package postfix) is missing: run test.sh, which installs it")
        self.host = host
        self.port = port or free_port()
        # smtp-sink drops root privileges to nobody, who must be able to write the dumps: a
        # world-writable folder directly under /tmp (pytest's tmp_path is private to root).
        self.dir = Path(tempfile.mkdtemp(prefix="mailflow-sink-"))
        os.chmod(self.dir, 0o777)
        self.proc = None
        self.start(args)

    def start(self, args=()):
        cmd = [SMTP_SINK]
        if os.geteuid() == 0:
            cmd += ["-u", "nobody"]
        cmd += [*args, "-d", f"{self.dir}/m.", f"{self.host}:{self.port}", "64"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"smtp-sink exited: {self.proc.stderr.read().decode(errors='replace')}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2) as s:
                    s.recv(100)  # the greeting: really serving
                return self
            except OSError:
                time.sleep(0.02)
        pytest.fail(f"smtp-sink not listening on {self.host}:{self.port}")

    def restart(self, args=()):
        self.stop()
        return self.start(args)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def messages(self):
        """The accepted transactions, oldest first: dicts with `mail` (MAIL FROM arguments),
        `rcpts` (RCPT TO arguments), `text` (the message with LF line ends, as smtp-sink
        stores it) and `msg` (parsed)."""
        out = []
        for path in sorted(self.dir.glob("m.*"), key=lambda p: p.stat().st_mtime_ns):
            dumped = parse_dump(path.read_bytes())
            if dumped:
                out.append(dumped)
        return out

    def wait(self, count=1, timeout=5.0):
        """Waits for at least `count` transactions; returns them all."""
        return wait_for(lambda: (lambda m: m if len(m) >= count else None)(self.messages()), timeout) or self.messages()


def parse_dump(raw):
    """An smtp-sink dump: X-Mail-Args/X-Rcpt-Args..., a 3-line Received, the message, "\\n"."""
    text = raw.decode("utf-8", "replace")
    m = re.match(r"(?s)(.*?)Received: from [^\n]*\n\t[^\n]*\n\t[^\n]*\n(.*)\n\Z", text)
    if not m:
        return None  # still being written
    head, message = m.groups()
    fields = [line.split(": ", 1) for line in head.splitlines() if ": " in line]
    return {
        "mail": next(v for k, v in fields if k == "X-Mail-Args"),
        "rcpts": [v for k, v in fields if k == "X-Rcpt-Args"],
        "text": message,
        "msg": message_from_bytes(message.encode(), policy=policy.default),
    }


@pytest.fixture
def sinks():
    """Factory for smtp-sinks, all stopped and removed after the test."""
    made = []

    def factory(host="127.0.0.1", port=None, args=()):
        s = Sink(host, port, args)
        made.append(s)
        return s

    yield factory
    for s in made:
        s.close()


# --- a socket-level SMTP server: exact wire bytes, per-recipient answers --------------------


class RawServer:
    """Records every transaction's DATA exactly as it came over the wire (dot-stuffed, line
    ends untouched). `rcpt_reply(addr)` decides each RCPT's answer. The end of DATA is the
    strict `<CRLF>.<CRLF>`: anything after it is read as commands, as a real server would."""

    def __init__(self, rcpt_reply=None):
        self.rcpt_reply = rcpt_reply or (lambda addr: "250 2.1.5 Ok")
        self.transactions = []
        self.commands = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn):
        buf = b""

        def line():
            nonlocal buf
            while b"\r\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    raise ConnectionError
                buf += chunk
            out, buf = buf.split(b"\r\n", 1)
            return out.decode("utf-8", "replace")

        try:
            conn.sendall(b"220 raw.test ESMTP\r\n")
            mail, rcpts = None, []
            while True:
                cmd = line()
                self.commands.append(cmd)
                verb = cmd[:4].upper()
                if verb in ("EHLO",):
                    conn.sendall(b"250-raw.test\r\n250-8BITMIME\r\n250 SIZE 10000000\r\n")
                elif verb == "HELO":
                    conn.sendall(b"250 raw.test\r\n")
                elif verb == "MAIL":
                    mail, rcpts = cmd[10:].strip(), []
                    conn.sendall(b"250 2.1.0 Ok\r\n")
                elif verb == "RCPT":
                    addr = cmd[8:].strip().strip("<>")
                    reply = self.rcpt_reply(addr)
                    if reply.startswith("2"):
                        rcpts.append(addr)
                    conn.sendall(reply.encode() + b"\r\n")
                elif verb == "DATA":
                    if not rcpts:
                        conn.sendall(b"554 5.5.1 no valid recipients\r\n")
                        continue
                    conn.sendall(b"354 go ahead\r\n")
                    data = b"\r\n" + buf if buf else b"\r\n"
                    while b"\r\n.\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            raise ConnectionError
                        data += chunk
                    end = data.index(b"\r\n.\r\n")
                    wire, buf = data[2 : end + 2], data[end + 5 :]
                    self.transactions.append({"mail": mail, "rcpts": rcpts, "wire": wire})
                    conn.sendall(b"250 2.0.0 Ok: queued\r\n")
                    mail, rcpts = None, []
                elif verb == "RSET":
                    mail, rcpts = None, []
                    conn.sendall(b"250 2.0.0 Ok\r\n")
                elif verb == "NOOP":
                    conn.sendall(b"250 2.0.0 Ok\r\n")
                elif verb == "QUIT":
                    conn.sendall(b"221 2.0.0 Bye\r\n")
                    return
                else:
                    conn.sendall(b"502 5.5.2 not implemented\r\n")
        except (ConnectionError, OSError):
            pass
        finally:
            conn.close()

    def wait(self, count=1, timeout=5.0):
        wait_for(lambda: len(self.transactions) >= count, timeout)
        return list(self.transactions)

    def close(self):
        self.closed = True
        self.sock.close()


@pytest.fixture
def raw_server():
    made = []

    def factory(rcpt_reply=None):
        s = RawServer(rcpt_reply)
        made.append(s)
        return s

    yield factory
    for s in made:
        s.close()


def unstuff(wire):
    return re.sub(rb"(?m)^\.", b"", wire.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n")


# --- a test DNS server for mx mode ----------------------------------------------------------


class DNS:
    """Answers from `zone`: {(name, type): [rdata]}; names in `failing` get that response code
    ("SERVFAIL", "REFUSED"); other names are NXDOMAIN."""

    def __init__(self, zone, failing=None):
        failing = failing or {}
        try:
            from dnslib import QTYPE, RCODE, RR
            from dnslib.server import BaseResolver, DNSServer
        except ImportError:
            pytest.fail("python package dnslib is missing: run test.sh, which installs it")

        class Resolver(BaseResolver):
            def resolve(self, request, handler):
                reply = request.reply()
                qname = str(request.q.qname).lower()
                qtype = QTYPE[request.q.qtype]
                if qname in failing:
                    reply.header.rcode = getattr(RCODE, failing[qname])
                    return reply
                if not any(name == qname for name, _ in zone):
                    reply.header.rcode = RCODE.NXDOMAIN
                    return reply
                for rdata in zone.get((qname, qtype), []):
                    reply.add_answer(RR(qname, getattr(QTYPE, qtype), rdata=rdata, ttl=1))
                return reply

        class Quiet:
            def __getattr__(self, name):
                return lambda *a, **k: None

        self.port = free_port_udp()
        self.server = DNSServer(Resolver(), port=self.port, address="127.0.0.1", logger=Quiet())
        self.server.start_thread()

    def close(self):
        self.server.stop()


def free_port_udp():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- helpers ----------------------------------------------------------------------------------


def outbound(relay_port, retry='["1s"]', max_age="1h", more=""):
    return textwrap.dedent(
        f"""
        [outbound]
        relay = "smtp://127.0.0.1:{relay_port}"
        starttls = "never"
        retry = {retry}
        max_age = "{max_age}"
        """
    ) + textwrap.dedent(more)


FORWARD = """
fn data(ctx, msg) { msg.forward("bob@far.example"); }
"""

REDIRECT = """
fn data(ctx, msg) { msg.redirect("bob@far.example"); }
"""


def send(d, sender="alice@remote.example", rcpts=("me@example.org",), message=None, **kw):
    kw.setdefault("to", rcpts[0])
    if sender and "sender" not in kw:
        kw["sender"] = sender
    out = transaction(d.port, sender, list(rcpts), message or make_message(**kw))
    assert out["data"] is not None and out["data"].code == 250, out
    return out


def stored(d, rcpt):
    """The bytes mailflow stored for `rcpt` (its Maildir copy without the Return-Path line)."""
    (path,) = wait_delivered(d, rcpt)
    raw = path.read_bytes()
    assert raw.startswith(b"Return-Path: <")
    return raw[raw.index(b"\r\n") + 2 :]


def dsn_text(raw):
    """A bounce as searchable text: its text/plain part decoded, then the whole message with
    folded fields unfolded (the delivery-status part is 7bit, its long fields folded)."""
    msg = message_from_bytes(raw, policy=policy.default)
    assert msg.get_content_type() == "multipart/report", raw[:300]
    human = next(p for p in msg.walk() if p.get_content_type() == "text/plain").get_content()
    return human + "\n" + re.sub(r"\r?\n[ \t]+", " ", raw.decode("utf-8", "replace"))


def queue(d, *args):
    return mailflow("queue", *args, "--config", d.config_path)


def queue_rows(d):
    """`mailflow queue list` as dicts (ID, KIND, ATTEMPTS, NEXT, RECIPIENTS, ERROR)."""
    r = queue(d, "list")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    if lines and lines[0].startswith("queue is empty"):
        return []
    assert lines[0].split()[:4] == ["ID", "KIND", "ATTEMPTS", "NEXT"], r.stdout
    rows = []
    for line in lines[1:]:
        m = re.match(r"(\S+)\s+(\S+)\s+(\d+)\s+(now|in \d+s)\s+(\S*)\s+(.*)$", line)
        assert m, line
        rows.append(dict(zip(["id", "kind", "attempts", "next", "rcpts", "error"], m.groups())))
    return rows


def wait_queue(d, predicate, timeout=5.0):
    """Waits until `predicate(queue rows)` holds; returns the rows then, else None."""
    found = wait_for(lambda: (lambda rows: (rows,) if predicate(rows) else None)(queue_rows(d)), timeout)
    return found[0] if found else None


def queue_files(d):
    qdir = d.root / "data" / "queue"
    return sorted(p.name for p in qdir.iterdir() if not p.name.startswith(".")) if qdir.is_dir() else []


def second_daemon(tmp_path, name, port, hostname, domain, relay_port, scripts, more=""):
    """A mailflow in its own sub-folder (the `daemon` fixture keeps one per test folder)."""
    root = tmp_path / name
    root.mkdir()
    config = textwrap.dedent(
        f"""\
        [smtp]
        listen = ["127.0.0.1:{port}"]
        hostname = "{hostname}"
        local_domains = ["{domain}"]

        [delivery]
        maildir = "data/mail/{{local}}@{{domain}}"
        """
    ) + outbound(relay_port, more=more)
    return Daemon(root, config, scripts, port)


@pytest.fixture
def instances():
    made = []
    yield made
    for d in made:
        try:
            d.stop(signal.SIGKILL)
        except Exception:
            pass


# === forward and redirect =====================================================================


def test_forward_arrives_with_the_original_bytes(daemon, sinks):
    sink = sinks()
    d = daemon(scripts={"10-fwd.rhai": FORWARD}, extra=outbound(sink.port))
    send(d, subject="forward me", body="Line one.\n.leading dot\n..two dots\nLast line.\n")
    (got,) = sink.wait(1)
    # The original envelope sender, the forward address, and the local copy kept.
    assert got["mail"].split()[0] == "<alice@remote.example>"
    assert got["rcpts"] == ["<bob@far.example>"]
    local = stored(d, "me@example.org")
    # smtp-sink stores LF line ends: compare with the stored message, X-Loop in front.
    expected = (f"X-Loop: {HOST}\r\n".encode() + local).decode().replace("\r\n", "\n")
    assert got["text"] == expected
    assert got["msg"]["Subject"] == "forward me"
    assert "\n.leading dot\n..two dots\n" in got["text"]
    assert wait_for(lambda: queue_files(d) == []), queue_files(d)


def test_forward_and_redirect_exact_wire_bytes(daemon, raw_server):
    """Byte for byte: X-Loop + the stored message, CRLF, dot-stuffed, no extra line."""
    server = raw_server()
    d = daemon(
        scripts={
            "10-fwd.rhai": """
                fn data(ctx, msg) {
                    if msg.subject == "redirect" { msg.redirect("bob@far.example"); }
                    else { msg.forward("bob@far.example"); }
                }
            """
        },
        extra=outbound(server.port),
    )
    send(d, rcpts=["me@example.org"], subject="forward", body="a\n.b\nlast")
    (fwd,) = server.wait(1)
    local = stored(d, "me@example.org")
    assert unstuff(fwd["wire"]) == f"X-Loop: {HOST}\r\n".encode() + local
    assert b"\r\n..b\r\n" in fwd["wire"]
    assert fwd["mail"] == "<alice@remote.example>" and fwd["rcpts"] == ["bob@far.example"]

    send(d, rcpts=["other@example.org"], subject="redirect", body="redirected\n")
    (_, red) = server.wait(2)
    assert red["rcpts"] == ["bob@far.example"]
    assert red["wire"].startswith(f"X-Loop: {HOST}\r\n".encode())
    assert b"Subject: redirect\r\n" in red["wire"] and red["wire"].endswith(b"redirected\r\n")
    time.sleep(0.3)
    assert d.messages("other@example.org") == [], "a redirect keeps no local copy"


def test_redirect_keeps_no_local_copy(daemon, sinks):
    sink = sinks()
    d = daemon(scripts={"10-redirect.rhai": REDIRECT}, extra=outbound(sink.port))
    out = send(d, subject="redirect me")
    (got,) = sink.wait(1)
    assert got["rcpts"] == ["<bob@far.example>"]
    assert got["msg"]["Subject"] == "redirect me"
    assert got["msg"]["X-Loop"] == HOST
    assert got["mail"].split()[0] == "<alice@remote.example>"
    qid = out["data"].text.split()[-1]
    wait_log(d, "files=0")
    assert d.messages("me@example.org") == []
    assert qid in d.log()


def test_forward_sender_fixed(daemon, sinks):
    sink = sinks()
    d = daemon(
        scripts={"10-fwd.rhai": FORWARD},
        extra=outbound(sink.port, more='forward_sender = "forwarder@example.org"'),
    )
    send(d, subject="fixed sender")
    (got,) = sink.wait(1)
    assert got["mail"].split()[0] == "<forwarder@example.org>"
    # The header From is the author's, untouched.
    assert got["msg"]["From"].addresses[0].addr_spec == "alice@remote.example"


def test_bare_cr_lf_and_dot_line_go_out_as_one_crlf_message(daemon, raw_server, tmp_path):
    """Inbound SMTP refuses bare CR/LF, so an exec rewrite puts them in the stored message. On
    the wire the forward must be CRLF-only, dot-stuffed, and one message: the `\\n.\\r\\n`
    must not end the DATA and smuggle the following "commands" in as a second message."""
    server = raw_server()
    body = (
        b"From: alice@remote.example\r\nTo: me@example.org\r\nSubject: weird line ends\r\n\r\n"
        b"first line\n.\r\n"
        b"MAIL FROM:<evil@remote.example>\r\nRCPT TO:<victim@far.example>\r\nDATA\r\n"
        b"smuggled\r\n.\r\n"
        b"bare\rcarriage\rreturns\nbare linefeed\r\n.leading dot\r\nlast line without end"
    )
    (tmp_path / "weird.bin").write_bytes(body)
    config = outbound(server.port) + textwrap.dedent(
        f"""
        [plugins]
        enabled = ["exec"]
        [plugins.exec.commands]
        weird = ["cat", "{tmp_path / 'weird.bin'}"]
        """
    )
    d = daemon(
        scripts={
            "10-weird.rhai": """
                fn data(ctx, msg) {
                    exec::rewrite("weird", msg);
                    msg.forward("bob@far.example");
                }
            """
        },
        extra=config,
    )
    send(d, subject="to be rewritten")
    (tx,) = server.wait(1)
    time.sleep(0.5)
    assert len(server.transactions) == 1, server.transactions
    assert not any("evil" in c or "victim" in c for c in server.commands), server.commands
    wire = tx["wire"]
    assert tx["rcpts"] == ["bob@far.example"]
    assert b"\r" not in wire.replace(b"\r\n", b""), "bare CR on the wire"
    assert b"\n" not in wire.replace(b"\r\n", b""), "bare LF on the wire"
    assert wire.endswith(b"last line without end\r\n")
    expected = (
        f"X-Loop: {HOST}\r\n".encode()
        + b"From: alice@remote.example\r\nTo: me@example.org\r\nSubject: weird line ends\r\n\r\n"
        b"first line\r\n..\r\n"
        b"MAIL FROM:<evil@remote.example>\r\nRCPT TO:<victim@far.example>\r\nDATA\r\n"
        b"smuggled\r\n..\r\n"
        b"bare\r\ncarriage\r\nreturns\r\nbare linefeed\r\n..leading dot\r\nlast line without end\r\n"
    )
    assert wire == expected


def test_x_loop_stops_a_forward_loop_between_two_instances(tmp_path, instances):
    """A forwards to B, B forwards back to A: A sees its own X-Loop and stops."""
    port_a, port_b = free_port(), free_port()
    loop_script = lambda to: f'fn data(ctx, msg) {{ msg.forward("{to}"); }}'
    a = second_daemon(tmp_path, "a", port_a, "mx.a.example", "a.example", port_b, {"10.rhai": loop_script("me@b.example")})
    b = second_daemon(tmp_path, "b", port_b, "mx.b.example", "b.example", port_a, {"10.rhai": loop_script("me@a.example")})
    for d in (a, b):
        instances.append(d)
        d.start()
    send(a, sender="ann@remote.example", rcpts=["me@a.example"], subject="ping pong")
    assert len(wait_delivered(b, "me@b.example", 1)) == 1
    assert len(wait_delivered(a, "me@a.example", 2)) == 2  # the original, and B's copy back
    log = wait_log(a, "mail loop")
    assert "forward suppressed" in log
    time.sleep(1.2)
    assert len(a.messages("me@a.example")) == 2 and len(b.messages("me@b.example")) == 1
    back = [m for m in a.messages("me@a.example") if b"X-Loop: mx.b.example" in m.read_bytes()]
    assert len(back) == 1
    assert b"X-Loop: mx.a.example" in back[0].read_bytes()


def test_x_loop_refused_redirect_is_delivered_locally(tmp_path, instances):
    port_a, port_b = free_port(), free_port()
    script = lambda to: f'fn data(ctx, msg) {{ msg.redirect("{to}"); }}'
    a = second_daemon(tmp_path, "a", port_a, "mx.a.example", "a.example", port_b, {"10.rhai": script("me@b.example")})
    b = second_daemon(tmp_path, "b", port_b, "mx.b.example", "b.example", port_a, {"10.rhai": script("me@a.example")})
    for d in (a, b):
        instances.append(d)
        d.start()
    send(a, sender="ann@remote.example", rcpts=["me@a.example"], subject="redirect loop")
    (path,) = wait_delivered(a, "me@a.example", 1)
    raw = path.read_bytes()
    assert b"X-Loop: mx.b.example" in raw and b"X-Loop: mx.a.example" in raw
    time.sleep(1.0)
    assert b.messages("me@b.example") == []
    assert len(a.messages("me@a.example")) == 1


# === auto-replies ==============================================================================


VACATION = """
fn data(ctx, msg) {
    msg.vacation(#{ days: 7, body: "I am away until Monday." });
}
"""


def test_vacation_replies_once_with_the_right_headers(daemon, sinks):
    sink = sinks()
    d = daemon(scripts={"10-vacation.rhai": VACATION}, extra=outbound(sink.port))
    send(d, subject="are you there?", extra="References: <older@remote.example>\n")
    (got,) = sink.wait(1)
    assert got["mail"].split()[0] == "<>", "auto-replies go out from the null sender"
    assert got["rcpts"] == ["<alice@remote.example>"]
    reply = got["msg"]
    assert reply["Auto-Submitted"] == "auto-replied"
    assert reply["Subject"] == "Auto: are you there?"
    assert reply["In-Reply-To"] == "<m1@remote.example>"
    assert reply["References"].split() == ["<older@remote.example>", "<m1@remote.example>"]
    assert reply["From"].addresses[0].addr_spec == "me@example.org"
    assert reply["To"].addresses[0].addr_spec == "alice@remote.example"
    assert reply["Message-ID"]
    assert "I am away until Monday." in reply.get_content()
    # The original is still delivered.
    assert len(wait_delivered(d, "me@example.org")) == 1

    # The same sender again: no second notice (within `days`), even after a restart.
    send(d, subject="second try")
    wait_log(d, "already answered")
    d.stop()
    d.start()
    send(d, subject="third try")
    wait_for(lambda: d.log().count("already answered") >= 2)
    assert d.log().count("already answered") == 2
    # Another sender gets its own notice.
    send(d, sender="carol@remote.example", subject="hello from carol")
    sink.wait(2)
    time.sleep(0.5)
    msgs = sink.messages()
    assert [m["rcpts"] for m in msgs] == [["<alice@remote.example>"], ["<carol@remote.example>"]]
    assert len(d.messages("me@example.org")) == 4


def test_vacation_subject_and_from_options(daemon, sinks):
    sink = sinks()
    d = daemon(
        scripts={
            "10.rhai": """
                fn data(ctx, msg) {
                    msg.vacation(#{ days: 1, subject: "Out of office", body: "Away.",
                                    from: "assistant@example.org", addresses: ["me@example.org"] });
                }
            """
        },
        extra=outbound(sink.port),
    )
    # Sent to an alias, with me@example.org only in Cc: `addresses` makes it ours.
    send(d, rcpts=["alias@example.org"], message=make_message(to="someone@remote.example", extra="Cc: me@example.org\n"))
    (got,) = sink.wait(1)
    assert got["msg"]["Subject"] == "Out of office"
    assert got["msg"]["From"].addresses[0].addr_spec == "assistant@example.org"
    assert got["msg"]["Auto-Submitted"] == "auto-replied"


BOTH = """
fn data(ctx, msg) {
    msg.reply(#{ subject: "Reply: " + msg.subject, body: "Got it." });
    msg.vacation(#{ days: 7, subject: "Vacation: " + msg.subject, body: "Away." });
}
"""

# (name, envelope sender, To header, extra headers, reason in the log)
SUPPRESSED = [
    ("null-sender", "", "me@example.org", "", "the envelope sender is null"),
    ("mailer-daemon", "MAILER-DAEMON@remote.example", "me@example.org", "", "MAILER-DAEMON@remote.example is a mailer daemon"),
    ("owner", "owner-rust@lists.example", "me@example.org", "", "owner-rust@lists.example is a mailer daemon"),
    ("request", "rust-request@lists.example", "me@example.org", "", "rust-request@lists.example is a mailer daemon"),
    ("own-address", f"postmaster@{HOST}", "me@example.org", "", "is this daemon's own address"),
    ("auto-replied", "a1@remote.example", "me@example.org", "Auto-Submitted: auto-replied\n", "Auto-Submitted: auto-replied"),
    ("auto-generated", "a2@remote.example", "me@example.org", "Auto-Submitted: auto-generated\n", "Auto-Submitted: auto-generated"),
    ("list-id", "a3@remote.example", "me@example.org", "List-Id: <rust.lists.example>\n", "has a List-Id header"),
    ("list-unsubscribe", "a4@remote.example", "me@example.org", "List-Unsubscribe: <mailto:u@lists.example>\n", "has a List-Unsubscribe header"),
    ("precedence-bulk", "a5@remote.example", "me@example.org", "Precedence: bulk\n", "Precedence: bulk"),
    ("precedence-list", "a6@remote.example", "me@example.org", "Precedence: list\n", "Precedence: list"),
    ("precedence-junk", "a7@remote.example", "me@example.org", "Precedence: junk\n", "Precedence: junk"),
]


def test_no_auto_reply_in_any_suppression_case(daemon, sinks):
    """Every RFC 3834 case: neither reply nor vacation answers, each logged with its reason.
    A vacation also needs the recipient in To/Cc (a reply does not). A normal message at the
    end gets both answers, so the silence above is not just slowness."""
    sink = sinks()
    d = daemon(scripts={"10-both.rhai": BOTH}, extra=outbound(sink.port))
    for name, sender, to, extra, _ in SUPPRESSED:
        send(d, sender=sender, message=make_message(subject=name, to=to, extra=extra))
    send(d, sender="b1@remote.example", message=make_message(subject="bcc", to="someone@remote.example"))
    send(d, sender="me@example.org", message=make_message(subject="self", to="me@example.org"))
    send(d, sender="b2@remote.example", message=make_message(subject="control", to="me@example.org"))
    subjects = lambda: sorted(m["msg"]["Subject"] for m in sink.messages())
    assert wait_for(lambda: len(sink.messages()) >= 3)
    assert wait_for(lambda: len(d.messages("me@example.org")) >= 1)  # the reply to "self"
    time.sleep(0.5)
    assert subjects() == ["Reply: bcc", "Reply: control", "Vacation: control"]
    replies_to_self = [parse(p) for p in d.messages("me@example.org") if parse(p)["Subject"].startswith("Reply")]
    assert [m["Subject"] for m in replies_to_self] == ["Reply: self"]
    log = d.log()
    for name, _, _, _, reason in SUPPRESSED:
        for action in ("reply", "vacation"):
            pattern = f'auto-reply suppressed action="{action}" reason='
            lines = [l for l in log.splitlines() if pattern in l and reason in l]
            assert lines, (name, action, reason)
    assert 'action="vacation" reason=the recipient is not in To or Cc' in log
    # Vacation never answers oneself; a plain reply does (delivered locally, scripts do not
    # run on it, and its Auto-Submitted would stop any answer to it).
    assert 'action="vacation" reason=the sender me@example.org is the recipient\'s own address' in log
    assert len(d.messages("me@example.org")) == len(SUPPRESSED) + 4  # + bcc, self, control, reply to self


def test_mailflow_test_shows_the_suppression(tmp_path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "10.rhai").write_text(BOTH)
    (tmp_path / "mailflow.toml").write_text(make_config(free_port()))
    (tmp_path / "list.eml").write_text(make_message(extra="List-Id: <x.lists.example>\n"))
    r = mailflow("test", "--config", tmp_path / "mailflow.toml", "--stage", "data", "--from", "a@remote.example",
                 "--to", "me@example.org", tmp_path / "list.eml")
    assert r.returncode == 0, r.stderr
    assert "List-Id" in r.stdout and "suppressed" in r.stdout


# === retries, bounces, the queue ===============================================================


def test_451_then_250_is_delivered_on_retry_and_listed_meanwhile(daemon, sinks):
    sink = sinks(args=["-r", "RCPT", "-b", "451 4.3.0 Try again later"])
    d = daemon(scripts={"10-fwd.rhai": FORWARD}, extra=outbound(sink.port))
    send(d, subject="retry me")
    rows = wait_queue(d, lambda rows: rows and int(rows[0]["attempts"]) >= 1)
    assert rows, d.log()
    (row,) = rows
    assert row["kind"] == "forward"
    assert row["rcpts"] == "bob@far.example"
    assert "451" in row["error"] and "Try again later" in row["error"], row
    assert re.fullmatch(r"[0-9A-F]{16}", row["id"])
    assert sink.messages() == []
    sink.restart()
    (got,) = sink.wait(1, timeout=6)
    assert got["msg"]["Subject"] == "retry me"
    assert wait_queue(d, lambda rows: rows == []) == []
    assert queue(d, "list").stdout.startswith("queue is empty")
    assert "temporary failure; will retry" in d.log()


def test_550_bounces_to_the_sender_through_the_relay(daemon, raw_server):
    """The relay refuses bob with 550; the DSN goes out from <> to the (remote) sender."""
    server = raw_server(lambda addr: "550 5.1.1 <bob@far.example>: no such user" if addr.startswith("bob@") else "250 2.1.5 Ok")
    d = daemon(scripts={"10-fwd.rhai": FORWARD}, extra=outbound(server.port))
    send(d, subject="doomed")
    (dsn,) = server.wait(1)
    assert dsn["mail"] == "<>"
    assert dsn["rcpts"] == ["alice@remote.example"]
    msg = message_from_bytes(unstuff(dsn["wire"]), policy=policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["From"].addresses[0].addr_spec == f"MAILER-DAEMON@{HOST}"
    parts = [p.get_content_type() for p in msg.iter_parts()]
    assert parts == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    text = unstuff(dsn["wire"]).decode()
    assert "Final-Recipient: rfc822; bob@far.example" in text
    assert "Action: failed" in text
    assert "Status: 5.1.1" in text
    status = msg.get_payload()[1]
    assert status["Content-Transfer-Encoding"] == "7bit"
    assert "Diagnostic-Code: smtp; 550 5.1.1 <bob@far.example>: no such user\r\n" in text
    assert "Subject: doomed" in text  # the original headers are returned
    assert wait_for(lambda: queue_files(d) == []), queue_files(d)
    time.sleep(0.5)
    assert len(server.transactions) == 1


def test_550_from_smtp_sink_bounces_to_a_local_sender(daemon, sinks):
    sink = sinks(args=["-f", "RCPT", "-B", "550 5.1.1 User unknown"])
    d = daemon(scripts={"10-fwd.rhai": FORWARD}, extra=outbound(sink.port))
    send(d, sender="ann@test.example", subject="to an unknown user")
    (path,) = wait_delivered(d, "ann@test.example", timeout=8)
    dsn = parse(path)
    assert dsn["Return-Path"] == "<>"
    assert dsn["Subject"] == "Undelivered Mail Returned to Sender"
    text = dsn_text(path.read_bytes())
    assert "Final-Recipient: rfc822; bob@far.example" in text
    assert "Status: 5.1.1" in text and "User unknown" in text
    assert sink.messages() == []
    assert wait_for(lambda: queue_files(d) == [])


def test_no_bounce_for_a_null_sender(daemon, sinks):
    sink = sinks(args=["-f", "RCPT", "-B", "550 5.1.1 User unknown"])
    d = daemon(scripts={"10-fwd.rhai": FORWARD}, extra=outbound(sink.port))
    send(d, sender="", subject="a bounce being forwarded")
    assert "no bounce: the failed message had a null sender" in wait_log(d, "no bounce: the failed message had a null sender")
    assert wait_for(lambda: queue_files(d) == [])


def test_max_age_gives_up_and_bounces(daemon, sinks):
    sink = sinks(args=["-r", "RCPT", "-b", "451 4.3.0 Try again later"])
    d = daemon(scripts={"10-fwd.rhai": FORWARD}, extra=outbound(sink.port, retry='["1s"]', max_age="3s"))
    start = time.time()
    send(d, sender="ann@test.example", subject="never delivered")
    (path,) = wait_delivered(d, "ann@test.example", timeout=10)
    assert time.time() - start >= 3.0  # never before max_age (times are whole seconds)
    text = dsn_text(path.read_bytes())
    assert "max_age" in text and "Diagnostic-Code: smtp; 451 4.3.0 Try again later" in text
    assert "Final-Recipient: rfc822; bob@far.example" in text
    assert "Status: 5.3.0" in text  # the temporary 4.3.0, now final
    assert wait_for(lambda: queue_files(d) == [])
    assert int(re.search(r"gave up after (\d+) attempts", text).group(1)) >= 2


def test_kill_9_with_entries_queued_then_restart_delivers(daemon, sinks):
    sink = sinks(args=["-r", "RCPT", "-b", "451 4.3.0 Try again later"])
    d = daemon(scripts={"10-fwd.rhai": FORWARD}, extra=outbound(sink.port))
    for n in range(3):
        send(d, subject=f"queued {n}")
    assert wait_queue(d, lambda rows: len(rows) == 3 and all(int(r["attempts"]) >= 1 for r in rows))
    d.kill()
    assert d.proc.returncode == -signal.SIGKILL
    assert len(queue_rows(d)) == 3  # still on disk
    sink.restart()
    d.start()
    got = sink.wait(3, timeout=8)
    assert sorted(m["msg"]["Subject"] for m in got) == ["queued 0", "queued 1", "queued 2"]
    assert wait_queue(d, lambda rows: rows == []) == []
    time.sleep(0.5)
    assert len(sink.messages()) == 3


def test_kill_9_right_after_250_still_forwards(daemon, sinks):
    """kill -9 at once after the 250 (the forward may not even be queued yet), with the relay
    down; restart with the relay up: the forward goes out."""
    sink = sinks()
    sink.stop()  # the relay is down at first
    d = daemon(scripts={"10-fwd.rhai": FORWARD}, extra=outbound(sink.port))
    send(d, subject="forward after crash")
    d.kill()
    sink.start()
    d.start()
    got = sink.wait(1, timeout=8)
    assert "forward after crash" in [m["msg"]["Subject"] for m in got]
    # Exactly one: a replay of the spooled message must not forward it a second time. A
    # sentinel, accepted after the restart (which resumed the spool before listening), goes
    # out after it; then the queue is empty, so nothing is left to send. Only then count.
    send(d, subject="sentinel")
    assert wait_for(lambda: "sentinel" in [m["msg"]["Subject"] for m in sink.messages()], timeout=8), sink.messages()
    assert wait_queue(d, lambda rows: rows == []) == []
    assert sorted(m["msg"]["Subject"] for m in sink.messages()) == ["forward after crash", "sentinel"]


def test_queue_list_retry_delete(daemon, sinks):
    sink = sinks()
    sink.stop()  # connection refused until it is started again
    d = daemon(scripts={"10-fwd.rhai": FORWARD}, extra=outbound(sink.port, retry='["1h"]'))
    send(d, subject="first")
    send(d, subject="second")
    rows = wait_queue(d, lambda rows: len(rows) == 2 and all(r["attempts"] == "1" for r in rows))
    assert rows, queue(d, "list").stdout
    for row in rows:
        assert row["kind"] == "forward" and row["rcpts"] == "bob@far.example"
        assert re.fullmatch(r"in 3[56]\d\ds", row["next"]), row
        assert row["error"], row
    header = queue(d, "list").stdout.splitlines()[0]
    assert re.match(r"ID\s+KIND\s+ATTEMPTS\s+NEXT TRY\s+RECIPIENTS\s+LAST ERROR$", header), header
    # Which row is which message: read the entries' message files.
    qdir = d.root / "data" / "queue"
    by_subject = {}
    for row in rows:
        text = (qdir / f"{row['id']}.msg").read_text()
        by_subject[re.search(r"Subject: (\S+)", text).group(1)] = row["id"]

    r = queue(d, "delete", by_subject["second"])
    assert r.returncode == 0, r.stderr
    assert "deleted" in r.stdout
    assert [r["id"] for r in queue_rows(d)] == [by_subject["first"]]

    sink.start()
    time.sleep(0.7)
    assert sink.messages() == [], "retry 1h: nothing is sent before `queue retry`"
    r = queue(d, "retry", by_subject["first"])
    assert r.returncode == 0, r.stderr
    got = sink.wait(1, timeout=5)
    assert [m["msg"]["Subject"] for m in got] == ["first"]
    assert wait_queue(d, lambda rows: rows == []) == []
    time.sleep(0.7)
    assert len(sink.messages()) == 1, "the deleted entry was sent"

    for action in ("retry", "delete"):
        r = queue(d, action, "0123456789ABCDEF")
        assert r.returncode == 1
        assert "no such queue entry" in r.stderr


def test_queue_flush_retries_every_entry_now(daemon, sinks):
    """`mailflow queue flush` (like `postqueue -f`) makes every entry due at once."""
    sink = sinks()
    sink.stop()
    d = daemon(scripts={"10-fwd.rhai": FORWARD}, extra=outbound(sink.port, retry='["1h"]'))
    for n in range(3):
        send(d, subject=f"flush{n}")
    assert wait_queue(d, lambda rows: len(rows) == 3 and all(r["attempts"] == "1" for r in rows))
    sink.start()
    time.sleep(0.7)
    assert sink.messages() == [], "retry 1h: nothing is sent before the flush"
    r = queue(d, "flush")
    assert r.returncode == 0, r.stderr
    assert "3 queued message(s) will be retried now" in r.stdout
    got = sink.wait(3, timeout=5)
    assert sorted(m["msg"]["Subject"] for m in got) == ["flush0", "flush1", "flush2"]
    assert wait_queue(d, lambda rows: rows == []) == []


def test_outbound_concurrency_bounds_connections_to_the_relay(daemon, sinks):
    """`[outbound] concurrency = 1`: one delivery attempt at a time, so the relay never sees
    more than one connection from mailflow; out-of-range values are config errors."""
    sink = sinks()
    d = daemon(scripts={"10-fwd.rhai": FORWARD}, extra=outbound(sink.port, more="concurrency = 1\n"))
    for n in range(20):
        send(d, subject=f"c{n}")
    peak = 0
    deadline = time.monotonic() + 10
    while len(sink.messages()) < 20 and time.monotonic() < deadline:
        peak = max(peak, established_to(sink.port))
        time.sleep(0.005)
    assert len(sink.messages()) == 20
    assert peak == 1, peak
    for bad in (0, 1001):
        cfg = d.root / f"bad{bad}.toml"
        cfg.write_text(make_config(free_port()) + f"\n[outbound]\nconcurrency = {bad}\n")
        r = mailflow("check", "--config", str(cfg))
        assert r.returncode == 1 and "concurrency" in r.stderr, (r.stdout, r.stderr)


def established_to(port):
    """Established TCP connections to 127.0.0.1:`port`, from /proc/net/tcp (client side)."""
    n = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[2].endswith(f":{port:04X}") and parts[3] == "01":
                n += 1
    return n


def test_queue_list_works_without_a_running_daemon(tmp_path):
    (tmp_path / "mailflow.toml").write_text(make_config(free_port()))
    r = mailflow("queue", "list", "--config", tmp_path / "mailflow.toml")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("queue is empty")


# === mx mode ===================================================================================


@pytest.fixture
def mx_world(sinks):
    """DNS for the test domains and MX hosts on 127.0.0.2/.3/.5/.6, one shared port:
    - order.test:    MX 20 mx-b, MX 10 mx-a (answered in that order)  -> mx-a
    - fallback.test: MX 10 dead (nothing listening), MX 20 mx-b        -> mx-b
    - tempfail.test: MX 10 mx-t (451 to RCPT), MX 20 mx-b              -> mx-b
    - reject.test:   MX 10 mx-r (550 to RCPT), MX 20 mx-b              -> bounce, mx-b untouched
    - nomx.test:     no MX, A 127.0.0.3                                -> mx-b (implicit MX)
    - nullmx.test:   MX 0 "."                                          -> bounce at once
    """
    from dnslib import MX, A

    port = free_port()
    hosts = {
        "a": sinks("127.0.0.2", port),
        "b": sinks("127.0.0.3", port),
        "t": sinks("127.0.0.5", port, ["-r", "RCPT", "-b", "451 4.3.0 greylisted"]),
        "r": sinks("127.0.0.6", port, ["-f", "RCPT", "-B", "550 5.1.1 no such user here"]),
    }
    zone = {
        ("order.test.", "MX"): [MX("mx-b.test.", 20), MX("mx-a.test.", 10)],
        ("fallback.test.", "MX"): [MX("dead.test.", 10), MX("mx-b.test.", 20)],
        ("tempfail.test.", "MX"): [MX("mx-t.test.", 10), MX("mx-b.test.", 20)],
        ("reject.test.", "MX"): [MX("mx-r.test.", 10), MX("mx-b.test.", 20)],
        ("nomx.test.", "A"): [A("127.0.0.3")],
        ("nullmx.test.", "MX"): [MX(".", 0)],
        ("mx-a.test.", "A"): [A("127.0.0.2")],
        ("mx-b.test.", "A"): [A("127.0.0.3")],
        ("mx-t.test.", "A"): [A("127.0.0.5")],
        ("mx-r.test.", "A"): [A("127.0.0.6")],
        ("dead.test.", "A"): [A("127.0.0.4")],
    }
    dns = DNS(zone, failing={"servfail.test.": "SERVFAIL", "refused.test.": "REFUSED"})
    yield {"port": port, "dns": dns, **hosts}
    dns.close()


def mx_outbound(dns_port, mx_port, retry="1h", **more):
    """An `[outbound]` table for mx mode against the test DNS server; `more` adds keys."""
    lines = ["[outbound]", 'mode = "mx"', f'dns_server = "127.0.0.1:{dns_port}"', f"mx_port = {mx_port}",
             f'retry = ["{retry}"]']
    lines += [f'{key} = "{value}"' for key, value in more.items()]
    return "\n" + "\n".join(lines) + "\n"


def test_mx_mode_ordering_fallback_and_null_mx(daemon, mx_world):
    config = mx_outbound(mx_world["dns"].port, mx_world["port"], retry="1s", max_age="1h")
    targets = ["u@order.test", "u@fallback.test", "u@tempfail.test", "u@reject.test", "u@nomx.test", "u@nullmx.test"]
    script = "fn data(ctx, msg) {\n" + "".join(f'    msg.forward("{t}");\n' for t in targets) + "}\n"
    d = daemon(scripts={"10-fwd.rhai": script}, extra=config)
    send(d, sender="ann@test.example", subject="via mx")
    a, b = mx_world["a"], mx_world["b"]
    assert wait_for(lambda: len(b.messages()) >= 3, 8), (b.messages(), d.log())
    # Two bounces (null MX, 550 at the first MX), delivered to the local sender.
    bounces = wait_delivered(d, "ann@test.example", 2, timeout=8)
    time.sleep(0.5)
    assert [m["rcpts"] for m in a.messages()] == [["<u@order.test>"]]
    assert sorted(m["rcpts"][0] for m in b.messages()) == ["<u@fallback.test>", "<u@nomx.test>", "<u@tempfail.test>"]
    assert mx_world["t"].messages() == [] and mx_world["r"].messages() == []
    texts = sorted(dsn_text(p.read_bytes()) for p in bounces)
    assert len(texts) == 2
    null = [t for t in texts if "u@nullmx.test" in t]
    rejected = [t for t in texts if "u@reject.test" in t]
    assert null and "null MX" in null[0] and "Status: 5.1.10" in null[0], null
    assert rejected and "no such user here" in rejected[0] and "Status: 5.1.1" in rejected[0]
    for m in a.messages() + b.messages():
        assert m["mail"].split()[0] == "<ann@test.example>"
        assert m["msg"]["X-Loop"] == HOST
    assert wait_for(lambda: queue_files(d) == [])
    assert "MX attempt failed; trying the next" in d.log()


def test_mx_mode_dns_failure_is_retried(daemon, mx_world):
    """SERVFAIL and REFUSED say nothing about the domain: both stay queued for a retry."""
    config = mx_outbound(mx_world["dns"].port, mx_world["port"])
    script = 'fn data(ctx, msg) { msg.forward("u@servfail.test"); msg.forward("u@refused.test"); }'
    d = daemon(scripts={"10.rhai": script}, extra=config)
    send(d, sender="ann@test.example")
    rows = wait_queue(d, lambda rows: len(rows) == 2 and all(r["attempts"] == "1" for r in rows))
    assert rows and sorted(r["rcpts"] for r in rows) == ["u@refused.test", "u@servfail.test"], rows
    assert all("DNS lookup" in r["error"] for r in rows), rows
    time.sleep(0.3)
    assert d.messages("ann@test.example") == []


def test_mx_mode_nxdomain_bounces_at_once_with_5_1_2(daemon, mx_world):
    """A domain that does not exist (NXDOMAIN) bounces on the first attempt, as Postfix's
    "Host or domain name not found" does, rather than waiting for max_age."""
    config = mx_outbound(mx_world["dns"].port, mx_world["port"], max_age="5d")
    d = daemon(scripts={"10.rhai": 'fn data(ctx, msg) { msg.forward("u@no-such-domain.test"); }'}, extra=config)
    send(d, sender="ann@test.example")
    (bounce,) = wait_delivered(d, "ann@test.example", 1, timeout=8)
    text = dsn_text(bounce.read_bytes())
    assert "u@no-such-domain.test" in text and "Status: 5.1.2" in text, text
    assert "NXDOMAIN" in text
    assert wait_for(lambda: queue_files(d) == [])


# === the examples that send mail ===============================================================

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example_cases(name):
    import json

    return json.loads((EXAMPLES / name / "expect.json").read_text())["cases"]


@pytest.mark.parametrize("name", ["vacation", "forwarder"])
def test_example_outbound_previews(name):
    """`mailflow test` says what the daemon would send, or why not: the "outbound" lists of
    the examples' expect.json (test_examples.py checks the rest of each case)."""
    import json

    for case in example_cases(name):
        args = ["test", "--config", EXAMPLES / name / "mailflow.toml", "--stage", case["stage"], "--json",
                "--from", case["from"]]
        for rcpt in case["to"]:
            args += ["--to", rcpt]
        r = mailflow(*args, EXAMPLES / name / case["eml"])
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["outbound"] == case["outbound"], case["eml"]


def example_daemon(tmp_path, name, relay_port, instances):
    """The example's own mailflow.toml and scripts, on a free port, relaying to `relay_port`."""
    port = free_port()
    config = (EXAMPLES / name / "mailflow.toml").read_text()
    config = config.replace('listen = ["127.0.0.1:2525"]', f'listen = ["127.0.0.1:{port}"]')
    config = config.replace('"smtp://127.0.0.1:2526"', f'"smtp://127.0.0.1:{relay_port}"')
    root = tmp_path / name
    root.mkdir()
    d = Daemon(root, config, None, port)
    for script in (EXAMPLES / name / "scripts").glob("*.rhai"):
        shutil.copy(script, d.scripts_dir / script.name)
    instances.append(d)
    return d.start()


def send_eml(d, sender, rcpts, path):
    out = transaction(d.port, sender, rcpts, Path(path).read_text())
    assert out["data"] is not None and out["data"].code == 250, out


def test_vacation_example_in_the_daemon(tmp_path, sinks, instances):
    sink = sinks()
    d = example_daemon(tmp_path, "vacation", sink.port, instances)
    for case in example_cases("vacation"):
        send_eml(d, case["from"], case["to"], EXAMPLES / "vacation" / case["eml"])
    sink.wait(2)
    # Ann again, a week has not passed: no second notice.
    send_eml(d, "ann@partner.example", ["me@example.org"], EXAMPLES / "vacation" / "mail" / "colleague.eml")
    wait_log(d, "already answered")
    time.sleep(0.5)
    notices = sink.messages()
    assert sorted(m["rcpts"][0] for m in notices) == ["<ann@partner.example>", "<bob@client.example>"]
    for m in notices:
        assert m["mail"].split()[0] == "<>"
        assert m["msg"]["Subject"] == "Out of office until 7 December"
        assert m["msg"]["Auto-Submitted"] == "auto-replied"
    bob = next(m for m in notices if m["rcpts"] == ["<bob@client.example>"])["msg"]
    assert bob["From"].addresses[0].addr_spec == "firstname.lastname@example.org"
    assert bob["In-Reply-To"] == "<quote-7@client.example>"
    assert bob["References"].split() == ["<quote-5@client.example>", "<quote-6@example.org>", "<quote-7@client.example>"]
    assert len(wait_delivered(d, "me@example.org", folder="Junk")) == 1


def test_forwarder_example_in_the_daemon(tmp_path, sinks, instances):
    sink = sinks()
    d = example_daemon(tmp_path, "forwarder", sink.port, instances)
    for case in example_cases("forwarder"):
        send_eml(d, case["from"], case["to"], EXAMPLES / "forwarder" / case["eml"])
    sink.wait(4)
    time.sleep(0.5)
    sent = sink.messages()
    got = sorted((m["rcpts"][0], m["msg"]["Subject"]) for m in sent)
    assert got == [
        ("<ann@home.example>", "Order 2026-118"),
        ("<bob@home.example>", "Order 2026-118"),
        ("<me@new-home.example>", "Long time no see"),
        ("<me@sms-gateway.example>", "[ALERT] db1 disk 95% full"),
    ]
    senders = {c["eml"]: c["from"] for c in example_cases("forwarder")}
    for m in sent:
        # [srs]: the author's address in SRS form, in our domain (SPF passes at the next hop).
        sender = m["mail"].split()[0]
        assert re.fullmatch(r"<SRS0=[^=]{4}=[A-Z2-7]{2}=[^=]+=[^@]+@example\.org>", sender), sender
        assert any(sender.endswith(f"={a.split('@')[1]}={a.split('@')[0]}@example.org>") for a in senders.values())
        assert m["msg"]["X-Loop"] == "mx.example.org"
    assert sorted(parse(p)["Subject"] for p in d.messages("me@example.org")) == [
        "Project timeline", "[ALERT] db1 disk 95% full"]
    assert [parse(p)["Subject"] for p in d.messages("team@example.org")] == ["Order 2026-118"]
    assert len(d.messages("team@example.org", folder="Junk")) == 1
    assert d.messages("old@example.org") == []


# === STARTTLS towards MX hosts =================================================================


def tls_receiver(tmp_path, port):
    """A second mailflow with a certificate for mx-tls.test, on 127.0.0.1 and 127.0.0.2."""
    root = tmp_path / "receiver"
    root.mkdir()
    cert, key, ca, ca_key = root / "cert.pem", root / "cert.key", root / "ca.pem", root / "ca.key"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-sha256"]
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)  # noqa: E731
    # A private CA and a server certificate it signed (webpki refuses a CA certificate as the
    # server's own).
    run("req", "-x509", *ec, "-days", "2", "-keyout", str(ca_key), "-out", str(ca), "-subj", "/CN=test CA")
    csr = root / "cert.csr"
    run("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=mx-tls.test")
    ext = root / "ext.cnf"
    ext.write_text("basicConstraints=critical,CA:FALSE\nsubjectAltName=DNS:mx-tls.test\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-days", "2",
        "-sha256", "-extfile", str(ext), "-out", str(cert))
    config = textwrap.dedent(
        f"""\
        [smtp]
        listen = ["127.0.0.1:{port}", "127.0.0.2:{port}"]
        hostname = "mx-tls.test"
        local_domains = ["tls.test"]
        tls_cert = "cert.pem"
        tls_key = "cert.key"

        [delivery]
        maildir = "data/mail/{{local}}@{{domain}}"
        """
    )
    return Daemon(root, config, {}, port), ca


@pytest.mark.parametrize(
    "policy, trusted, expected",
    [("never", False, "ESMTP"), ("opportunistic", False, "ESMTPS"), ("required", True, "ESMTPS"),
     ("required", False, None)],
    ids=["never", "opportunistic-unverified", "required-verified", "required-untrusted-defers"],
)
def test_mx_mode_follows_the_starttls_policy(daemon, instances, tmp_path, policy, trusted, expected):
    from dnslib import MX, A

    port = free_port()
    receiver, ca = tls_receiver(tmp_path, port)
    instances.append(receiver)
    receiver.start()
    dns = DNS({("tls.test.", "MX"): [MX("mx-tls.test.", 10)], ("mx-tls.test.", "A"): [A("127.0.0.2")]})
    try:
        config = mx_outbound(dns.port, port, starttls=policy)
        d = daemon(scripts={"10.rhai": 'fn data(ctx, msg) { msg.forward("u@tls.test"); }'}, extra=config, start=False)
        # The sender trusts the receiver's private CA only through SSL_CERT_FILE.
        d.start(env={"SSL_CERT_FILE": str(ca)} if trusted else {"SSL_CERT_FILE": "/nonexistent"})
        send(d, sender="ann@test.example", subject=f"starttls {policy}")
        if expected is None:
            rows = wait_queue(d, lambda rows: rows and rows[0]["attempts"] == "1")
            assert rows and "STARTTLS" in rows[0]["error"], rows
            assert receiver.messages("u@tls.test") == []
            assert d.messages("ann@test.example") == [], "a TLS failure must be retried, not bounced"
            return
        assert wait_for(lambda: len(receiver.messages("u@tls.test")) == 1, 10), d.log()[-2000:]
        raw = receiver.messages("u@tls.test")[0].read_bytes().decode()
        m = re.search(r"by mx-tls\.test[^;]* with (ESMTPS?) id", raw)
        assert m and m.group(1) == expected, raw[:800]
    finally:
        dns.close()


def test_mx_mode_required_starttls_defers_when_not_offered(daemon, mx_world):
    """smtp-sink offers no STARTTLS: with `required` nothing is sent in clear, and the message
    waits in the queue (no bounce)."""
    config = mx_outbound(mx_world["dns"].port, mx_world["port"], starttls="required")
    d = daemon(scripts={"10.rhai": 'fn data(ctx, msg) { msg.forward("u@order.test"); }'}, extra=config)
    send(d, sender="ann@test.example")
    rows = wait_queue(d, lambda rows: rows and rows[0]["attempts"] == "1")
    assert rows and "STARTTLS is required but not offered" in rows[0]["error"], rows
    assert mx_world["a"].messages() == []
    assert d.messages("ann@test.example") == []


# === relay credentials =========================================================================


@pytest.mark.parametrize("form", ["url", "fields"])
def test_relay_authenticates_with_credentials_from_the_url_or_the_fields(daemon, instances, tmp_path, form):
    """The relay is a second mailflow that knows one user (allow_plain_auth: loopback, no TLS);
    its Received header says ESMTPA only for an authenticated session."""
    user, password = "relay@user", "pa:ss w@rd"
    hashed = subprocess.run(
        [str(BIN), "hash-password"], input=password + "\n", capture_output=True, text=True, timeout=60
    ).stdout.strip()
    port = free_port()
    relay = second_daemon(
        tmp_path, "relay", port, "relay.test", "far.example", free_port(), {},
    )
    relay.config_path.write_text(
        relay.config_path.read_text().replace(
            'local_domains = ["far.example"]',
            f'local_domains = ["far.example"]\nallow_plain_auth = true\nauth_users = {{ "{user}" = "{hashed}" }}',
        )
    )
    instances.append(relay)
    relay.start()
    if form == "url":
        more = f'relay = "smtp://relay%40user:pa%3Ass%20w%40rd@127.0.0.1:{port}"\nstarttls = "never"\n'
    else:
        more = f'relay = "smtp://127.0.0.1:{port}"\nrelay_user = "{user}"\nrelay_password = "{password}"\nstarttls = "never"\n'
    d = daemon(scripts={"10-fwd.rhai": FORWARD}, extra="\n[outbound]\n" + more)
    send(d, subject=f"auth via {form}")
    assert wait_for(lambda: len(relay.messages("bob@far.example")) == 1, 10), d.log()[-2000:]
    raw = relay.messages("bob@far.example")[0].read_bytes().decode()
    assert re.search(r"by relay\.test[^;]* with ESMTPA id", raw), raw[:800]


def test_check_refuses_what_run_would_refuse(tmp_path):
    cases = {
        '[outbound]\nrelay = "foo://x"\n': "relay",
        '[outbound]\nrelay = "smtp://a:b@x"\nrelay_user = "c"\n': "both in the URL and in relay_user",
        '[outbound]\nmode = "mx"\ndns_server = "bad"\n': "dns_server",
        '[outbound]\nforward_sender = "not an address"\n': "forward_sender",
        '[smtp]\ntls_listen = ["127.0.0.1:4650"]\n': "tls_listen needs tls_cert",
    }
    for text, needle in cases.items():
        cfg = tmp_path / "bad.toml"
        cfg.write_text(text)
        for command in (["check"], ["run"]):
            r = mailflow(*command, "--config", cfg)
            assert r.returncode == 1, (text, command, r.stdout, r.stderr)
            assert needle in r.stderr, (text, command, r.stderr)
