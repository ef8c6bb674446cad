"""What mailflow sends, checked by an independent implementation (issue #22, sending side):
DKIM signatures on auto-replies, bounces and submitted mail, ARC seals on forwards (verified by
PyPI `dkimpy`, with a TXT lookup function that returns the record `mailflow dkim keygen`
printed — no DNS server needed), SRS envelope senders on forwards and the bounce round trip,
and the submission listener's policy (530 before AUTH, STARTTLS before AUTH, 553 for a forged
sender).

The relay is Postfix's `smtp-sink` (see test_outbound.py). Nothing here is skipped: a missing
dkimpy is a failure (test.sh installs it).
"""

import re
import smtplib
import socket
import ssl
import time

import pytest

import dkim
from conftest import free_port, wait_for
from smtpclient import make_message, mailflow, parse, transaction, wait_delivered
from test_outbound import outbound, raw_server, send, sinks  # noqa: F401
from test_tls_auth import PASSWORD, make_cert, password_hash  # noqa: F401

VACATION = 'fn data(ctx, msg) { msg.vacation(#{ days: 1, body: "Away." }); }\n'
FORWARD = 'fn data(ctx, msg) { msg.forward("bob@far.example"); }\n'


def keygen(d, domain, selector, algorithm):
    """`mailflow dkim keygen` in the daemon's folder: the key file and the TXT record value."""
    out = mailflow("dkim", "keygen", "--domain", domain, "--selector", selector, "--algorithm", algorithm,
                   "--out", f"{selector}.key", cwd=d.root)
    assert out.returncode == 0, out.stderr
    assert (d.root / f"{selector}.key").stat().st_mode & 0o777 == 0o600
    record = out.stdout.strip()
    assert record.startswith(f"{selector}._domainkey.{domain}. IN TXT ( \""), record
    value = "".join(re.findall(r'"([^"]*)"', record))
    return value


def dkim_config(domain, selector, algorithm):
    name = "ed25519-sha256" if algorithm == "ed25519" else "rsa-sha256"
    return f'\n[[dkim]]\ndomain = "{domain}"\nselector = "{selector}"\nkey = "{selector}.key"\nalgorithm = "{name}"\n'


def dns(records):
    """A dkimpy `dnsfunc`: TXT values by name."""

    def lookup(name, timeout=5):
        key = name.decode() if isinstance(name, bytes) else name
        return records.get(key.rstrip(".").lower(), "").encode()

    return lookup


def crlf(text):
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


def signed_daemon(daemon, sink, domain, selector, algorithm, scripts, more=""):
    d = daemon(scripts=scripts, extra=outbound(sink.port), start=False)
    value = keygen(d, domain, selector, algorithm)
    d.config_path.write_text(d.config_path.read_text() + dkim_config(domain, selector, algorithm) + more)
    d.start()
    return d, {f"{selector}._domainkey.{domain}": value}


@pytest.mark.parametrize("algorithm", ["ed25519", "rsa"])
def test_auto_reply_is_dkim_signed(daemon, sinks, algorithm):
    sink = sinks()
    d, records = signed_daemon(daemon, sink, "example.org", "mf1", algorithm, {"10-v.rhai": VACATION})
    send(d, subject="are you there?", to="me@example.org")
    (got,) = sink.wait(1)
    raw = crlf(got["text"])
    assert raw.startswith(b"DKIM-Signature:"), raw[:200]
    sig = got["msg"]["DKIM-Signature"]
    assert "d=example.org" in sig and "s=mf1" in sig and f"a={'ed25519' if algorithm == 'ed25519' else 'rsa'}-sha256" in sig
    assert dkim.verify(raw, dnsfunc=dns(records))
    # The verifier really checks: a changed body fails.
    assert not dkim.verify(raw.replace(b"Away.", b"Here."), dnsfunc=dns(records))


