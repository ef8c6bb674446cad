"""SIGHUP re-reads the config file (docs/reference/command-line.md): the SMTP policy changes for new connections,
settings that name sockets or folders wait for a restart (logged), a broken file changes nothing.

Real daemon, real clients (smtplib), the config file edited as a user would and SIGHUP sent.
"""

import smtplib
import socket
import subprocess
import time

import pytest

from conftest import BIN, free_port, make_config, wait_for

OLD_PASSWORD = "old-Secret-1"
NEW_PASSWORD = "new-Secret-2"


def password_hash(password):
    out = subprocess.run([str(BIN), "hash-password"], input=password + "\n", capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture(scope="module")
def hashes():
    return {"old": password_hash(OLD_PASSWORD), "new": password_hash(NEW_PASSWORD)}


def smtp_config(port, users, size, extra=""):
    entries = ", ".join(f'"{name}" = "{h}"' for name, h in users.items())
    return make_config(port, f"allow_plain_auth = true\nauth_users = {{ {entries} }}\nmax_message_size = {size}\n{extra}")


def reload_and_wait(d, marker):
    """SIGHUP, then wait until the log shows `marker` one more time than before."""
    before = d.log().count(marker)
    d.reload()
    assert wait_for(lambda: d.log().count(marker) > before, timeout=10), d.log()[-2000:]


def connect(d):
    s = smtplib.SMTP("127.0.0.1", d.port, local_hostname="client.test", timeout=15)
    s.ehlo()
    return s


def login_code(d, user, password):
    s = connect(d)
    try:
        return s.login(user, password)[0]
    except smtplib.SMTPAuthenticationError as e:
        return e.smtp_code
    finally:
        s.close()


def test_sighup_applies_auth_users_and_limits_to_new_connections(daemon, hashes):
    d = daemon(extra_smtp="")
    d.stop()
    d.config_path.write_text(smtp_config(d.port, {"olduser": hashes["old"]}, 100000))
    d.start()

    assert login_code(d, "olduser", OLD_PASSWORD) == 235
    assert login_code(d, "newuser", NEW_PASSWORD) == 535
    before = connect(d)
    assert before.esmtp_features["size"] == "100000"

    d.config_path.write_text(smtp_config(d.port, {"newuser": hashes["new"]}, 50000))
    reload_and_wait(d, "config reloaded")

    s = connect(d)
    assert s.esmtp_features["size"] == "50000"
    s.close()
    assert login_code(d, "newuser", NEW_PASSWORD) == 235
    assert login_code(d, "olduser", OLD_PASSWORD) == 535
    # A message over the new limit is refused at once by size declaration.
    s = connect(d)
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        s.sendmail("a@client.test", ["bob@example.org"], "Subject: big\r\n\r\n" + "x" * 60000)
    assert refused.value.smtp_code == 552
    s.close()

    # A session opened before the reload finishes on the settings it started with.
    before.ehlo()
    assert before.esmtp_features["size"] == "100000"
    before.sendmail("a@client.test", ["bob@example.org"], "Subject: old limit\r\n\r\n" + "x" * 60000)
    before.quit()
    assert wait_for(lambda: len(d.messages("bob@example.org")) == 1, timeout=10)


def test_broken_config_on_sighup_keeps_the_running_settings(daemon, hashes):
    d = daemon(extra_smtp="")
    d.stop()
    d.config_path.write_text(smtp_config(d.port, {"olduser": hashes["old"]}, 100000))
    d.start()

    d.config_path.write_text(smtp_config(d.port, {"newuser": "not-a-hash"}, 50000))
    reload_and_wait(d, "config not reloaded")
    assert 'auth_users "newuser"' in d.log()

    assert d.proc.poll() is None
    s = connect(d)
    assert s.esmtp_features["size"] == "100000"
    s.close()
    assert login_code(d, "olduser", OLD_PASSWORD) == 235


def test_settings_that_need_a_restart_are_logged_and_kept(daemon, hashes):
    d = daemon(extra_smtp="")
    d.stop()
    d.config_path.write_text(smtp_config(d.port, {"olduser": hashes["old"]}, 100000))
    d.start()

    other_port = free_port()
    changed = smtp_config(d.port, {"olduser": hashes["old"]}, 100000).replace(
        f'listen = ["127.0.0.1:{d.port}"]', f'listen = ["127.0.0.1:{other_port}"]'
    )
    changed = changed.replace('local_domains = ["example.org", "test.example"]', 'local_domains = ["new.example"]')
    assert changed.count(str(other_port)) == 1 and "new.example" in changed
    d.config_path.write_text(changed)
    reload_and_wait(d, "config reloaded")
    log = d.log()
    for setting in ("smtp.listen", "smtp.local_domains"):
        assert f"setting={setting}" in log and "needs a restart" in log, log[-2000:]

    # Still the old listener and the old local domains.
    s = connect(d)
    s.sendmail("a@client.test", ["bob@example.org"], "Subject: still local\r\n\r\nhi\r\n")
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        s.sendmail("a@client.test", ["someone@new.example"], "Subject: not yet\r\n\r\nhi\r\n")
    s.quit()
    assert wait_for(lambda: len(d.messages("bob@example.org")) == 1, timeout=10)
    with pytest.raises(OSError):
        smtplib.SMTP("127.0.0.1", other_port, timeout=2)


def silent_server():
    """A POP3 'server' that accepts and never says a word (a hung peer)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    return listener


def pop3_account(name, port, user):
    return (
        f'[[accounts]]\nname = "{name}"\nprotocol = "pop3"\nhost = "127.0.0.1"\nport = {port}\n'
        f'tls = "none"\nusername = "{user}"\npassword = "pw"\npoll_interval = "1s"\n'
    )


def test_a_poller_that_does_not_stop_is_cut_off_before_its_successor_starts(daemon):
    """A changed account restarts its poller; one stuck on a hung server (here: waiting 120 s for
    a greeting) is aborted after `shutdown_grace`, so two pollers never share one account."""
    hung = silent_server()
    try:
        port = hung.getsockname()[1]
        d = daemon(extra_smtp='shutdown_grace = "1s"', extra=pop3_account("box", port, "one"), start=False)
        d.start()
        hung.settimeout(10)
        conn, _ = hung.accept()
        conn.settimeout(10)

        d.config_path.write_text(d.config_path.read_text().replace('username = "one"', 'username = "two"'))
        started = time.monotonic()
        d.reload()
        assert conn.recv(100) == b"", "the old poller's connection should be closed"
        assert time.monotonic() - started < 8
        assert wait_for(lambda: "poller did not stop in time: aborted" in d.log(), timeout=5), d.log()[-2000:]
        # Its successor connects afresh.
        second, _ = hung.accept()
        second.close()
        conn.close()
        assert d.proc.poll() is None
    finally:
        hung.close()


def test_sighup_applies_on_error_to_the_scripts(daemon):
    d = daemon(scripts={"10.rhai": 'fn data(ctx, msg) { throw "broken"; }'}, extra='\n[scripts]\non_error = "tempfail"\n')
    s = connect(d)
    with pytest.raises(smtplib.SMTPDataError) as failed:
        s.sendmail("a@client.test", ["bob@example.org"], "Subject: one\r\n\r\nhi\r\n")
    assert failed.value.smtp_code == 451
    s.quit()

    d.config_path.write_text(d.config_path.read_text().replace('on_error = "tempfail"', 'on_error = "accept"'))
    reload_and_wait(d, "scripts reloaded")
    s = connect(d)
    s.sendmail("a@client.test", ["bob@example.org"], "Subject: two\r\n\r\nhi\r\n")
    s.quit()
    assert wait_for(lambda: len(d.messages("bob@example.org")) == 1, timeout=10)
