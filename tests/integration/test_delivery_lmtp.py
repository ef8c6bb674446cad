"""LMTP delivery (docs/delivery.md): `[delivery] mode = "lmtp"` hands local mail to a private
Dovecot's LMTP service, on its Unix socket and on TCP. What arrived is read back with imaplib
(the store's view, independent of mailflow): folders from `file_into`, per-recipient 5xx
(bounced) and 4xx (retried without a second copy for the recipient already served), the
server down (nothing lost), and a 2 MB message streamed from its spool file intact.
"""

import email
import os
import smtplib
import time

from conftest import wait_for
from dovecot import dovecot  # noqa: F401  (fixture)
from smtpclient import all_message_files, mailflow, wait_log

USERS = {"me": "secret", "you": "secret2", "alice": "secret3"}
# The deliverer retries a deferred message after 30 s.
RETRY_WAIT = 75


def lmtp_daemon(daemon, dv, via="unix", scripts=None):
    server = f"unix:{dv.lmtp_socket}" if via == "unix" else f"127.0.0.1:{dv.lmtp_port}"
    # Appended to the `[delivery]` section make_config ends with.
    return daemon(scripts=scripts, extra=f'mode = "lmtp"\nlmtp = "{server}"\n')


def send(d, rcpts, subject="hello", msgid="<m1@remote.example>", sender="alice@example.org", body="Hi.\n"):
    message = (
        f"From: Alice <{sender}>\r\nTo: {', '.join(rcpts)}\r\nSubject: {subject}\r\n"
        f"Message-ID: {msgid}\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n{body}"
    )
    with smtplib.SMTP("127.0.0.1", d.port, timeout=60) as client:
        refused = client.sendmail(sender, rcpts, message.replace("\r\n", "\n").replace("\n", "\r\n").encode())
    assert refused == {}, refused


def ids(dv, user, mailbox="INBOX"):
    return dv.mailbox(mailbox, user=user)


def test_unix_socket_delivery_and_file_into_junk(daemon, dovecot):
    dv = dovecot(users=USERS, lmtp=True)
    d = lmtp_daemon(daemon, dv, "unix", scripts={"10-junk.rhai": """
        fn data(ctx, msg) { if msg.subject.contains("SPAM") { msg.file_into("Junk"); } }
    """})
    send(d, ["me@example.org"], subject="lunch?", msgid="<ham@remote.example>")
    send(d, ["me@example.org", "you@example.org"], subject="[SPAM] pills", msgid="<spam@remote.example>")
    assert wait_for(lambda: "<ham@remote.example>" in ids(dv, "me"), timeout=15), d.log()[-3000:]
    assert wait_for(lambda: "<spam@remote.example>" in ids(dv, "you", "Junk"), timeout=15), d.log()[-3000:]
    assert set(ids(dv, "me", "Junk")) == {"<spam@remote.example>"}
    assert set(ids(dv, "me")) == {"<ham@remote.example>"}
    assert ids(dv, "you") == {}
    # Nothing went to mailflow's own Maildir.
    assert all_message_files(d) == []
    assert "delivered over LMTP" in d.log()


def test_refused_recipient_is_bounced_the_other_delivered_once(daemon, dovecot):
    dv = dovecot(users=USERS, lmtp=True)
    d = lmtp_daemon(daemon, dv, "tcp")
    send(d, ["me@example.org", "nobody@example.org"], subject="to two", msgid="<two@remote.example>")
    assert wait_for(lambda: "<two@remote.example>" in ids(dv, "me"), timeout=15), d.log()[-3000:]
    # The bounce reaches the (local) sender through the outbound queue, over LMTP too.
    def bounce():
        if dv.count("INBOX", user="alice") == 0:
            return []
        c = dv.imap("alice")
        try:
            c.select("INBOX", readonly=True)
            typ, data = c.fetch("1:*", "(BODY.PEEK[])")
            return [item[1] for item in data if isinstance(item, tuple)]
        finally:
            c.logout()

    got = wait_for(bounce, timeout=20)
    assert len(got) == 1, d.log()[-3000:]
    report = got[0].decode(errors="replace")
    assert "Final-Recipient: rfc822; nobody@example.org" in report
    assert "550" in report and "5.1.1" in report
    assert report.count("Final-Recipient:") == 1
    # Settled: the message left the spool, and the delivered recipient got it once.
    wait_log(d, "message delivered", timeout=10)
    time.sleep(1)
    assert list(ids(dv, "me")) == ["<two@remote.example>"]
    assert "message delivered" in d.log()


