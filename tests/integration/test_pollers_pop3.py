"""The POP3 commands mailflow sends, seen on the wire, against Dovecot and GNU Mailutils pop3d
(issue #24).

A small logging TCP proxy sits between mailflow and the real server and records every command
line the client sends (passwords masked) and the first word of the server's answers, so each
test shows which command was used and that the real server accepted it. Which commands the
poller sends and why is in docs/accounts.md §7.
"""

import re
import socket
import threading

import pytest

from conftest import wait_for
from dovecot import dovecot  # noqa: F401  (fixture)
from mailutils import mailutils  # noqa: F401  (fixture)
from test_pollers import LOG_SCRIPT, ids, message, pop_ids, wait_processed


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


@pytest.mark.parametrize(
    "kind,apop", [("dovecot", False), ("dovecot", True), ("mailutils", True)],
    ids=["dovecot-user-pass", "dovecot-apop", "mailutils-apop"],
)
def test_pop3_round_commands_on_the_wire(daemon, request, proxies, kind, apop):
    """One round with deletion: login (APOP when the greeting offers it, else USER/PASS), STAT,
    UIDL, LIST, RETR of each new message, DELE, QUIT — every answer +OK. Dovecot offers APOP
    when its passdb has the plain password and `auth_mechanisms` names apop; pop3d whenever it
    has an APOP database (popauth)."""
    factory = request.getfixturevalue(kind)
    dv = factory(apop=True) if kind == "dovecot" and apop else factory()
    assert offers_apop(dv) == apop
    dv.seed([message(1), message(2)])
    proxy = proxies(dv.pop3_port)
    d = daemon(scripts={"10-log.rhai": LOG_SCRIPT}, extra=pop3_account(dv, proxy, delete_after_fetch=True))
    wait_processed(d, ids(1, 2))
    assert wait_for(lambda: "QUIT" in proxy.verbs(), timeout=10), proxy.commands
    first = proxy.verbs()[: proxy.verbs().index("QUIT") + 1]
    login = ["APOP"] if apop else ["USER", "PASS"]
    assert first == [*login, "STAT", "UIDL", "LIST", "RETR", "RETR", "DELE", "DELE", "QUIT"], proxy.commands
    with proxy.lock:
        assert all(r.startswith("+OK") for r in proxy.replies), proxy.replies
    if apop:
        assert re.fullmatch(r"APOP \S+ [0-9a-f]{32}", proxy.commands[0]), proxy.commands[0]
    assert wait_for(lambda: pop_ids(dv) == [], timeout=5)


def offers_apop(dv):
    """Whether the server's greeting carries an APOP timestamp."""
    with socket.create_connection(("127.0.0.1", dv.pop3_port), timeout=5) as s:
        return b"<" in s.recv(512)
