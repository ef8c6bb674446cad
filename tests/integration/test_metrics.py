"""`[metrics] listen` (docs/reference/configuration.md): Prometheus text at /metrics, counting what each stage did.

Real daemon, real SMTP client (smtplib), scraped over HTTP with urllib; the text is parsed
as Prometheus exposition lines and the counts compared with what the test sent.
"""

import re
import smtplib
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from conftest import BIN, free_port, wait_for

SCRIPT = """
fn rcpt_to(ctx) {
    if ctx.rcpt.starts_with("nobody@") { return reject("no such user"); }
}
fn data(ctx, msg) {
    if msg.subject.contains("junk") { msg.file_into("Junk"); }
}
"""

LINE = re.compile(r'^(mailflow_[a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+)$')


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return r.read().decode()


def samples(text):
    """{(name, {label: value}): number} for every sample line."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = LINE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        labels = tuple(sorted(re.findall(r'([a-z_]+)="([^"]*)"', m.group(2) or "")))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def value(text, name, **labels):
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def metered(daemon):
    metrics_port = free_port()
    d = daemon(scripts={"10-rules.rhai": SCRIPT}, extra=f'\n[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n')
    d.metrics_port = metrics_port
    assert wait_for(lambda: "metrics listening" in d.log(), timeout=5), d.log()
    return d


def test_metrics_count_connections_messages_verdicts_and_deliveries(metered):
    d = metered
    s = smtplib.SMTP("127.0.0.1", d.port, local_hostname="client.test", timeout=15)
    s.sendmail("a@client.test", ["bob@example.org"], "Subject: hello\r\n\r\nhi\r\n")
    s.sendmail("a@client.test", ["bob@example.org"], "Subject: junk offer\r\n\r\nbuy\r\n")
    refused = s.sendmail("a@client.test", ["bob@example.org", "nobody@example.org"], "Subject: x\r\n\r\nhi\r\n")
    assert list(refused) == ["nobody@example.org"]
    s.quit()
    assert wait_for(lambda: value(scrape(d.metrics_port), "mailflow_delivered_total", result="delivered") == 3, 10)

    text = scrape(d.metrics_port)
    assert value(text, "mailflow_smtp_connections_total", result="accepted") >= 1
    assert value(text, "mailflow_smtp_messages_total", result="accepted") == 3
    assert value(text, "mailflow_script_calls_total", stage="rcpt_to", verdict="none") == 3
    assert value(text, "mailflow_script_calls_total", stage="rcpt_to", verdict="reject") == 1
    assert value(text, "mailflow_script_calls_total", stage="data", verdict="none") == 3
    assert value(text, "mailflow_spool_messages_total") == 3
    assert 1 <= value(text, "mailflow_spool_segments_total") <= 3
    assert value(text, "mailflow_spool_sync_seconds_count") == value(text, "mailflow_spool_segments_total")
    # counted when written; in the folder once the delivery batch is synced
    assert wait_for(lambda: len(d.messages("bob@example.org", "Junk")) == 1, 30)


def test_metrics_count_script_reloads_and_errors(metered):
    d = metered
    d.write_script("20-broken.rhai", "fn data(ctx, msg) { let x = ; }")
    assert wait_for(lambda: value(scrape(d.metrics_port), "mailflow_script_reloads_total", result="error") >= 1, 10)
    d.write_script("20-broken.rhai", 'fn data(ctx, msg) { throw "boom"; }')
    assert wait_for(lambda: value(scrape(d.metrics_port), "mailflow_script_reloads_total", result="ok") >= 1, 10)

    s = smtplib.SMTP("127.0.0.1", d.port, local_hostname="client.test", timeout=15)
    with pytest.raises(smtplib.SMTPDataError) as failed:
        s.sendmail("a@client.test", ["bob@example.org"], "Subject: hello\r\n\r\nhi\r\n")
    assert failed.value.smtp_code == 451
    s.quit()
    text = scrape(d.metrics_port)
    assert value(text, "mailflow_script_errors_total", stage="data") == 1
    assert value(text, "mailflow_script_calls_total", stage="data", verdict="tempfail") == 1
    assert value(text, "mailflow_smtp_messages_total", result="tempfailed") == 1


def test_other_paths_are_not_found(metered):
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"http://127.0.0.1:{metered.metrics_port}/", timeout=5)
    assert missing.value.code == 404


def test_a_bad_metrics_address_is_a_config_error(tmp_path):
    cfg = tmp_path / "mailflow.toml"
    cfg.write_text(f'[smtp]\nlisten = ["127.0.0.1:{free_port()}"]\n[metrics]\nlisten = "localhost"\n')
    r = subprocess.run([str(BIN), "check", "--config", str(cfg)], capture_output=True, text=True, timeout=20)
    assert r.returncode == 1
    assert "[metrics] listen" in r.stderr and "localhost" in r.stderr, r.stderr


def test_a_flood_of_idle_connections_is_capped(metered):
    """Idle connections hold at most 16 scrape slots; the rest are closed at once (a flood must
    not use up the daemon's file descriptors), and SMTP is unaffected."""
    import socket

    held = []
    for _ in range(40):
        c = socket.create_connection(("127.0.0.1", metered.metrics_port), timeout=5)
        held.append(c)
    time.sleep(0.3)
    closed = 0
    for c in held:
        c.settimeout(0.2)
        try:
            if c.recv(1) == b"":
                closed += 1
        except (socket.timeout, ConnectionResetError):
            pass
    assert closed >= 40 - 16, closed
    s = smtplib.SMTP("127.0.0.1", metered.port, local_hostname="client.test", timeout=15)
    assert s.noop()[0] == 250
    s.quit()
    for c in held:
        c.close()

    def scraped():
        try:
            return "mailflow_smtp_connections_total" in scrape(metered.metrics_port)
        except OSError:  # a slot may still be held for a moment by a connection just closed
            return False

    assert wait_for(scraped, 10)
