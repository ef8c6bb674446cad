"""The POP3 commands mailflow sends, seen on the wire, against Dovecot and GNU Mailutils pop3d
(issue #24).

A small logging TCP proxy sits between mailflow and the real server and records every command
line the client sends (passwords masked) and the first word of the server's answers, so each
test shows which command was used and that the real server accepted it: USER/PASS, APOP,
STAT, UIDL, LIST, TOP, RETR, DELE, RSET, NOOP and QUIT, each where it applies. Which commands the
poller sends and why is in docs/accounts.md §7.
"""

import re
import socket
import textwrap
import threading
import time

import pytest

from conftest import maildir_files, wait_for
from dovecot import dovecot  # noqa: F401  (fixture)
from mailutils import mailutils  # noqa: F401  (fixture)
from test_pollers import BODY_READER, HEADERS_ONLY, LOG_SCRIPT, ids, message, pop_ids, processed, wait_processed


class Proxy:
    """Forwards 127.0.0.1:port to the server's port; records (client line, server status)."""

    def __init__(self, target_port):
        self.target = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.commands = []  # client lines, in order, over all sessions
        self.replies = []  # server status lines (+OK / -ERR ...), in order
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pump, args=(client, server, self.commands), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, self.replies), daemon=True).start()

    def _pump(self, src, dst, record):
        buf = b""
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                if record is self.commands:
                    buf += data
                    *lines, buf = buf.split(b"\r\n")
                    with self.lock:
                        record.extend(line.decode(errors="replace") for line in lines)
                elif data[:1] in (b"+", b"-"):
                    with self.lock:
                        record.append(data.split(b"\r\n", 1)[0].decode(errors="replace"))
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def verbs(self):
        with self.lock:
            return [line.split(" ", 1)[0].upper() for line in self.commands]

    def close(self):
        self.listener.close()


@pytest.fixture
def proxies():
    made = []

    def factory(port):
        p = Proxy(port)
        made.append(p)
        return p

    yield factory
    for p in made:
        p.close()


def pop3_account(dv, proxy, **keys):
    text = dv.account(protocol="pop3", **keys)
    return re.sub(r"port = \d+", f"port = {proxy.port}", text, count=1)


SERVERS = pytest.mark.parametrize(
    "kind,apop", [("dovecot", False), ("dovecot", True), ("mailutils", True)],
    ids=["dovecot-user-pass", "dovecot-apop", "mailutils-apop"],
)


def server_for(request, kind, apop):
    """A started server of `kind`, offering APOP or not (Dovecot offers APOP when its passdb
    has the plain password and `auth_mechanisms` names apop; pop3d whenever it has an APOP
    database made with popauth)."""
    factory = request.getfixturevalue(kind)
    dv = factory(apop=True) if kind == "dovecot" and apop else factory()
    assert offers_apop(dv) == apop
    return dv


def first_session(proxy):
    """The verbs of the first session, up to its QUIT."""
    assert wait_for(lambda: "QUIT" in proxy.verbs(), timeout=15), proxy.commands
    verbs = proxy.verbs()
    return verbs[: verbs.index("QUIT") + 1]


def all_ok(proxy):
    with proxy.lock:
        return all(r.startswith("+OK") for r in proxy.replies)


@SERVERS
def test_pop3_round_commands_on_the_wire(daemon, request, proxies, kind, apop):
    """One round with deletion, the script reading no body and no local copy: login (APOP
    when the greeting offers it, else USER/PASS), STAT, UIDL, LIST, then per message `TOP n 0`
    (the header block is all the hook needs) and DELE, then QUIT — every answer +OK."""
    dv = server_for(request, kind, apop)
    dv.seed([message(1), message(2)])
    proxy = proxies(dv.pop3_port)
    d = daemon(scripts={"10-log.rhai": LOG_SCRIPT}, extra=pop3_account(dv, proxy, delete_after_fetch=True))
    wait_processed(d, ids(1, 2))
    login = ["APOP"] if apop else ["USER", "PASS"]
    assert first_session(proxy) == [*login, "STAT", "UIDL", "LIST", "TOP", "DELE", "TOP", "DELE", "QUIT"], (
        proxy.commands)
    assert [c for c in proxy.commands if c.startswith("TOP")][:2] == ["TOP 1 0", "TOP 2 0"]
    assert all_ok(proxy), proxy.replies
    if apop:
        assert re.fullmatch(r"APOP \S+ [0-9a-f]{32}", proxy.commands[0]), proxy.commands[0]
    assert wait_for(lambda: pop_ids(dv) == [], timeout=5)


