"""The pollers over TLS: implicit TLS and STARTTLS/STLS against a Dovecot with a certificate
from a private test CA (testca.py), trusted through the account's `tls_ca` (issue #24).

The core cases (IMAP and POP3: each message once, across a restart) run over `implicit` and
`starttls`, and Dovecot's own log shows that every login came over TLS. A server that does not
offer STARTTLS and a certificate that is not trusted (or names another host) must fail with an
error that says so — no login is ever sent, nothing is fetched.
"""

import re
import subprocess
import time

import pytest

from conftest import BIN, wait_for
from dovecot import dovecot  # noqa: F401  (fixture)
from mailutils import mailutils  # noqa: F401  (fixture)
from test_pollers import LOG_SCRIPT, ids, message, pop_ids, processed, server, wait_processed  # noqa: F401
from testca import make_ca


@pytest.fixture
def ca(tmp_path):
    return make_ca(tmp_path / "ca")


def dovecot_log(dv):
    return dv.log_path.read_text(errors="replace") if dv.log_path.exists() else ""


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_each_message_once_over_tls_across_a_restart(daemon, dovecot, ca, tmp_path, protocol, tls):
    dv = dovecot(cert=ca.issue())
    dv.seed([message(n) for n in (1, 2, 3)])
    account = dv.account(protocol=protocol, tls=tls, tls_ca=str(ca.cert))
    d = daemon(scripts={"10-log.rhai": LOG_SCRIPT}, extra=account)
    wait_processed(d, ids(1, 2, 3))
    assert d.stop() == 0
    dv.seed([message(4)])
    d.start()
    wait_processed(d, ids(4))
    time.sleep(1.5)  # more rounds (POP3) / another check (IMAP): nothing again
    counts = processed(d)
    assert set(counts.values()) == {1}, counts
    if protocol == "pop3":
        assert pop_ids(dv) == sorted(ids(1, 2, 3, 4))  # kept on the server
    # Every login of mailflow (and of the test's own plain-text helpers, which Dovecot marks
    # without TLS) is in Dovecot's log; mailflow's came over TLS.
    service = f"{protocol}-login"
    ours = [line for line in dovecot_log(dv).splitlines() if re.search(rf"{service}: Info: Login: user=<me>", line)]
    tls_logins = [line for line in ours if re.search(r", TLS, ", line)]
    assert len(tls_logins) >= 2, dovecot_log(dv)[-3000:]  # one session before the restart, one after
    assert "TLS handshake" not in d.log() and "connection failed" not in d.log(), d.log()[-3000:]
    assert "round failed" not in d.log(), d.log()[-3000:]


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_starttls_refused_by_the_server_never_falls_back(daemon, server, protocol):
    """A server without TLS (Dovecot `ssl = no`, Mailutils without a certificate) answers
    STARTTLS/STLS with an error: the account fails with a clear error and retries later; no
    login, no fetch — a plain-text session is never opened."""
    dv = server()
    dv.seed([message(1)])
    d = daemon(scripts={"10-log.rhai": LOG_SCRIPT}, extra=dv.account(protocol=protocol, tls="starttls"))
    command = "STARTTLS" if protocol == "imap" else "STLS"
    failed = "IMAP connection failed" if protocol == "imap" else "POP3 round failed"
    line = wait_for(
        lambda: re.search(rf".*{failed}.*the server refused {command}.*never falls back to plain text.*", d.log()),
        timeout=10,
    )
    assert line, d.log()[-3000:]
    print(line.group(0))
    time.sleep(1.5)  # a retry or two
    assert not processed(d)
    log = dv.errors() if getattr(dv, "name", "") == "mailutils" else dovecot_log(dv)
    assert "user=<me>" not in log and "me@mu.test" not in log, log[-3000:]  # no login attempted


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_untrusted_certificate_fails_with_a_clear_error(daemon, dovecot, ca, tmp_path, protocol, tls):
    """The server's certificate comes from a CA the system does not trust: the account fails,
    says why and what to set; with a `tls_ca` of another CA it says the chain does not lead
    there. No login is sent either way."""
    dv = dovecot(cert=ca.issue())
    dv.seed([message(1)])
    other = make_ca(tmp_path / "other", name="other-ca")
    failed = "IMAP connection failed" if protocol == "imap" else "POP3 round failed"
    d = daemon(
        scripts={"10-log.rhai": LOG_SCRIPT},
        extra=dv.account(name="system", protocol=protocol, tls=tls)
        + dv.account(name="otherca", protocol=protocol, tls=tls, tls_ca=str(other.cert)),
    )
    system = wait_for(lambda: re.search(rf"account=system.*{failed}.*", d.log()), timeout=10)
    assert system, d.log()[-3000:]
    assert "TLS handshake with 127.0.0.1 failed" in system.group(0)
    assert "UnknownIssuer" in system.group(0)
    assert "not trusted by the system" in system.group(0)
    assert "trust store; for a private CA set tls_ca" in system.group(0)
    wrong = wait_for(lambda: re.search(rf"account=otherca.*{failed}.*", d.log()), timeout=10)
    assert wrong, d.log()[-3000:]
    assert f"does not chain to tls_ca {other.cert}" in wrong.group(0)
    time.sleep(1.5)
    assert not processed(d)
    assert "user=<me>" not in dovecot_log(dv)  # no login over an untrusted connection


def test_certificate_for_another_name_fails(daemon, dovecot, ca):
    dv = dovecot(cert=ca.issue(san="DNS:mail.elsewhere.example"))
    dv.seed([message(1)])
    d = daemon(scripts={"10-log.rhai": LOG_SCRIPT}, extra=dv.account(tls="implicit", tls_ca=str(ca.cert)))
    line = wait_for(lambda: re.search(r".*IMAP connection failed.*", d.log()), timeout=10)
    assert line and 'certificate not valid for name \\"127.0.0.1\\"' in line.group(0), d.log()[-3000:]
    assert "set tls_ca" not in line.group(0)  # the CA is right; the name is not
    time.sleep(1)
    assert not processed(d)


def test_tls_ca_needs_tls(daemon, dovecot, ca):
    dv = dovecot()
    d = daemon(start=False, extra=dv.account(tls="none", tls_ca=str(ca.cert)))
    out = subprocess.run([str(BIN), "check", "--config", str(d.config_path)], capture_output=True, text=True)
    assert out.returncode != 0
    assert 'tls_ca of "dv" needs tls = "implicit" or "starttls"' in out.stdout + out.stderr


def test_self_signed_ca_certificate_as_server_certificate_is_refused_and_explained(daemon, dovecot, ca):
    """`openssl req -x509` makes a CA certificate (CA:TRUE); trusted with tls_ca and presented
    by the server itself, rustls refuses it as a server certificate: the error says what to do."""
    dv = dovecot(cert=ca)
    dv.seed([message(1)])
    d = daemon(scripts={"10-log.rhai": LOG_SCRIPT}, extra=dv.account(tls="implicit", tls_ca=str(ca.cert)))
    line = wait_for(lambda: re.search(r".*IMAP connection failed.*", d.log()), timeout=10)
    assert line and "CaUsedAsEndEntity" in line.group(0), d.log()[-3000:]
    assert "issue the server a certificate from a CA and trust that CA with tls_ca" in line.group(0)
    assert not processed(d)