def test_deferred_recipient_is_retried_without_duplicating_the_other(daemon, dovecot):
    dv = dovecot(users=USERS, lmtp=True)
    home = dv.dir / "mail" / "you"
    mode = home.stat().st_mode & 0o7777
    # Dovecot cannot open you's mailbox: 451 4.2.0 for that recipient only.
    os.chmod(home, 0)
    try:
        d = lmtp_daemon(daemon, dv, "unix")
        send(d, ["me@example.org", "you@example.org"], subject="later", msgid="<later@remote.example>")
        assert wait_for(lambda: "<later@remote.example>" in ids(dv, "me"), timeout=15), d.log()[-3000:]
        log = wait_log(d, "LMTP delivery deferred", timeout=10)
        assert "you@example.org" in log and "451" in log
    finally:
        os.chmod(home, mode)
    assert wait_for(lambda: "<later@remote.example>" in ids(dv, "you"), timeout=RETRY_WAIT), d.log()[-3000:]
    wait_log(d, "message delivered", timeout=10)
    # `mailbox` asserts each Message-ID appears once: me was not delivered to again.
    assert list(ids(dv, "me")) == ["<later@remote.example>"]
    assert dv.count("INBOX", user="me") == 1


def test_server_down_loses_nothing_and_delivers_when_back(daemon, dovecot):
    dv = dovecot(users=USERS, lmtp=True)
    d = lmtp_daemon(daemon, dv, "unix")
    dv.stop()
    send(d, ["me@example.org"], subject="while down", msgid="<down@remote.example>")
    wait_log(d, "LMTP server unavailable", timeout=10)
    assert "LMTP server unavailable" in d.log(), d.log()[-3000:]
    assert "message delivered" not in d.log()
    dv.start()
    assert wait_for(lambda: "<down@remote.example>" in ids(dv, "me"), timeout=RETRY_WAIT), d.log()[-3000:]
    wait_log(d, "message delivered", timeout=10)
    assert dv.count("INBOX", user="me") == 1


def test_large_message_arrives_intact(daemon, dovecot):
    dv = dovecot(users=USERS, lmtp=True)
    d = lmtp_daemon(daemon, dv, "unix")
    # 2 MB with lines a dot starts (stuffed on the way in and again on the way out), a lone
    # dot, and 8-bit text.
    lines = []
    for i in range(36000):
        lines.append(f".{i} leading dot" if i % 7 == 0 else f"line {i} " + "x" * 50 + " é")
        if i % 1000 == 0:
            lines.append(".")
    body = "\r\n".join(lines) + "\r\n"
    assert len(body.encode()) > 2_000_000
    send(d, ["me@example.org"], subject="big", msgid="<big@remote.example>", body=body)
    assert wait_for(lambda: "<big@remote.example>" in ids(dv, "me"), timeout=30), d.log()[-3000:]
    c = dv.imap("me")
    try:
        c.select("INBOX", readonly=True)
        typ, data = c.fetch("1", "(BODY.PEEK[TEXT])")
        text = next(item[1] for item in data if isinstance(item, tuple))
    finally:
        c.logout()
    assert text == body.encode()
    # It was kept in a spool file (a large message), and the file is gone once delivered.
    large = d.root / "data" / "spool" / "large"
    assert large.is_dir()
    assert wait_for(lambda: not any(large.iterdir()), timeout=10)


def test_check_refuses_lmtp_mode_without_a_server(tmp_path):
    config = tmp_path / "mailflow.toml"
    config.write_text('[delivery]\nmode = "lmtp"\n')
    out = mailflow("check", "--config", config)
    assert out.returncode != 0
    assert "needs lmtp" in out.stdout + out.stderr
    config.write_text('[delivery]\nmode = "lmtp"\nlmtp = "unix:run/lmtp"\n')
    out = mailflow("check", "--config", config)
    assert out.returncode != 0 and "absolute" in out.stdout + out.stderr
    config.write_text('[delivery]\nmode = "lmtp"\nlmtp = "127.0.0.1:24"\n')
    out = mailflow("check", "--config", config)
    assert out.returncode == 0, out.stdout + out.stderr
