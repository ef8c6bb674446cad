"""TLS and authentication (issue #6), against the real daemon with real clients over real TLS.

A certificate is made per test with the `openssl` CLI (SAN IP:127.0.0.1, so clients verify it
for real). Clients: Python's smtplib (starttls/login, SMTP_SSL), swaks (--tls / --tls-on-connect
with --auth), and a raw socket client wherever exact bytes matter (the STARTTLS injection test,
SASL prompts, reply counts). A missing `openssl` or `swaks` fails the test: test.sh installs both.

Covered: STARTTLS offered and AUTH only after it; AUTH in plaintext refused (538); AUTH PLAIN
and LOGIN, each with and without an initial response; wrong password 535 after a per-address
growing delay, 454 past the failure limit; TLS without AUTH is still no relay; authenticated
clients may relay (and, once the outbound sender exists, the mail reaches the relay target);
implicit TLS (tls_listen) accepts mail; pipelined plaintext after STARTTLS is never answered
inside TLS; the Received header (ESMTP/ESMTPS/ESMTPA/ESMTPSA and the TLS version/cipher);
credentials absent from a trace-level log; certificate reload on SIGHUP without dropping
sessions; `mailflow hash-password`.
"""

import base64
import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import BIN, NO_IPV6, Daemon, free_port, wait_port
from smtp_raw import RawClient, split_trace, wait_files

USER = "submitter"
PASSWORD = "Tr0ub4dor&3 sekrit"
WRONG = "Wr0ng-guess-9"
HOSTNAME = "mx.test.example"

CTX_SCRIPT = """
fn mail_from(ctx) {
    log("tls=" + ctx.tls + " user=" + ctx.auth_user + " sender=" + ctx.sender);
}
"""


# --- tools ----------------------------------------------------------------------------------


def tool(name):
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not installed: these tests need it (test.sh installs it with apt-get)")
    return path


