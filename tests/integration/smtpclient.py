"""A tiny raw SMTP client for tests that assert exact reply codes and texts.

smtplib hides replies behind exceptions and retries; these tests want every line the daemon
sends, from a chosen loopback source address when needed.
"""

import email
import email.policy
import socket
import subprocess
import time
from pathlib import Path

from conftest import BIN


class Reply:
    def __init__(self, code, lines):
        self.code = code
        self.lines = lines

    @property
    def text(self):
        """The reply's lines without the code, joined by newlines."""
        return "\n".join(self.lines)

    def __repr__(self):
        return f"Reply({self.code}, {self.lines!r})"


class SMTP:
    """One connection. `greeting` holds the first reply."""

    def __init__(self, port, source=None, timeout=10.0):
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self.buf = b""
        self.greeting = self.read()

    def read(self):
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"connection closed; got so far {lines!r} {self.buf!r}")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            text = line.decode("utf-8", "replace")
            lines.append(text[4:])
            if len(text) < 4 or text[3] != "-":
                return Reply(int(text[:3]), lines)

    def cmd(self, line):
        self.sock.sendall(line.encode() + b"\r\n")
        return self.read()

    def data(self, message):
        """DATA, then the message (dot-stuffed), returns (354 reply, final reply)."""
        first = self.cmd("DATA")
        if first.code != 354:
            return first, None
        body = message.replace("\r\n", "\n").replace("\n", "\r\n")
        if not body.endswith("\r\n"):
            body += "\r\n"
        body = "\r\n".join("." + l if l.startswith(".") else l for l in body.split("\r\n"))
        self.sock.sendall(body.encode() + b".\r\n")
        return first, self.read()

    def closed_by_server(self, timeout=2.0):
        """True when the server closes the connection (EOF) within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except (socket.timeout, ConnectionResetError):
            return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def transaction(port, sender, rcpts, message, helo="client.test.example", source=None):
    """A whole session: returns the dict of replies by step (`rcpt` is a list)."""
    with SMTP(port, source=source) as c:
        out = {"greeting": c.greeting, "helo": c.cmd(f"EHLO {helo}")}
        out["mail"] = c.cmd(f"MAIL FROM:<{sender}>")
        out["rcpt"] = [c.cmd(f"RCPT TO:<{r}>") for r in rcpts]
        if any(r.code == 250 for r in out["rcpt"]):
            out["data354"], out["data"] = c.data(message)
        else:
            out["data"] = None
        out["quit"] = c.cmd("QUIT")
        return out


def make_message(subject="hello", sender="alice@remote.example", to="bob@example.org", extra="", body="Hi.\n"):
    return (
        f"From: Alice <{sender}>\n"
        f"To: {to}\n"
        f"Subject: {subject}\n"
        f"Date: Mon, 23 Nov 2026 10:00:00 +0000\n"
        f"Message-ID: <m1@remote.example>\n"
        f"{extra}"
        f"\n{body}"
    )


def wait_delivered(daemon, rcpt, count=1, folder=None, timeout=5.0):
    """Waits until `rcpt` has at least `count` messages (in `folder`); returns the files."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        files = daemon.messages(rcpt, folder)
        if len(files) >= count:
            return files
        time.sleep(0.02)
    return daemon.messages(rcpt, folder)


def all_message_files(daemon):
    """Every delivered file under data/mail, any recipient, any folder."""
    root = daemon.root / "data" / "mail"
    if not root.exists():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and p.parent.name in ("new", "cur"))


def parse(path):
    return email.message_from_bytes(Path(path).read_bytes(), policy=email.policy.default)


def wait_log(daemon, needle, timeout=5.0):
    """Waits until the daemon log contains `needle`; returns the log."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        log = daemon.log()
        if needle in log:
            return log
        time.sleep(0.02)
    return daemon.log()


def mailflow(*args, cwd=None, timeout=30):
    """Runs the binary; returns the CompletedProcess (text)."""
    return subprocess.run(
        [str(BIN), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