def test_bounce_is_signed_by_the_parent_domain_key(daemon, sinks):
    """The DSN comes From MAILER-DAEMON@mx.test.example: the test.example key signs it (relaxed alignment)."""
    sink = sinks(args=["-f", "RCPT", "-B", "550 5.1.1 User unknown"])
    d, records = signed_daemon(daemon, sink, "test.example", "b1", "rsa", {"10-fwd.rhai": FORWARD})
    send(d, sender="ann@test.example", subject="to an unknown user")
    (path,) = wait_delivered(d, "ann@test.example", timeout=8)
    raw = path.read_bytes()
    raw = raw[raw.index(b"\r\n") + 2:]  # the Return-Path line mailflow adds on delivery
    assert b"DKIM-Signature:" in raw.split(b"\r\n\r\n")[0]
    assert dkim.verify(raw, dnsfunc=dns(records))


def test_a_missing_key_is_a_check_error_and_mail_goes_out_unsigned(daemon, sinks):
    sink = sinks()
    d = daemon(scripts={"10-v.rhai": VACATION}, extra=outbound(sink.port) + dkim_config("example.org", "gone", "ed25519"),
               start=False)
    out = mailflow("check", "--config", str(d.config_path))
    assert out.returncode == 1
    assert "gone.key" in out.stderr
    d.start()
    send(d, subject="still answered", to="me@example.org")
    (got,) = sink.wait(1)
    assert "DKIM-Signature" not in got["msg"]


SRS = '\n[srs]\nsecret = "test-secret"\n'


def test_forward_goes_out_with_an_srs_sender_and_an_arc_seal(daemon, sinks):
    sink = sinks()
    # ARC (RFC 8617) is rsa-sha256 only.
    d, records = signed_daemon(daemon, sink, "example.org", "arc1", "rsa", {"10-fwd.rhai": FORWARD}, SRS)
    send(d, subject="forward me")
    (got,) = sink.wait(1)
    sender = got["mail"].split()[0]
    assert re.fullmatch(r"<SRS0=[^=]{4}=[A-Z2-7]{2}=remote\.example=alice@example\.org>", sender), sender
    raw = crlf(got["text"])
    assert raw.startswith(b"ARC-Seal:") or b"\r\nARC-Seal:" in raw.split(b"\r\n\r\n")[0]
    cv, results, why = dkim.arc_verify(raw, dnsfunc=dns(records))
    assert cv == dkim.CV_Pass, (cv, results, why)


def test_srs_bounce_goes_back_to_the_original_sender_and_a_forged_one_is_refused(daemon, sinks):
    sink = sinks()
    d = daemon(scripts={"10-fwd.rhai": FORWARD}, extra=outbound(sink.port) + SRS)
    send(d, subject="forward me")
    (got,) = sink.wait(1)
    srs = got["mail"].split()[0].strip("<>")
    # The next hop bounces: a DSN from the null sender to the SRS address, as a relay sends it.
    out = transaction(d.port, "", [srs], make_message(subject="Undelivered Mail", sender="MAILER-DAEMON@far.example", to=srs))
    assert out["data"].code == 250, out
    # (The script forwards every message, the bounce too: its copy to bob is the third.)
    sent = sink.wait(3, timeout=8)
    bounce = [m for m in sent if m["rcpts"] == ["<alice@remote.example>"]]
    assert len(bounce) == 1 and bounce[0]["mail"].split()[0] == "<>", sent
    # Forged (hash changed) and unknown-format SRS addresses: 550 at RCPT, nothing sent.
    forged = srs.replace("=remote.example=alice", "=remote.example=mallory")
    for bad in (forged, "SRS0=AAAA=AA=x.example=y@example.org"):
        out = transaction(d.port, "", [bad], make_message(subject="x", to=bad))
        assert out["rcpt"][0].code == 550, out
    time.sleep(0.5)
    assert len(sink.messages()) == 3


