"""The command line around the receiver: `mailflow check` on good and bad configs, exit codes,
and `mailflow run` on built-in defaults (no config file: 127.0.0.1:2525, accepts mail).

Issue #2, docs/reference/command-line.md.
"""

import re
import signal
import smtplib
import socket
import subprocess
import textwrap
import time

import pytest

from conftest import BIN, free_port, maildir_files, wait_for, wait_port
from smtp_raw import body_of, simple_message

GOOD = textwrap.dedent(
    """\
    [smtp]
    listen = ["127.0.0.1:{port}"]
    hostname = "mx.test.example"
    local_domains = ["example.org"]
    max_message_size = 1000000
    command_timeout = "30s"

    [delivery]
    maildir = "data/mail/{{local}}@{{domain}}"
    """
)


def mailflow(*args, cwd, timeout=20):
    return subprocess.run([str(BIN), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_check_accepts_a_good_config(tmp_path):
    cfg = tmp_path / "mailflow.toml"
    cfg.write_text(GOOD.format(port=free_port()))
    r = mailflow("check", "--config", str(cfg), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout
    # --config before the subcommand works too
    r = mailflow("--config", str(cfg), "check", cwd=tmp_path)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    "text, key, line, col",
    [
        ('[smtp]\nhostname = "x"\nlisten_typo = ["127.0.0.1:25"]\n', "listen_typo", 3, 1),
        ('[smtp]\nhostname = "x"\n\n[delivery]\nmaildir = "m"\n  mail_dir = "n"\n', "mail_dir", 6, 3),
        ('[smtp]\nhostname = "x"\n[smtpd]\nport = 25\n', "smtpd", 3, 2),
        ('[smtp]\nhostname = "x"\nmax_recipients = 5\nmax_recipient = 5\n', "max_recipient", 4, 1),
    ],
)
def test_check_names_an_unknown_key_with_its_position(tmp_path, text, key, line, col):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    r = mailflow("check", "--config", str(cfg), cwd=tmp_path)
    assert r.returncode == 1, (r.stdout, r.stderr)
    first = r.stderr.strip().splitlines()[0]
    m = re.match(r"^(.+):(\d+):(\d+): (.+)$", first)
    assert m, first
    assert m.group(1).endswith("bad.toml")
    assert (int(m.group(2)), int(m.group(3))) == (line, col), first
    assert key in m.group(4)


@pytest.mark.parametrize(
    "text, line, needle",
    [
        ('[smtp]\ncommand_timeout = "5 parsecs"\n', 2, "parsecs"),
        ('[smtp]\nmax_message_size = "big"\n', 2, '"big"'),
        ("[smtp]\nlisten = [\n", 2, "]"),
    ],
)
def test_check_rejects_bad_values_with_file_line_col(tmp_path, text, line, needle):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    r = mailflow("check", "--config", str(cfg), cwd=tmp_path)
    assert r.returncode == 1
    m = re.match(r"^(.*bad\.toml):(\d+):(\d+): (.+)", r.stderr)
    assert m, r.stderr
    assert int(m.group(2)) == line
    assert needle in m.group(4)


def test_check_uses_mailflow_toml_in_the_current_folder(tmp_path):
    (tmp_path / "mailflow.toml").write_text('[smtp]\nhostnme = "typo"\n')
    r = mailflow("check", cwd=tmp_path)
    assert r.returncode == 1
    assert "mailflow.toml:2:1:" in r.stderr and "hostnme" in r.stderr


def test_missing_config_file_is_an_error(tmp_path):
    r = mailflow("check", "--config", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert r.returncode == 1
    assert "nope.toml" in r.stderr


def test_usage_errors_exit_2(tmp_path):
    r = mailflow("frobnicate", cwd=tmp_path)
    assert r.returncode == 2
    r = mailflow("check", "--no-such-flag", cwd=tmp_path)
    assert r.returncode == 2


def test_run_with_a_bad_config_exits_1_and_does_not_listen(tmp_path):
    port = free_port()
    cfg = tmp_path / "mailflow.toml"
    cfg.write_text(GOOD.format(port=port) + "bogus_key = 1\n")
    r = mailflow("run", "--config", str(cfg), cwd=tmp_path)
    assert r.returncode == 1
    assert "bogus_key" in r.stderr and re.search(r"mailflow\.toml:\d+:\d+:", r.stderr)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()


def test_no_subcommand_means_run(tmp_path):
    port = free_port()
    cfg = tmp_path / "mailflow.toml"
    cfg.write_text(GOOD.format(port=port))
    proc = subprocess.Popen([str(BIN), "--config", str(cfg)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc=proc)
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
            code, banner = s.noop()
            assert code == 250
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


def port_is_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_run_without_any_config_listens_on_2525_and_accepts_mail(tmp_path):
    """The command line: `mailflow run` with no config file must start and accept mail, on
    127.0.0.1:2525, with data under ./data of the current folder."""
    if not port_is_free(2525):
        pytest.fail("127.0.0.1:2525 is in use by another process; this test needs it free")
    log = open(tmp_path / "run.log", "wb")
    proc = subprocess.Popen([str(BIN), "run"], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(2525, proc=proc, timeout=10)
        # it is our process that listens (not something that grabbed the port meanwhile)
        time.sleep(0.1)
        assert proc.poll() is None, (tmp_path / "run.log").read_text()
        msg = simple_message(subject="defaults")
        with smtplib.SMTP("127.0.0.1", 2525, timeout=5) as s:
            code, banner = s.ehlo("client.test")
            assert code == 250
            assert s.sendmail("a@client.test", ["someone@localhost"], msg) == {}
        root = tmp_path / "data" / "mail" / "someone@localhost"
        (path,) = wait_for(lambda: maildir_files(root))
        assert body_of(path) == msg
        assert (tmp_path / "data" / "spool").is_dir()
        # someone else's domain is still refused on defaults: no open relay
        with smtplib.SMTP("127.0.0.1", 2525, timeout=5) as s:
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                s.sendmail("a@client.test", ["victim@elsewhere.test"], msg)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise
        else:
            code = proc.returncode
        log.close()
    assert code == 0, (tmp_path / "run.log").read_text()