@SERVERS
def test_pop3_header_only_fetch_completes_a_forwarded_message(daemon, request, proxies, kind, apop):
    """A script that reads no body gets `TOP n 0`; the message it forwards is then fetched
    whole with `RETR n` before it goes out, whole. `msg.size` is the size LIST gave, not the
    header block's."""
    from smtpclient import wait_delivered

    dv = server_for(request, kind, apop)
    body = "line one\n" + "x" * 5000 + "\nlast line\n"
    dv.seed([message(1, subject="forward me", body=body), message(2, subject="keep")])
    proxy = proxies(dv.pop3_port)
    d = daemon(scripts={"10-fwd.rhai": HEADERS_ONLY}, extra=pop3_account(dv, proxy))
    wait_processed(d, ids(1, 2))
    session = first_session(proxy)
    assert session[session.index("LIST") + 1:] == ["TOP", "RETR", "TOP", "QUIT"], proxy.commands
    assert [c for c in proxy.commands if c.startswith(("TOP", "RETR"))][:3] == ["TOP 1 0", "RETR 1", "TOP 2 0"]
    assert all_ok(proxy), proxy.replies
    (copy,) = wait_delivered(d, "keeper@example.org", timeout=10)
    got = copy.read_bytes()
    assert b"x" * 5000 in got and b"last line" in got and b"Subject: forward me" in got
    sizes = dict(re.findall(r"processed \[(\d)@test.example\] size=(\d+)", d.log()))
    assert int(sizes["1"]) > 5000 and 0 < int(sizes["2"]) < 1000, sizes


@pytest.mark.parametrize("case", ["deliver", "body"])
def test_pop3_whole_messages_with_retr_when_needed(daemon, dovecot, proxies, case):
    """A local copy (`deliver`) or a script reading the body needs every message whole: RETR,
    never TOP."""
    dv = dovecot()
    dv.seed([message(1, body="the secret is here\n"), message(2)])
    proxy = proxies(dv.pop3_port)
    scripts, keys = {"10-log.rhai": LOG_SCRIPT}, {"deliver": "data/fetched"}
    if case == "body":
        scripts, keys = {"10-body.rhai": BODY_READER}, {}
    d = daemon(scripts=scripts, extra=pop3_account(dv, proxy, **keys))
    wait_processed(d, ids(1, 2))
    session = first_session(proxy)
    assert session[session.index("LIST") + 1:] == ["RETR", "RETR", "QUIT"], proxy.commands
    if case == "body":
        assert re.search(r"processed \[1@test.example\] size=\d+ secret=true", d.log())
    else:
        assert len(maildir_files(d.root / "data" / "fetched")) == 2


@SERVERS
def test_pop3_failed_round_sends_rset_and_the_server_keeps_every_message(daemon, request, proxies, kind, apop):
    """A round that fails after a DELE — here the second message is large and the folder its
    download is spilled to cannot be written (as on a full disk) — takes the deletion back with
    RSET before QUIT: the server keeps both messages until a round commits. Once the folder is
    writable again, the next round deletes both, and each was processed once."""
    dv = server_for(request, kind, apop)
    large = "".join(f"line {i} " + "y" * 70 + "\n" for i in range(5000))  # ~400 KB: spilled
    dv.seed([message(1), message(2, body=large)])
    proxy = proxies(dv.pop3_port)
    d = daemon(
        scripts={"10-log.rhai": LOG_SCRIPT},
        extra=pop3_account(dv, proxy, delete_after_fetch=True, deliver="data/fetched"),
        start=False,
    )
    blocker = d.root / "data" / "state" / "fetch-journal" / "large"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")
    d.start()
    session = first_session(proxy)
    login = ["APOP"] if apop else ["USER", "PASS"]
    assert session == [*login, "STAT", "UIDL", "LIST", "RETR", "DELE", "RETR", "RSET", "QUIT"], proxy.commands
    assert all_ok(proxy), proxy.replies
    assert wait_for(lambda: "RSET, the server keeps every message" in d.log(), timeout=5), d.log()[-2000:]
    if hasattr(dv, "settle"):
        dv.settle()
    assert pop_ids(dv) == ["1@test.example", "2@test.example"]
    blocker.unlink()
    wait_processed(d, ids(1, 2))
    assert wait_for(lambda: pop_ids(dv) == [], timeout=15), d.log()[-2000:]
    time.sleep(1.5)
    assert set(processed(d).values()) == {1}, processed(d)
    assert len(maildir_files(d.root / "data" / "fetched")) == 2


NAPPING = """
fn fetched(ctx, msg) {
    exec::pipe("nap", msg);
    log("processed [" + msg.message_id + "]");
}
"""


@SERVERS
def test_pop3_noop_keeps_the_session_alive_while_a_hook_runs_long(daemon, request, proxies, kind, apop):
    """A hook that runs longer than the keepalive interval (5 s: here a plugin command that
    sleeps 7 s) gets NOOPs sent meanwhile, each answered +OK, and the round ends normally."""
    dv = server_for(request, kind, apop)
    dv.seed([message(1)])
    proxy = proxies(dv.pop3_port)
    config = textwrap.dedent("""\
        [scripts]
        timeout_ms = 30000
        [plugins]
        enabled = ["exec"]
        [plugins.exec]
        timeout_ms = 30000
        [plugins.exec.commands]
        nap = ["sleep", "7"]

        """)
    d = daemon(scripts={"10-nap.rhai": NAPPING}, extra=config + pop3_account(dv, proxy, poll_interval="60s"))
    wait_processed(d, ids(1), timeout=30)
    session = first_session(proxy)
    tail = session[session.index("LIST") + 1:]
    assert tail[0] == "RETR" and tail[-1] == "QUIT" and set(tail[1:-1]) == {"NOOP"}, proxy.commands
    assert all_ok(proxy), proxy.replies


def offers_apop(dv):
    """Whether the server's greeting carries an APOP timestamp."""
    with socket.create_connection(("127.0.0.1", dv.pop3_port), timeout=5) as s:
        return b"<" in s.recv(512)
