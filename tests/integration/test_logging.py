"""`[log]`: JSON lines for log shippers with the span fields (session id, queue id, account),
and `level` / `filters` choosing what is written; `RUST_LOG` wins when set."""

import json
import re
import smtplib
import subprocess

from conftest import BIN, free_port, wait_for, wait_port


def json_lines(d):
    lines = [l for l in d.log().splitlines() if l.strip()]
    assert lines, "nothing logged"
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not one JSON object: {line!r}")
    return parsed


def send(port, subject="hello"):
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.sendmail("a@example.org", ["b@example.org"],
                   f"From: a@example.org\r\nTo: b@example.org\r\nSubject: {subject}\r\n\r\nbody\r\n")
        return s


def test_json_lines_carry_session_queue_and_account_fields(daemon):
    dead = free_port()
    d = daemon(extra=f"""
        [log]
        format = "json"

        [[accounts]]
        name = "work"
        protocol = "imap"
        host = "127.0.0.1"
        port = {dead}
        tls = "none"
        username = "u"
        password = "p"
        poll_interval = "1h"
    """, start=False)
    d.start(env={"RUST_LOG": ""})
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
        s.ehlo("client.example")
        s.mail("a@example.org")
        s.rcpt("b@example.org")
        code, text = s.data(b"From: a@example.org\r\nSubject: \"quoted\"\r\n\r\nbody\r\n")
    assert code == 250
    queue_id = re.search(r"queued as (\S+)", text.decode()).group(1)
    assert wait_for(lambda: any(l.get("account") == "work" for l in json_lines(d)), timeout=10), d.log()
    assert d.stop() == 0
    lines = json_lines(d)
    for line in lines:
        assert {"timestamp", "level", "target", "message"} <= line.keys(), line
        assert line["level"] in {"TRACE", "DEBUG", "INFO", "WARN", "ERROR"}
    running = next(l for l in lines if l["message"] == "mailflow running")
    assert running["target"] == "mailflow::daemon" and "config" in running
    # One key follows the message from the SMTP session into delivery.
    in_session = [l for l in lines if l.get("queue_id") == queue_id and "session_id" in l]
    assert in_session, d.log()
    for line in in_session:
        assert re.fullmatch(r"[0-9A-F]{16}", line["session_id"]), line
        assert line["remote"].startswith("127.0.0.1:") and line["span"] == "session:message", line
    assert any(l.get("queue_id") == queue_id and "session_id" not in l for l in lines), "delivery lines"
    poll = next(l for l in lines if l.get("account") == "work")
    assert poll["protocol"] == "imap" and poll["mailbox"] == "INBOX" and poll["span"].startswith("poller"), poll


def test_level_and_filters_choose_the_lines(daemon):
    d = daemon(extra="""
        [log]
        level = "warn"
        [log.filters]
        "mailflow::smtp" = "debug"
    """, start=False)
    d.start(env={"RUST_LOG": ""}, wait=False)
    wait_port(d.port, proc=d.proc)
    send(d.port)
    assert wait_for(lambda: " DEBUG " in d.log()), d.log()
    assert d.stop() == 0
    log = d.log()
    assert "mailflow running" not in log, "INFO of mailflow::daemon is below warn"
    debug = [l for l in log.splitlines() if " DEBUG " in l]
    assert debug and all("mailflow::smtp" in l for l in debug), debug
    assert not any(" INFO " in l and "mailflow::smtp" not in l for l in log.splitlines()), log


def test_rust_log_wins_over_the_config(daemon):
    d = daemon(extra="""
        [log]
        level = "error"
    """, start=False)
    d.start(env={"RUST_LOG": "info"})
    assert "mailflow running" in d.log()
    assert d.stop() == 0


def test_a_bad_log_setting_is_a_config_error(daemon):
    d = daemon(extra="""
        [log]
        format = "xml"
    """, start=False)
    run = subprocess.run([str(BIN), "check", "--config", str(d.config_path)], capture_output=True, text=True)
    assert run.returncode == 1 and "xml" in run.stderr, run.stderr
    d.config_path.write_text(d.config_path.read_text().replace('format = "xml"', '[log.filters]\n"a b" = "debug"'))
    run = subprocess.run([str(BIN), "check", "--config", str(d.config_path)], capture_output=True, text=True)
    assert run.returncode == 1 and "[log] filters" in run.stderr, run.stderr


def test_the_configs_own_warnings_come_out_in_the_chosen_format(daemon):
    d = daemon(config="""
[smtp]
listen = ["127.0.0.1:{port}"]
local_domains = ["example.org"]

[delivery]
maildir = "data/mail/shared"

[log]
format = "json"
""", start=False)
    d.start(env={"RUST_LOG": ""})
    assert d.stop() == 0
    warnings = [l for l in json_lines(d) if "every recipient shares one Maildir" in l["message"]]
    assert len(warnings) == 1 and warnings[0]["level"] == "WARN", d.log()
    assert warnings[0]["maildir"].endswith("data/mail/shared")
