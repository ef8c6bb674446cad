"""Helpers for the SMTP receiver tests: a raw-socket SMTP client that sees every reply byte,
and functions to take a delivered Maildir file apart.

A raw client is used wherever smtplib would hide what is under test (pipelining, reply
counts, bare CR/LF, smuggling, over-long lines).
"""

import re
import socket
import time
from dataclasses import dataclass, field

REPLY_LINE = re.compile(rb"^(\d{3})([ -])(.*)$")
STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
QUEUED = re.compile(r"^2\.0\.0 Ok: queued as ([0-9A-F]{16})$")


@dataclass
class Reply:
    code: int
    lines: list = field(default_factory=list)

    @property
    def text(self):
        """All lines' texts joined by newlines (without the codes)."""
        return "\n".join(self.lines)

    @property
    def status(self):
        """The enhanced status code of the last line, or None."""
        head = self.lines[-1].split(" ", 1)[0] if self.lines else ""
        return head if STATUS.match(head) else None

    def __repr__(self):
        return f"Reply({self.code}, {self.lines!r})"


class RawClient:
    """One SMTP connection over a plain socket."""

    def __init__(self, port, timeout=5.0, greet=True):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.greeting = self.reply() if greet else None

    # -- I/O ---------------------------------------------------------------------------------
    def send(self, data: bytes):
        self.sock.sendall(data)

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed; unread bytes {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self) -> Reply:
        """Reads one complete (possibly multi-line) reply."""
        reply = None
        while True:
            line = self._line()
            m = REPLY_LINE.match(line)
            assert m, f"not an SMTP reply line: {line!r}"
            code = int(m.group(1))
            if reply is None:
                reply = Reply(code)
            assert code == reply.code, f"code changed inside a multi-line reply: {line!r}"
            reply.lines.append(m.group(3).decode("utf-8", "replace"))
            if m.group(2) == b" ":
                return reply

    def replies(self, n):
        return [self.reply() for _ in range(n)]

    def cmd(self, line) -> Reply:
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.reply()

    def expect(self, line, code) -> Reply:
        r = self.cmd(line)
        assert r.code == code, f"{line!r}: expected {code}, got {r}"
        return r

    def ehlo(self, name="client.test"):
        return self.expect(f"EHLO {name}", 250)

    def is_closed(self, timeout=3.0):
        """True when the server closes the connection (EOF) within `timeout`, with no more
        bytes sent; fails if it sends anything else."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True
        assert data == b"" and self.buf == b"", f"unexpected bytes before close: {self.buf + data!r}"
        return True

    def no_more_replies(self, wait=0.15):
        """Asserts nothing more arrives within `wait` seconds (the connection may stay open)."""
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            data = None
        finally:
            self.sock.settimeout(5.0)
        assert not self.buf and not data, f"unexpected extra bytes: {self.buf + (data or b'')!r}"

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- one whole transaction ----------------------------------------------------------------
    def send_mail(self, sender, rcpts, data: bytes, stuffed=False) -> Reply:
        """MAIL/RCPT/DATA without pipelining; `data` is the message (dot-stuffed here unless
        `stuffed`), terminated here. Returns the reply after the final dot."""
        self.expect(f"MAIL FROM:<{sender}>", 250)
        for rcpt in rcpts:
            self.expect(f"RCPT TO:<{rcpt}>", 250)
        self.expect("DATA", 354)
        if not stuffed:
            data = dot_stuff(data)
        if data and not data.endswith(b"\r\n"):
            data += b"\r\n"
        self.send(data + b".\r\n")
        return self.reply()


def dot_stuff(data: bytes) -> bytes:
    """RFC 5321 §4.5.2 transparency, on CRLF lines."""
    out = re.sub(rb"(?m)^\.", b"..", data)
    return out


def queue_id(reply: Reply):
    """The queue id of `250 2.0.0 Ok: queued as ID`, asserting that exact form."""
    assert reply.code == 250, reply
    m = QUEUED.match(reply.lines[-1])
    assert m, f"250 after DATA does not read 'Ok: queued as <ID>': {reply}"
    return m.group(1)


def split_trace(raw: bytes):
    """Splits a delivered file into (Return-Path line, Received header, the rest). With
    [auth] verify on (the default) mailflow's Authentication-Results header follows its
    Received header: it is left out of both (see test_auth_verify.py for its content)."""
    assert raw.startswith(b"Return-Path: <"), raw[:80]
    end = raw.index(b"\r\n") + 2
    return_path, rest = raw[:end], raw[end:]
    assert rest.startswith(b"Received: from "), rest[:80]
    received_end = field_end(rest, 0)
    i = received_end
    if rest[i:].startswith(b"Authentication-Results: "):
        i = field_end(rest, i)
    return return_path, rest[:received_end], rest[i:]


def field_end(raw: bytes, start: int) -> int:
    """The end of the header field starting at `start` (continuation lines included)."""
    i = raw.index(b"\r\n", start) + 2
    while raw[i : i + 1] in (b" ", b"\t"):
        i = raw.index(b"\r\n", i) + 2
    return i


def body_of(path) -> bytes:
    """A delivered message as the client sent it (trace headers removed)."""
    with open(path, "rb") as f:
        return split_trace(f.read())[2]


def wait_files(d, rcpt, n, timeout=10.0):
    """Waits until `rcpt` has at least `n` delivered messages; returns the list."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        files = d.messages(rcpt)
        if len(files) >= n:
            return files
        time.sleep(0.02)
    return d.messages(rcpt)


SENTINEL = "sentinel@example.org"


def deliver_sentinel(d, rcpt=SENTINEL):
    """Sends one more message, on a new connection, to `rcpt` (a recipient no test message
    goes to) and waits for its delivery. The spool hands messages to the deliverer in the
    order they were accepted, so whatever was accepted before has been delivered by then: an
    exact count after it proves there is no late extra copy, where `wait_files(d, rcpt, n)`
    would return on the first n."""
    with RawClient(d.port) as c:
        c.ehlo()
        queue_id(c.send_mail("a@client.test", [rcpt], simple_message(subject="sentinel")))
    assert len(wait_files(d, rcpt, 1)) == 1


def simple_message(subject="test", body="hello", msg_id=None, extra=""):
    msg_id = msg_id or f"<{time.time_ns()}@client.test>"
    text = (
        f"From: Sender <sender@client.test>\r\n"
        f"To: User <user@example.org>\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: {msg_id}\r\n"
        f"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
        f"{extra}"
        f"\r\n"
        f"{body}\r\n"
    )
    return text.encode()


def start_shared(tmp_path_factory, extra_smtp=""):
    """A daemon for a whole test module, for tests that only look at replies (no Maildir
    checks): one start instead of one per test keeps the suite fast."""
    from conftest import Daemon, free_port, make_config

    port = free_port()
    d = Daemon(tmp_path_factory.mktemp("shared"), make_config(port, extra_smtp), None, port)
    return d.start()