def test_relay_bounce_of_a_forward_reaches_the_original_sender(daemon, raw_server):
    """The relay refuses the forward: mailflow's DSN to the SRS sender goes to alice, not to SRS0=…"""
    server = raw_server(lambda addr: "550 5.1.1 no such user" if addr.startswith("bob@") else "250 2.1.5 Ok")
    d = daemon(scripts={"10-fwd.rhai": FORWARD}, extra=outbound(server.port) + SRS)
    send(d, subject="doomed")
    # The forward (refused at RCPT) went out from SRS0=…@example.org, a local address: without
    # reversing it, the DSN would be delivered to a local Maildir and never reach the server.
    (dsn,) = server.wait(1, timeout=8)
    assert dsn["mail"] == "<>"
    assert dsn["rcpts"] == ["alice@remote.example"]


# --- submission -------------------------------------------------------------------------------


def submission_daemon(daemon, sink, tmp_path, password_hash, tls="starttls"):
    cert = make_cert(tmp_path)
    port = free_port()
    users = f'[smtp.auth_users]\nme = {{ hash = "{password_hash}", addresses = ["me@example.org"] }}\n'
    d = daemon(scripts={}, extra_smtp=f'tls_cert = "{cert.cert.name}"\ntls_key = "{cert.key.name}"\n'
               f'[[smtp.listeners]]\naddress = "127.0.0.1:{port}"\nrole = "submission"\ntls = "{tls}"\n' + users,
               extra=outbound(sink.port), start=False)
    return d, port, cert


def test_submission_wants_starttls_then_auth_and_the_right_sender(daemon, sinks, tmp_path, password_hash):
    sink = sinks()
    d, port, cert = submission_daemon(daemon, sink, tmp_path, password_hash)
    value = keygen(d, "example.org", "sub1", "ed25519")
    d.config_path.write_text(d.config_path.read_text() + dkim_config("example.org", "sub1", "ed25519"))
    d.start()
    wait_for(lambda: socket.create_connection(("127.0.0.1", port), timeout=0.2).close() is None)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
        c.ehlo("client.test")
        assert "auth" not in c.esmtp_features, "AUTH is not offered before STARTTLS on submission"
        code, _ = c.docmd("AUTH", "PLAIN AG1lAHB3")
        assert code == 538
        code, text = c.docmd("MAIL", "FROM:<me@example.org>")
        assert code == 530 and b"5.7.0" in text
        c.starttls(context=cert.context())
        c.ehlo("client.test")
        code, _ = c.docmd("MAIL", "FROM:<me@example.org>")
        assert code == 530, "AUTH before MAIL"
        c.login("me", PASSWORD)
        code, text = c.docmd("MAIL", "FROM:<boss@example.org>")
        assert code == 553 and b"5.7.1" in text
        c.rset()
        msg = make_message(subject="from me", sender="boss@example.org", to="friend@far.example")
        with pytest.raises(smtplib.SMTPDataError) as refused:
            c.sendmail("me@example.org", ["friend@far.example"], msg)
        assert refused.value.smtp_code == 550, "From address not allowed"
        c.rset()
        msg = make_message(subject="from me", sender="me@example.org", to="friend@far.example")
        c.sendmail("me@example.org", ["friend@far.example"], msg)
    (got,) = sink.wait(1)
    assert got["rcpts"] == ["<friend@far.example>"]
    raw = crlf(got["text"])
    assert dkim.verify(raw, dnsfunc=dns({"sub1._domainkey.example.org": value}))


def test_mx_listener_does_not_sign_mail_from_the_internet(daemon, sinks):
    """A script's add_rcpt of unauthenticated mail claiming our domain is relayed unsigned."""
    sink = sinks()
    script = 'fn data(ctx, msg) { ctx.add_rcpt("bob@far.example"); }\n'
    d, _ = signed_daemon(daemon, sink, "example.org", "mf1", "ed25519", {"10-add.rhai": script})
    send(d, sender="spoof@example.org", subject="forged", to="me@example.org")
    (got,) = sink.wait(1)
    assert "DKIM-Signature" not in got["msg"]
