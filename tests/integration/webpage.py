"""Helpers for the status page tests: a daemon with [web] on, an HTTP client with a cookie
jar that never follows redirects (so 303s can be checked), and a queue entry to act on."""

import http.cookiejar
import json
import re
import subprocess
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request

from conftest import BIN, free_port, wait_port
from smtpclient import transaction

PASSWORD = "correct horse battery"

# A script that files "junk" into Junk and forwards it (to a relay that is not there, so the
# forward stays in the queue), and rejects mail from spam.example at MAIL FROM.
SCRIPTS = {
    "10-junk.rhai": """\
        fn mail_from(ctx) {
            if ctx.sender.ends_with("@spam.example") { return reject("5.7.1 go away"); }
        }
        fn data(ctx, msg) {
            if msg.subject.contains("junk") {
                msg.file_into("Junk");
                msg.forward("boss@remote.example");
                return accept();
            }
        }
    """,
}


def password_hash(password=PASSWORD):
    out = subprocess.run([str(BIN), "hash-password"], input=password + "\n", capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def start(daemon, scripts=None, extra_web=""):
    """A daemon with the page on a free port; returns (daemon, base url)."""
    web_port = free_port()
    relay_port = free_port()  # nothing listens: forwards stay queued
    extra = textwrap.dedent(
        f"""\
        [outbound]
        relay = "smtp://127.0.0.1:{relay_port}"

        [web]
        listen = "127.0.0.1:{web_port}"
        password_hash = "{password_hash()}"
        """
    ) + extra_web
    d = daemon(scripts=SCRIPTS if scripts is None else scripts, extra=extra)
    wait_port(web_port, proc=d.proc)
    return d, f"http://127.0.0.1:{web_port}"


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class Client:
    """Requests with a cookie jar; returns (status, headers, body text)."""

    def __init__(self, base):
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), NoRedirect)

    def request(self, path, data=None, method=None, headers=None):
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=headers or {})
        try:
            with self.opener.open(req, timeout=10) as r:
                return r.status, r.headers, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read().decode()

    def get(self, path, **kw):
        return self.request(path, **kw)

    def post(self, path, data, **kw):
        return self.request(path, data=data, method="POST", **kw)

    def login(self, password=PASSWORD):
        return self.post("/login", {"password": password})

    def csrf(self, path="/queue"):
        status, _, body = self.get(path)
        assert status == 200, (status, body[:300])
        m = re.search(r'name="csrf" value="([0-9a-f]+)"', body)
        assert m, body[:500]
        return m.group(1)


def send(port, subject, sender="alice@remote.example", rcpt="bob@example.org", message_id="<m1@remote.example>"):
    """One message over SMTP; returns the queue id from the 250 reply."""
    message = (
        f"From: {sender}\nTo: {rcpt}\nSubject: {subject}\nMessage-ID: {message_id}\n"
        "Date: Mon, 23 Nov 2026 10:00:00 +0000\n\nHello.\n"
    )
    out = transaction(port, sender, [rcpt], message)
    assert out["data"].code == 250, out["data"]
    return re.search(r"queued as (\w+)", out["data"].text).group(1)


def queue_entries(d):
    """The outbound queue's entries (their JSON state files)."""
    folder = d.root / "data" / "queue"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.exists() else []


def wait_queue(d, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        entries = queue_entries(d)
        if entries and all(e["attempts"] >= 1 for e in entries):
            return entries
        time.sleep(0.05)
    return queue_entries(d)