def b64(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


@dataclass
class Cert:
    cert: Path
    key: Path
    serial: str  # upper-case hex, as ssl.getpeercert() reports it
    cn: str

    def context(self, *also):
        """A client context that verifies the server against this certificate (and `also`)."""
        ctx = ssl.create_default_context(cafile=str(self.cert))
        for other in also:
            ctx.load_verify_locations(cafile=str(other.cert))
        return ctx

    def der(self):
        return ssl.PEM_cert_to_DER_cert(self.cert.read_text())


def make_cert(folder, name="cert", cn=HOSTNAME, serial="A1A1", key_type="rsa"):
    """A self-signed server certificate for 127.0.0.1 / mx.test.example, made with the openssl CLI."""
    openssl = tool("openssl")
    folder = Path(folder)
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    newkey = ["-newkey", "rsa:2048"] if key_type == "rsa" else ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    subprocess.run(
        [openssl, "req", "-x509", *newkey, "-nodes", "-sha256", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={cn}", "-set_serial", f"0x{serial}",
         "-addext", f"subjectAltName=DNS:{HOSTNAME},IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return Cert(cert, key, serial.upper(), cn)


@pytest.fixture(scope="session")
def password_hash():
    """The hash of PASSWORD, made by `mailflow hash-password` as a user would."""
    out = subprocess.run([str(BIN), "hash-password"], input=PASSWORD + "\n", capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture
def cert(tmp_path):
    return make_cert(tmp_path)


@pytest.fixture
def tls_daemon(daemon, cert, password_hash):
    """Factory: a daemon with tls_cert/tls_key (cert.pem / cert.key beside the config) and, by
    default, auth_users = {USER = hash(PASSWORD)}. `implicit=True` adds a tls_listen port
    (`d.tls_port`)."""

    def factory(scripts=None, users=True, implicit=False, allow_plain=False, tls=True, env=None,
                extra_smtp="", extra=""):
        lines = []
        if tls:
            lines += [f'tls_cert = "{cert.cert.name}"', f'tls_key = "{cert.key.name}"']
        tls_port = free_port() if implicit else None
        if tls_port:
            lines.append(f'tls_listen = ["127.0.0.1:{tls_port}"]')
        if users:
            lines.append(f'auth_users = {{ "{USER}" = "{password_hash}" }}')
        if allow_plain:
            lines.append("allow_plain_auth = true")
        if extra_smtp:
            lines.append(extra_smtp)
        d = daemon(scripts=scripts, extra_smtp="\n".join(lines), extra=extra, start=False)
        d.tls_port = tls_port
        d.cert = cert
        d.start(env=env)
        if tls_port:
            wait_port(tls_port, proc=d.proc)
        return d

    return factory


class Client(RawClient):
    """The raw client of smtp_raw, from a chosen source address, able to STARTTLS or to start
    in TLS (implicit)."""

    def __init__(self, port, source=None, ctx=None, implicit=False, timeout=10.0):
        sock = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=(source, 0) if source else None
        )
        if implicit:
            sock = ctx.wrap_socket(sock, server_hostname="127.0.0.1")
        self.sock = sock
        self.buf = b""
        self.greeting = self.reply()
        assert self.greeting.code == 220, self.greeting

    def starttls(self, ctx):
        r = self.expect("STARTTLS", 220)
        assert r.status == "2.0.0", r
        assert self.buf == b"", f"bytes after the 220 in plaintext: {self.buf!r}"
        self.sock = ctx.wrap_socket(self.sock, server_hostname="127.0.0.1")
        return r

    def ehlo_keywords(self, name="client.test"):
        r = self.ehlo(name)
        return [line.upper() for line in r.lines[1:]]


def smtp_starttls(d, source=None, ctx=None, login=None):
    """smtplib: connect, EHLO, STARTTLS, EHLO, optionally login=(user, password)."""
    s = smtplib.SMTP(
        "127.0.0.1", d.port, local_hostname="client.test", timeout=15,
        source_address=(source, 0) if source else None,
    )
    s.starttls(context=ctx or d.cert.context())
    s.ehlo()
    if login:
        code, _ = s.login(*login)
        assert code == 235
    return s


def message(subject, sender="alice@client.test", to="bob@example.org", body="Hello over TLS."):
    return (
        f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{time.time_ns()}@client.test>\r\nDate: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
        f"\r\n{body}\r\n"
    )


def received_of(path):
    """The Received header mailflow put on a delivered file, unfolded."""
    _, received, _ = split_trace(Path(path).read_bytes())
    return received.decode().replace("\r\n\t", " ").replace("\r\n", "")


def delivered(d, rcpt, n=1, timeout=10.0):
    files = wait_files(d, rcpt, n, timeout)
    assert len(files) >= n, f"{rcpt}: {len(files)} of {n} messages delivered; log:\n{d.log()[-3000:]}"
    return files


def wait_log(d, needle, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if needle in d.log():
            return d.log()
        time.sleep(0.02)
    return d.log()


def swaks(*args, timeout=60):
    exe = tool("swaks")
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=timeout)


# --- STARTTLS offered, AUTH only after it ---------------------------------------------------


def test_starttls_offered_and_auth_only_after_it(tls_daemon):
    d = tls_daemon()
    s = smtplib.SMTP("127.0.0.1", d.port, local_hostname="client.test", timeout=15)
    try:
        s.ehlo()
        assert s.has_extn("starttls")
        assert not s.has_extn("auth"), s.esmtp_features
        # smtplib refuses to log in when AUTH is not offered.
        with pytest.raises(smtplib.SMTPNotSupportedError):
            s.login(USER, PASSWORD)
        code, _ = s.starttls(context=d.cert.context())
        assert code == 220
        s.ehlo()
        assert not s.has_extn("starttls"), "STARTTLS offered again inside TLS"
        assert s.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        # The certificate the client verified is ours.
        peer = s.sock.getpeercert()
        assert peer["serialNumber"] == d.cert.serial
        assert s.sock.version() == "TLSv1.3"
        assert s.login(USER, PASSWORD)[0] == 235
    finally:
        s.quit()


def test_no_starttls_and_no_auth_without_certificate(tls_daemon):
    d = tls_daemon(tls=False)
    with Client(d.port) as c:
        kw = c.ehlo_keywords()
        assert "STARTTLS" not in kw and not any(k.startswith("AUTH") for k in kw), kw
        r = c.cmd("STARTTLS")
        assert (r.code, r.status) == (502, "5.5.1"), r
        r = c.cmd(f"AUTH PLAIN {b64(chr(0) + USER + chr(0) + PASSWORD)}")
        assert (r.code, r.status) == (538, "5.7.11"), r
        c.expect("NOOP", 250)


def test_starttls_resets_the_session(tls_daemon):
    d = tls_daemon()
    ctx = d.cert.context()
    with Client(d.port) as c:
        c.ehlo()
        c.expect("MAIL FROM:<alice@client.test>", 250)
        c.starttls(ctx)
        # Neither the greeting nor the transaction survive the handshake (RFC 3207 §4.2).
        assert c.cmd("RCPT TO:<bob@example.org>").code == 503
        assert c.cmd("MAIL FROM:<alice@client.test>").code == 503
        r = c.cmd(f"AUTH PLAIN {b64(chr(0) + USER + chr(0) + PASSWORD)}")
        assert r.code == 503, r  # EHLO first
        kw = c.ehlo_keywords()
        assert "STARTTLS" not in kw and "AUTH PLAIN LOGIN" in kw, kw
        r = c.cmd("STARTTLS")
        assert (r.code, r.status) == (503, "5.5.1"), r
        c.expect("NOOP", 250)
        c.expect("MAIL FROM:<alice@client.test>", 250)
        c.expect("RCPT TO:<bob@example.org>", 250)


def test_failed_handshake_closes_only_that_connection(tls_daemon):
    d = tls_daemon()
    with Client(d.port) as c:
        c.ehlo()
        c.expect("STARTTLS", 220)
        c.send(b"this is not a TLS ClientHello\r\n" * 4)
        c.sock.settimeout(5)
        data = b""
        try:
            while chunk := c.sock.recv(4096):
                data += chunk
        except (ConnectionResetError, socket.timeout):
            pass
        assert b"250" not in data and b"220" not in data, data
    with Client(d.port) as c:
        c.starttls(d.cert.context())
        c.ehlo()


# --- AUTH in plaintext refused --------------------------------------------------------------


def test_auth_in_plaintext_is_refused_538(tls_daemon):
    d = tls_daemon()
    with Client(d.port) as c:
        c.ehlo()
        for line in (
            f"AUTH PLAIN {b64(chr(0) + USER + chr(0) + PASSWORD)}",
            "AUTH PLAIN",  # no 334 prompt either: nothing is asked for in plaintext
            f"AUTH LOGIN {b64(USER)}",
            "AUTH LOGIN",
        ):
            r = c.cmd(line)
            assert (r.code, r.status) == (538, "5.7.11"), (line, r)
        # A client that sends its SASL answer anyway gets a syntax error that does not echo it.
        r = c.cmd(b64(PASSWORD))
        assert r.code == 500 and b64(PASSWORD) not in r.text, r
        # Not authenticated: still no relay.
        c.expect("MAIL FROM:<alice@client.test>", 250)
        r = c.cmd("RCPT TO:<carol@far.example>")
        assert (r.code, r.status) == (550, "5.7.1"), r


def test_allow_plain_auth_offers_auth_without_tls(tls_daemon):
    d = tls_daemon(allow_plain=True)
    s = smtplib.SMTP("127.0.0.1", d.port, local_hostname="client.test", timeout=15)
    try:
        s.ehlo()
        assert s.has_extn("starttls") and s.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        assert s.login(USER, PASSWORD)[0] == 235
        s.sendmail("alice@client.test", ["bob@example.org"], message("plain auth"))
    finally:
        s.quit()
    assert " with ESMTPA id " in received_of(delivered(d, "bob@example.org")[0])


# --- AUTH PLAIN and LOGIN -------------------------------------------------------------------


@pytest.mark.parametrize("initial_response", [True, False], ids=["initial-response", "no-initial-response"])
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_succeeds_and_lifts_relay_control(tls_daemon, mechanism, initial_response):
    d = tls_daemon(scripts={"10-ctx.rhai": CTX_SCRIPT})
    s = smtp_starttls(d)
    try:
        s.user, s.password = USER, PASSWORD
        authobject = s.auth_plain if mechanism == "PLAIN" else s.auth_login
        code, text = s.auth(mechanism, authobject, initial_response_ok=initial_response)
        assert (code, text) == (235, b"2.7.0 Authentication successful")
        # A second AUTH in the same session is out of sequence.
        assert s.docmd("AUTH", f"PLAIN {b64(chr(0) + USER + chr(0) + PASSWORD)}")[0] == 503
        refused = s.sendmail(
            "alice@example.org", ["carol@far.example", "bob@example.org"], message(f"auth {mechanism}")
        )
        assert refused == {}
    finally:
        s.quit()
    f = delivered(d, "bob@example.org")[0]
    assert " with ESMTPSA id " in received_of(f)
    assert f"tls=true user={USER} sender=alice@example.org" in wait_log(d, "tls=true user=")
    assert f"user={USER}" in d.log()


def test_sasl_exchanges_byte_exact(tls_daemon):
    """The 334 prompts and replies of both mechanisms, without smtplib in between."""
    d = tls_daemon()
    ctx = d.cert.context()
    plain = b64(f"\0{USER}\0{PASSWORD}")
    with Client(d.port) as c:
        c.starttls(ctx)
        c.ehlo()
        r = c.cmd("AUTH PLAIN")
        assert r.code == 334 and r.lines == [""], r
        r = c.cmd(plain)
        assert (r.code, r.status) == (235, "2.7.0"), r
    with Client(d.port) as c:
        c.starttls(ctx)
        c.ehlo()
        r = c.cmd("AUTH LOGIN")
        assert (r.code, r.lines) == (334, ["VXNlcm5hbWU6"]), r  # "Username:"
        r = c.cmd(b64(USER))
        assert (r.code, r.lines) == (334, ["UGFzc3dvcmQ6"]), r  # "Password:"
        r = c.cmd(b64(PASSWORD))
        assert (r.code, r.status) == (235, "2.7.0"), r
    with Client(d.port) as c:
        c.starttls(ctx)
        c.ehlo()
        r = c.cmd(f"AUTH LOGIN {b64(USER)}")
        assert (r.code, r.lines) == (334, ["UGFzc3dvcmQ6"]), r
        r = c.cmd(b64(PASSWORD))
        assert (r.code, r.status) == (235, "2.7.0"), r
        c.no_more_replies()


def test_auth_protocol_errors(tls_daemon):
    d = tls_daemon()
    with Client(d.port) as c:
        c.starttls(d.cert.context())
        c.ehlo()
        r = c.cmd("AUTH CRAM-MD5")
        assert (r.code, r.status) == (504, "5.5.4"), r
        r = c.cmd("AUTH LOGIN")
        assert r.code == 334
        r = c.cmd("*")
        assert r.code == 501, r  # cancelled
        r = c.cmd("AUTH PLAIN")
        assert r.code == 334
        r = c.cmd("*")
        assert r.code == 501, r
        r = c.cmd("AUTH PLAIN !!!not-base64!!!")
        assert r.code == 501, r
        r = c.cmd(f"AUTH PLAIN {b64('no-nul-separators')}")
        assert r.code == 501, r
        c.expect("MAIL FROM:<alice@client.test>", 250)
        r = c.cmd(f"AUTH PLAIN {b64(chr(0) + USER + chr(0) + PASSWORD)}")
        assert (r.code, r.status) == (503, "5.5.1"), r  # not during a transaction
        c.expect("RSET", 250)
        r = c.cmd(f"AUTH PLAIN {b64(chr(0) + USER + chr(0) + PASSWORD)}")
        assert (r.code, r.status) == (235, "2.7.0"), r
        # None of the above counted as a failed guess (no penalty delay on success either).
        assert "authentication failed" not in d.log()


# --- wrong password -------------------------------------------------------------------------


def test_wrong_password_535_and_unknown_user_535(tls_daemon):
    d = tls_daemon()
    s = smtp_starttls(d)
    try:
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            s.login(USER, WRONG)
        assert e.value.smtp_code == 535 and e.value.smtp_error.startswith(b"5.7.8"), e.value
        # Still unauthenticated: no relay.
        s.ehlo()
        s.mail("alice@client.test")
        code, text = s.rcpt("carol@far.example")
        assert (code, text[:5]) == (550, b"5.7.1")
    finally:
        s.close()
    with Client(d.port, source="127.0.0.2") as c:
        c.starttls(d.cert.context())
        c.ehlo()
        r = c.cmd(f"AUTH PLAIN {b64(chr(0) + 'nobody' + chr(0) + PASSWORD)}")
        assert (r.code, r.status) == (535, "5.7.8"), r
        r = c.cmd(f"AUTH PLAIN {b64(chr(0) + USER.upper() + chr(0) + PASSWORD)}")
        assert (r.code, r.status) == (535, "5.7.8"), r


def timed_wrong_auth(c):
    started = time.monotonic()
    r = c.cmd(f"AUTH PLAIN {b64(chr(0) + USER + chr(0) + WRONG)}")
    return r, time.monotonic() - started


def test_failure_delay_grows_per_address(tls_daemon):
    d = tls_daemon()
    with Client(d.port, source="127.0.0.2") as c:
        c.starttls(d.cert.context())
        c.ehlo()
        first, t1 = timed_wrong_auth(c)
        second, t2 = timed_wrong_auth(c)
        assert (first.code, second.code) == (535, 535), (first, second)
        assert t1 >= 0.45, t1
        assert t2 >= 0.95, f"second failure answered after {t2:.2f}s; expected >= 1s"
        assert t2 > t1
    # Another address is not slowed by 127.0.0.2's failures.
    with Client(d.port, source="127.0.0.3") as c:
        c.starttls(d.cert.context())
        c.ehlo()
        r, t = timed_wrong_auth(c)
        assert r.code == 535, r
    # A new connection from the first address keeps its count: the third failure waits >= 1.5 s.
    with Client(d.port, source="127.0.0.2") as c:
        c.starttls(d.cert.context())
        c.ehlo()
        r, t3 = timed_wrong_auth(c)
        assert r.code == 535 and t3 >= 1.45, t3
    # 127.0.0.3's first failure waited the first step (0.5 s), not 127.0.0.2's third (1.5 s):
    # a full second apart, more than the password check's own time varies on a loaded machine.
    assert t < t3 - 0.5, (t, t3)


def test_too_many_failures_454_for_that_address_only(tls_daemon):
    d = tls_daemon()
    ctx = d.cert.context()
    results = []

    def guess():
        try:
            with Client(d.port, source="127.0.0.5", timeout=60) as c:
                c.starttls(ctx)
                c.ehlo()
                results.append(timed_wrong_auth(c)[0].code)
        except Exception as e:  # noqa: BLE001 - reported below
            results.append(repr(e))

    threads = [threading.Thread(target=guess) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert results == [535] * 10, results
    with Client(d.port, source="127.0.0.5") as c:
        c.starttls(ctx)
        c.ehlo()
        started = time.monotonic()
        # Even the right password is not tried now.
        r = c.cmd(f"AUTH PLAIN {b64(chr(0) + USER + chr(0) + PASSWORD)}")
        assert (r.code, r.status) == (454, "4.7.0"), r
        assert time.monotonic() - started < 1.0
        r = c.cmd("AUTH LOGIN")
        assert r.code == 454, r  # no prompt either
    with Client(d.port, source="127.0.0.6") as c:
        c.starttls(ctx)
        c.ehlo()
        r = c.cmd(f"AUTH PLAIN {b64(chr(0) + USER + chr(0) + PASSWORD)}")
        assert (r.code, r.status) == (235, "2.7.0"), r


# --- swaks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_starttls_auth(tls_daemon, mechanism):
    d = tls_daemon()
    out = swaks(
        "--server", f"127.0.0.1:{d.port}", "--tls", "--tls-verify", "--tls-ca-path", d.cert.cert,
        "--auth", mechanism, "--auth-user", USER, "--auth-password", PASSWORD,
        "--helo", "client.test", "--from", "alice@example.org", "--to", "bob@example.org",
        "--header", f"Subject: swaks {mechanism}", "--body", "via swaks",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "235 2.7.0" in out.stdout
    f = delivered(d, "bob@example.org")[0]
    assert f"Subject: swaks {mechanism}".encode() in f.read_bytes()
    received = received_of(f)
    assert " with ESMTPSA id " in received and "(using TLSv1." in received, received


def test_swaks_wrong_password_is_535(tls_daemon):
    d = tls_daemon()
    out = swaks(
        "--server", f"127.0.0.1:{d.port}", "--tls", "--auth", "LOGIN", "--auth-user", USER,
        "--auth-password", WRONG, "--helo", "client.test", "--from", "alice@example.org",
        "--to", "carol@far.example",
    )
    assert out.returncode == 28, out.stdout + out.stderr  # swaks: error in AUTH transaction
    assert "535 5.7.8" in out.stdout
    assert d.messages("carol@far.example") == []


def test_swaks_auth_without_tls_gets_no_auth(tls_daemon):
    d = tls_daemon()
    out = swaks(
        "--server", f"127.0.0.1:{d.port}", "--auth", "PLAIN", "--auth-user", USER,
        "--auth-password", PASSWORD, "--helo", "client.test", "--from", "alice@example.org",
        "--to", "carol@far.example",
    )
    assert out.returncode == 28, out.stdout + out.stderr  # AUTH not advertised in plaintext
    assert "235" not in out.stdout


def test_swaks_implicit_tls_auth_relay(tls_daemon):
    d = tls_daemon(implicit=True)
    out = swaks(
        "--server", f"127.0.0.1:{d.tls_port}", "--tls-on-connect", "--tls-verify",
        "--tls-ca-path", d.cert.cert, "--auth", "PLAIN", "--auth-user", USER, "--auth-password", PASSWORD,
        "--helo", "client.test", "--from", "alice@example.org", "--to", "bob@example.org,carol@far.example",
        "--header", "Subject: swaks implicit",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    f = delivered(d, "bob@example.org")[0]
    assert " with ESMTPSA id " in received_of(f)


# --- relay control --------------------------------------------------------------------------


def test_tls_without_auth_is_still_no_relay(tls_daemon):
    d = tls_daemon(implicit=True, scripts={"10-ctx.rhai": CTX_SCRIPT})
    ctx = d.cert.context()
    for implicit in (False, True):
        port = d.tls_port if implicit else d.port
        with Client(port, ctx=ctx, implicit=implicit) as c:
            if not implicit:
                c.starttls(ctx)
            c.ehlo()
            c.expect("MAIL FROM:<alice@client.test>", 250)
            for rcpt in ("carol@far.example", "victim@example.org.far.example", "x%far.example@example.org"):
                r = c.cmd(f"RCPT TO:<{rcpt}>")
                assert (r.code, r.status) == (550, "5.7.1"), (rcpt, r)
            c.expect("RCPT TO:<bob@example.org>", 250)
    assert "tls=true user= sender=alice@client.test" in wait_log(d, "tls=true user= ")


def test_plaintext_session_script_sees_no_tls(tls_daemon):
    d = tls_daemon(scripts={"10-ctx.rhai": CTX_SCRIPT})
    with Client(d.port) as c:
        c.ehlo()
        c.expect("MAIL FROM:<alice@client.test>", 250)
    assert "tls=false user= sender=alice@client.test" in wait_log(d, "tls=false")


def test_authenticated_relay_reaches_the_relay_target(tls_daemon, tmp_path):
    """Needs the outbound sender ([outbound] mode = "relay"): the submission daemon relays
    mail for non-local recipients to a second mailflow, which delivers it to its Maildir."""
    target_port = free_port()
    target_root = tmp_path / "relay-target"
    target_root.mkdir()
    target = Daemon(
        target_root,
        f"""[smtp]
listen = ["127.0.0.1:{target_port}"]
hostname = "mx.far.example"
local_domains = ["far.example"]

[delivery]
maildir = "data/mail/{{local}}@{{domain}}"
""",
        {},
        target_port,
    )
    target.start()
    try:
        d = tls_daemon(
            extra=f"""
[outbound]
mode = "relay"
relay = "smtp://127.0.0.1:{target_port}"
starttls = "never"
"""
        )
        s = smtp_starttls(d, login=(USER, PASSWORD))
        try:
            refused = s.sendmail(
                "alice@example.org", ["carol@far.example"],
                message("relayed", sender="alice@example.org", to="carol@far.example"),
            )
            assert refused == {}
        finally:
            s.quit()
        deadline = time.time() + 30
        while not (files := target.messages("carol@far.example")) and time.time() < deadline:
            if "outbound sender is not built yet" in d.log():
                pytest.fail("the outbound sender is not built yet: mailflow spooled the message but did not relay it")
            time.sleep(0.05)
        assert files, (
            "nothing reached the relay target in 30 s;\nsubmission log:\n"
            + d.log()[-3000:] + "\ntarget log:\n" + target.log()[-3000:]
        )
        raw = files[0].read_bytes()
        assert raw.startswith(b"Return-Path: <alice@example.org>\r\n"), raw[:200]
        assert b"Subject: relayed" in raw
        # Both hops left their trace: the submission (authenticated, TLS) below the target's.
        text = raw.decode(errors="replace").replace("\r\n\t", " ")
        assert text.count("Received: from ") >= 2, text[:800]
        assert " with ESMTPSA id " in text
        assert d.messages("carol@far.example") == []
    finally:
        target.stop()


# --- implicit TLS ---------------------------------------------------------------------------


def test_implicit_tls_accepts_mail(tls_daemon):
    d = tls_daemon(implicit=True)
    ctx = d.cert.context()
    s = smtplib.SMTP_SSL("127.0.0.1", d.tls_port, local_hostname="client.test", timeout=15, context=ctx)
    try:
        code, _ = s.ehlo()
        assert code == 250
        assert not s.has_extn("starttls")
        assert s.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        assert s.sock.getpeercert()["serialNumber"] == d.cert.serial
        assert s.docmd("STARTTLS")[0] == 503
        refused = s.sendmail("alice@client.test", ["bob@example.org"], message("implicit"))
        assert refused == {}
        assert s.login(USER, PASSWORD)[0] == 235
        s.sendmail("alice@example.org", ["bob@example.org"], message("implicit auth"))
    finally:
        s.quit()
    files = delivered(d, "bob@example.org", 2)
    kinds = sorted(re.search(r" with (\w+) id ", received_of(f)).group(1) for f in files)
    assert kinds == ["ESMTPS", "ESMTPSA"], kinds
    # The plain listener still works alongside.
    with Client(d.port) as c:
        assert "STARTTLS" in c.ehlo_keywords()


def test_plaintext_client_on_implicit_tls_port_gets_no_smtp(tls_daemon):
    d = tls_daemon(implicit=True)
    with socket.create_connection(("127.0.0.1", d.tls_port), timeout=5) as sock:
        sock.sendall(b"EHLO client.test\r\n")
        data = b""
        try:
            while chunk := sock.recv(4096):
                data += chunk
        except (ConnectionResetError, socket.timeout):
            pass
        assert not data.startswith(b"220") and b"250" not in data, data
    s = smtplib.SMTP_SSL("127.0.0.1", d.tls_port, timeout=15, context=d.cert.context())
    assert s.noop()[0] == 250
    s.quit()


# --- the STARTTLS injection (CVE-2011-0411 class) ------------------------------------------


@pytest.mark.parametrize("injected", [b"RSET\r\n", b"RSET\r\nNOOP\r\n"])
def test_plaintext_pipelined_after_starttls_is_never_answered_inside_tls(tls_daemon, injected):
    d = tls_daemon()
    with Client(d.port) as c:
        c.ehlo("x")
        c.send(b"STARTTLS\r\n" + injected)  # one write
        r = c.reply()
        assert (r.code, r.status) == (220, "2.0.0"), r
        assert c.buf == b"", f"a reply to the injected command came in plaintext: {c.buf!r}"
        c.sock = d.cert.context().wrap_socket(c.sock, server_hostname="127.0.0.1")
        c.send(b"NOOP\r\n")
        first = c.reply()
        assert first.lines == ["2.0.0 OK"], f"first reply inside TLS is not the NOOP's: {first}"
        c.send(b"HELP\r\n")
        assert c.reply().code == 214
        c.no_more_replies(0.5)
    assert "plaintext pipelined after STARTTLS discarded" in d.log()


def test_injected_mail_from_does_not_enter_the_tls_session(tls_daemon):
    d = tls_daemon()
    with Client(d.port) as c:
        c.ehlo("x")
        c.send(b"STARTTLS\r\nEHLO evil\r\nMAIL FROM:<evil@attacker.test>\r\n")
        assert c.reply().code == 220
        assert c.buf == b""
        c.sock = d.cert.context().wrap_socket(c.sock, server_hostname="127.0.0.1")
        r = c.cmd("RCPT TO:<bob@example.org>")
        assert r.code == 503, r  # no EHLO, no MAIL came through
        c.ehlo()
        r = c.cmd("RCPT TO:<bob@example.org>")
        assert r.code == 503, r  # still no transaction
        c.no_more_replies()


# --- the Received header --------------------------------------------------------------------


def test_received_header_records_tls_and_auth(tls_daemon):
    d = tls_daemon(allow_plain=True)
    ctx = d.cert.context()

    def send(subject, tls=None, login=False):
        with Client(d.port) as c:
            if tls is not None:
                c.starttls(tls)
            c.ehlo()
            if login:
                c.expect(f"AUTH PLAIN {b64(chr(0) + USER + chr(0) + PASSWORD)}", 235)
            r = c.send_mail("alice@example.org", ["bob@example.org"], message(subject).encode())
            assert r.code == 250, r

    tls12 = d.cert.context()
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    send("plain")
    send("plain+auth", login=True)
    send("tls13", tls=ctx)
    send("tls13+auth", tls=ctx, login=True)
    send("tls12", tls=tls12)
    files = delivered(d, "bob@example.org", 5)
    by_subject = {}
    for f in files:
        raw = f.read_bytes()
        subject = raw.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode()
        by_subject[subject] = received_of(f)
    assert set(by_subject) == {"plain", "plain+auth", "tls13", "tls13+auth", "tls12"}
    assert " with ESMTP id " in by_subject["plain"] and "using" not in by_subject["plain"]
    assert " with ESMTPA id " in by_subject["plain+auth"] and "using" not in by_subject["plain+auth"]
    for subject in ("tls13", "tls13+auth"):
        assert "(using TLSv1.3 with cipher TLS13_" in by_subject[subject], by_subject[subject]
    assert " with ESMTPS id " in by_subject["tls13"]
    assert " with ESMTPSA id " in by_subject["tls13+auth"]
    assert "(using TLSv1.2 with cipher TLS_ECDHE_RSA_WITH_" in by_subject["tls12"], by_subject["tls12"]
    for received in by_subject.values():
        assert received.startswith("Received: from client.test ([127.0.0.1]) ")
        assert f"by {HOSTNAME} (mailflow)" in received
        assert PASSWORD not in received


# --- credentials never logged ---------------------------------------------------------------


def test_credentials_absent_from_trace_log(tls_daemon):
    d = tls_daemon(env={"RUST_LOG": "trace"}, scripts={"10-ctx.rhai": CTX_SCRIPT})
    ctx = d.cert.context()
    # smtplib, all four ways, and a wrong password with each mechanism.
    for mechanism in ("PLAIN", "LOGIN"):
        for initial in (True, False):
            s = smtp_starttls(d)
            s.user, s.password = USER, PASSWORD
            obj = s.auth_plain if mechanism == "PLAIN" else s.auth_login
            assert s.auth(mechanism, obj, initial_response_ok=initial)[0] == 235
            s.sendmail("alice@example.org", ["bob@example.org"], message(f"log {mechanism} {initial}"))
            s.quit()
        for initial, source in ((True, "127.0.0.6"), (False, "127.0.0.7")):
            s = smtp_starttls(d, source=source)
            s.user, s.password = USER, WRONG
            obj = s.auth_plain if mechanism == "PLAIN" else s.auth_login
            with pytest.raises(smtplib.SMTPAuthenticationError) as e:
                s.auth(mechanism, obj, initial_response_ok=initial)
            assert e.value.smtp_code == 535
            s.close()
    # Raw: a cancelled LOGIN after the username, a malformed blob, credentials in plaintext.
    with Client(d.port, source="127.0.0.8") as c:
        c.starttls(ctx)
        c.ehlo()
        assert c.cmd("AUTH LOGIN").code == 334
        assert c.cmd(b64(USER)).code == 334
        assert c.cmd("*").code == 501
        assert c.cmd(f"AUTH PLAIN {b64(PASSWORD)}").code == 501
    with Client(d.port, source="127.0.0.9") as c:
        c.ehlo()
        assert c.cmd(f"AUTH PLAIN {b64(chr(0) + USER + chr(0) + PASSWORD)}").code == 538
        assert c.cmd(b64(f"{chr(0)}{USER}{chr(0)}{PASSWORD}")).code == 500
        assert c.cmd(b64(PASSWORD)).code == 500
    delivered(d, "bob@example.org", 4)
    d.stop()
    log = d.log()
    assert " TRACE " in log and " DEBUG " in log, "the log is not at trace level"
    assert "authenticated" in log and "authentication failed" in log
    secrets = {
        "password": PASSWORD,
        "wrong password": WRONG,
        "PLAIN blob": b64(f"\0{USER}\0{PASSWORD}"),
        "PLAIN blob (wrong)": b64(f"\0{USER}\0{WRONG}"),
        "LOGIN username": b64(USER),
        "LOGIN password": b64(PASSWORD),
        "LOGIN wrong password": b64(WRONG),
        "password alone": b64(PASSWORD),
    }
    for what, secret in secrets.items():
        assert secret not in log, f"{what} ({secret!r}) found in the trace-level log"
    # Nor in the password's url-safe or unpadded base64 forms.
    assert b64(PASSWORD).rstrip("=") not in log


# --- certificate reload on SIGHUP -----------------------------------------------------------


def starttls_peer_serial(d, ctx):
    s = smtp_starttls(d, ctx=ctx)
    try:
        return s.sock.getpeercert()["serialNumber"]
    finally:
        s.quit()


def test_sighup_reloads_certificate_without_dropping_sessions(tls_daemon, tmp_path):
    d = tls_daemon(implicit=True)
    old = d.cert
    renewed = tmp_path / "renewed"
    renewed.mkdir()
    new = make_cert(renewed, cn="mx-renewed.test.example", serial="B2B2", key_type="ec")
    both = old.context(new)

    # Sessions opened before the reload: authenticated STARTTLS, implicit TLS, and plaintext.
    before = smtp_starttls(d, ctx=both, login=(USER, PASSWORD))
    assert before.sock.getpeercert()["serialNumber"] == old.serial
    implicit_before = Client(d.tls_port, ctx=both, implicit=True)
    implicit_before.ehlo()
    plain_before = Client(d.port)
    plain_before.ehlo()
    assert ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate(("127.0.0.1", d.tls_port))) == old.der()

    # Renewal: the files are replaced in place (as certbot's symlinks switch), then SIGHUP.
    for src, dst in ((new.cert, old.cert), (new.key, old.key)):
        tmp = dst.with_suffix(".tmp")
        shutil.copy(src, tmp)
        os.replace(tmp, dst)
    d.reload()
    deadline = time.time() + 10
    while time.time() < deadline and starttls_peer_serial(d, both) != new.serial:
        time.sleep(0.1)

    # New connections see the new certificate, on both listeners.
    assert starttls_peer_serial(d, both) == new.serial
    assert ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate(("127.0.0.1", d.tls_port))) == new.der()
    s = smtplib.SMTP_SSL("127.0.0.1", d.tls_port, timeout=15, context=new.context())
    assert dict(x[0] for x in s.sock.getpeercert()["subject"])["commonName"] == new.cn
    s.quit()

    # The sessions from before are still usable.
    assert before.noop()[0] == 250
    assert before.sock.getpeercert()["serialNumber"] == old.serial
    assert before.sendmail("alice@example.org", ["bob@example.org", "carol@far.example"], message("before")) == {}
    before.quit()
    r = implicit_before.send_mail("alice@client.test", ["bob@example.org"], message("implicit before").encode())
    assert r.code == 250, r
    implicit_before.close()
    # A plaintext session from before upgrades with the new certificate.
    plain_before.starttls(both)
    assert plain_before.sock.getpeercert()["serialNumber"] == new.serial
    plain_before.ehlo()
    r = plain_before.send_mail("alice@client.test", ["bob@example.org"], message("plain before").encode())
    assert r.code == 250, r
    plain_before.close()
    delivered(d, "bob@example.org", 3)

    # A broken renewal keeps the working certificate.
    old.cert.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    d.reload()
    assert "TLS certificate not reloaded" in wait_log(d, "TLS certificate not reloaded")
    assert starttls_peer_serial(d, both) == new.serial
    assert d.proc.poll() is None


# --- mailflow hash-password -----------------------------------------------------------------


def test_hash_password_output_works_in_auth_users(daemon, tmp_path):
    password = "  spaces kept, ünïcode too  "
    run = lambda text: subprocess.run(  # noqa: E731
        [str(BIN), "hash-password"], input=text.encode(), capture_output=True, timeout=60
    )
    first, second = run(password + "\n"), run(password)
    assert first.returncode == 0 and second.returncode == 0, (first.stderr, second.stderr)
    hash1, hash2 = first.stdout.decode().strip(), second.stdout.decode().strip()
    assert hash1.startswith("$argon2id$") and hash2.startswith("$argon2id$"), (hash1, hash2)
    assert first.stdout.decode().count("\n") == 1
    assert hash1 != hash2, "no random salt"
    assert password.strip() not in first.stdout.decode() + first.stderr.decode()
    empty = run("\n")
    assert empty.returncode == 1 and empty.stdout == b""

    cert = make_cert(tmp_path)
    d = daemon(
        extra_smtp=f'tls_cert = "cert.pem"\ntls_key = "cert.key"\n'
        f'auth_users = {{ "one" = "{hash1}", "two" = "{hash2}" }}',
    )
    d.cert = cert
    # RFC 4616: the password travels as UTF-8 (smtplib only sends ASCII, so a raw client).
    for user in ("one", "two"):
        with Client(d.port) as c:
            c.starttls(cert.context())
            c.ehlo()
            r = c.cmd(f"AUTH PLAIN {b64(f'{chr(0)}{user}{chr(0)}{password}'.encode())}")
            assert (r.code, r.status) == (235, "2.7.0"), (user, r)
    with Client(d.port, source="127.0.0.2") as c:
        c.starttls(cert.context())
        c.ehlo()
        r = c.cmd(f"AUTH PLAIN {b64(f'{chr(0)}one{chr(0)}{password.strip()}'.encode())}")
        assert r.code == 535, r


# --- robustness of AUTH ---------------------------------------------------------------------


def test_failed_username_cannot_forge_log_lines(tls_daemon):
    d = tls_daemon()
    forged = "INFO mailflow::smtp::auth: authenticated user=admin"
    with Client(d.port) as c:
        c.starttls(d.cert.context())
        c.ehlo()
        r = c.cmd(f"AUTH PLAIN {b64(chr(0) + 'x' + chr(10) + forged + chr(27) + '[31m' + chr(0) + WRONG)}")
        assert r.code == 535, r
    log = wait_log(d, "authentication failed")
    assert "authentication failed" in log
    assert not any(line.lstrip().startswith(forged) for line in log.splitlines()), log
    assert "\x1b[31m" not in log
    assert "user=admin" not in log.replace("\\n" + forged, "")


def vm_hwm_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_concurrent_auth_attempts_have_bounded_memory(tls_daemon):
    """Each argon2 verification holds 19 MiB: a burst of clients sending AUTH at once must not
    make the daemon hold one per client (hundreds of clients would exhaust memory)."""
    d = tls_daemon(allow_plain=True)
    before = vm_hwm_kib(d.proc.pid)
    blob = b64(f"\0{USER}\0{WRONG}")
    codes = []

    def attempt(i):
        try:
            with Client(d.port, source=f"127.0.1.{i + 1}", timeout=120) as c:
                c.ehlo()
                codes.append(c.cmd(f"AUTH PLAIN {blob}").code)
        except Exception as e:  # noqa: BLE001 - reported below
            codes.append(repr(e))

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert codes == [535] * 16, codes
    grown_mib = (vm_hwm_kib(d.proc.pid) - before) / 1024
    # 16 at once would be ~300 MiB; the bound (4 at a time, reusing their memory) keeps it
    # near 80 MiB.
    assert grown_mib < 150, f"peak memory grew by {grown_mib:.0f} MiB during 16 concurrent AUTH attempts"


# --- configuration checks -------------------------------------------------------------------


def test_config_errors_for_tls_and_auth_users(tmp_path, password_hash):
    cert = make_cert(tmp_path)
    port = free_port()

    def check(smtp_lines, command="check"):
        cfg = tmp_path / "mailflow.toml"
        cfg.write_text(f'[smtp]\nlisten = ["127.0.0.1:{port}"]\n{smtp_lines}\n')
        return subprocess.run([str(BIN), command, "--config", str(cfg)], capture_output=True, text=True, timeout=30)

    good = f'tls_cert = "cert.pem"\ntls_key = "cert.key"\nauth_users = {{ "me" = "{password_hash}" }}'
    out = check(good)
    assert out.returncode == 0, out.stderr
    # A password pasted in clear instead of a hash.
    for command in ("check", "run"):
        out = check('auth_users = { "me" = "hunter2" }', command)
        assert out.returncode == 1, (command, out.stdout, out.stderr)
        assert 'auth_users "me"' in out.stderr and "hash-password" in out.stderr
        assert "hunter2" not in out.stderr + out.stdout
    # Missing or unreadable certificate / key: `check` says so, as `run` would.
    for lines, needle in (
        ('tls_cert = "nope.pem"\ntls_key = "cert.key"', "nope.pem"),
        ('tls_cert = "cert.pem"\ntls_key = "cert.pem"', "tls_key"),
        ('tls_cert = "cert.key"\ntls_key = "cert.key"', "tls_cert"),
        ('tls_cert = "cert.pem"', "together"),
    ):
        for command in ("check", "run"):
            out = check(lines, command)
            assert out.returncode == 1, (lines, command, out.stdout, out.stderr)
            assert needle in out.stderr, (lines, command, out.stderr)
    out = check(f'tls_listen = ["127.0.0.1:{free_port()}"]', "run")
    assert out.returncode == 1 and "tls_listen needs tls_cert" in out.stderr, out.stderr
    # A key that does not belong to the certificate, and password-protected keys.
    make_cert(tmp_path, name="other", key_type="ec")
    openssl = tool("openssl")
    subprocess.run([openssl, "pkey", "-in", str(cert.key), "-aes256", "-passout", "pass:x", "-out",
                    str(tmp_path / "enc.key")], check=True, capture_output=True)
    subprocess.run([openssl, "rsa", "-in", str(cert.key), "-aes256", "-traditional", "-passout", "pass:x",
                    "-out", str(tmp_path / "enc-traditional.key")], check=True, capture_output=True)
    for key, needle in (("other.key", "consistent"), ("enc.key", "encrypted"), ("enc-traditional.key", "encrypted")):
        for command in ("check", "run"):
            out = check(f'tls_cert = "cert.pem"\ntls_key = "{key}"', command)
            assert out.returncode == 1 and needle in out.stderr, (key, command, out.stderr)


@pytest.mark.parametrize("key_format", ["pkcs8-ec-p256", "sec1-ec-p384", "pkcs1-rsa"])
def test_key_formats_certbot_and_openssl_write(daemon, tmp_path, key_format):
    """PKCS#8 (certbot's default), SEC1 "EC PRIVATE KEY" and PKCS#1 "RSA PRIVATE KEY", with a
    Let's Encrypt-style fullchain.pem (leaf + intermediate; the client trusts only the root)."""
    openssl = tool("openssl")
    run = lambda *a: subprocess.run([openssl, *map(str, a)], check=True, capture_output=True)  # noqa: E731
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    root_key, root = tmp_path / "root.key", tmp_path / "root.pem"
    run("req", "-x509", *ec, "-days", "2", "-keyout", root_key, "-out", root, "-subj", "/CN=Test Root")
    ca_ext = tmp_path / "ca.cnf"
    ca_ext.write_text("basicConstraints=critical,CA:true\nkeyUsage=critical,keyCertSign,cRLSign\n")
    inter_key, inter_csr, inter = tmp_path / "inter.key", tmp_path / "inter.csr", tmp_path / "inter.pem"
    run("req", "-new", *ec, "-keyout", inter_key, "-out", inter_csr, "-subj", "/CN=Test Intermediate")
    run("x509", "-req", "-in", inter_csr, "-CA", root, "-CAkey", root_key, "-CAcreateserial", "-days", "2",
        "-out", inter, "-extfile", ca_ext)
    key = tmp_path / "privkey.pem"
    if key_format == "pkcs8-ec-p256":
        run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key)
    elif key_format == "sec1-ec-p384":
        run("ecparam", "-name", "secp384r1", "-genkey", "-noout", "-out", key)
    else:
        run("genrsa", "-traditional", "-out", key, "2048")
    csr, leaf = tmp_path / "leaf.csr", tmp_path / "leaf.pem"
    run("req", "-new", "-key", key, "-out", csr, "-subj", f"/CN={HOSTNAME}")
    ext = tmp_path / "ext.cnf"
    ext.write_text(f"subjectAltName=DNS:{HOSTNAME},IP:127.0.0.1\n")
    run("x509", "-req", "-in", csr, "-CA", inter, "-CAkey", inter_key, "-CAcreateserial", "-days", "2",
        "-out", leaf, "-extfile", ext)
    (tmp_path / "fullchain.pem").write_text(leaf.read_text() + inter.read_text())
    d = daemon(extra_smtp='tls_cert = "fullchain.pem"\ntls_key = "privkey.pem"')
    ctx = ssl.create_default_context(cafile=str(root))  # verifies only if the intermediate is sent
    with Client(d.port) as c:
        c.starttls(ctx)
        assert c.sock.getpeercert()["subject"] == ((("commonName", HOSTNAME),),)
        c.ehlo()
        c.expect("MAIL FROM:<alice@client.test>", 250)


def test_dual_stack_listener_sees_ipv4_clients_as_ipv4(daemon, tmp_path):
    """docs/tls-auth.md recommends `[::]:25`: IPv4 clients must not turn into ::ffff:a.b.c.d
    (scripts compare ctx.remote_ip, the Received header shows it, the AUTH limiter keys on it)."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::", 0))
    except OSError:
        pytest.skip(NO_IPV6)  # listed in the terminal summary (conftest.py)
    cert = make_cert(tmp_path)
    d = daemon(
        config='[smtp]\nlisten = ["[::]:{port}"]\nhostname = "mx.test.example"\nlocal_domains = ["example.org"]\n'
        'tls_cert = "cert.pem"\ntls_key = "cert.key"\n',
        scripts={"10-ip.rhai": 'fn connect(ctx) { log("ip=" + ctx.remote_ip); }\n'},
    )
    with Client(d.port) as c:
        c.starttls(cert.context())
        c.ehlo()
        assert c.send_mail("a@client.test", ["bob@example.org"], message("v4").encode()).code == 250
    assert "ip=127.0.0.1 " in wait_log(d, "ip=")
    assert "::ffff:" not in d.log()
    assert "([127.0.0.1])" in received_of(delivered(d, "bob@example.org")[0])
