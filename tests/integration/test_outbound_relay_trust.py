"""The relay as the operator's problem (issue #24): a refused login (535) defers the mail
instead of bouncing it, and a pinned certificate (`relay_cert_sha256`) lets a self-signed
relay (`openssl req -x509`, CA:TRUE) be trusted.

Relays: Postfix's smtp-sink answering AUTH with 535, and a second mailflow with a TLS
certificate made by the openssl CLI (STARTTLS on its port, implicit TLS on a second one).
"""

import hashlib
import re
import ssl

import pytest

from conftest import Daemon, free_port, wait_for, wait_port
from test_outbound import FORWARD, outbound, queue, send, sinks, wait_queue  # noqa: F401  (fixture)
from test_tls_auth import make_cert

REFUSING = ["-f", "AUTH", "-B", "535 5.7.8 authentication failed"]


def test_relay_login_refused_defers_logs_and_lists_then_delivers(daemon, sinks):  # noqa: F811
    sink = sinks(args=REFUSING)
    more = 'relay_user = "mf"\nrelay_password = "rotated"\n'
    d = daemon(scripts={"10-fwd.rhai": FORWARD}, extra=outbound(sink.port, retry='["1h"]', more=more))
    send(d, sender="ann@test.example")
    rows = wait_queue(d, lambda rows: rows and rows[0]["attempts"] == "1")
    assert rows, d.log()[-2000:]
    assert "535" in rows[0]["error"] and f"127.0.0.1:{sink.port}" in rows[0]["error"], rows
    assert re.search(rf'ERROR .*refused the login.*relay="127\.0\.0\.1:{sink.port}"', d.log()), d.log()[-2000:]
    assert d.messages("ann@test.example") == []  # no bounce
    # The password is fixed at the relay: the queued forward goes out at the next attempt.
    sink.restart()
    assert queue(d, "flush").returncode == 0
    assert sink.wait(1, timeout=10), d.log()[-2000:]
    assert wait_for(lambda: queue(d, "list").stdout.startswith("queue is empty"), timeout=5)
    assert d.messages("ann@test.example") == []


@pytest.fixture
def tls_relay(tmp_path):
    """A mailflow for far.example with a self-signed CA:TRUE certificate: STARTTLS on `port`,
    implicit TLS on `tls_port`."""
    root = tmp_path / "relay"
    root.mkdir()
    cert = make_cert(root)
    port, tls_port = free_port(), free_port()
    config = f"""[smtp]
listen = ["127.0.0.1:{port}"]
tls_listen = ["127.0.0.1:{tls_port}"]
tls_cert = "{cert.cert.name}"
tls_key = "{cert.key.name}"
hostname = "mx.far.example"
local_domains = ["far.example"]

[delivery]
maildir = "data/mail/{{local}}@{{domain}}"
"""
    relay = Daemon(root, config, {}, port).start()
    wait_port(tls_port, proc=relay.proc)
    relay.tls_port = tls_port
    relay.sha256 = hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.cert.read_text())).hexdigest()
    yield relay
    relay.kill()


TO_FAR = 'fn data(ctx, msg) { msg.forward("carol@far.example"); }'


def relay_config(url, pin=None, starttls="required"):
    lines = ["", "[outbound]", f'relay = "{url}"', f'starttls = "{starttls}"', 'retry = ["1h"]']
    if pin is not None:
        lines.append(f'relay_cert_sha256 = "{pin}"')
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "smtps"])
def test_pinned_self_signed_relay_certificate_is_trusted(daemon, tls_relay, implicit):
    scheme, port = ("smtps", tls_relay.tls_port) if implicit else ("smtp", tls_relay.port)
    # Upper case with colons, as `openssl x509 -fingerprint -sha256` prints it.
    pin = ":".join(re.findall("..", tls_relay.sha256.upper()))
    d = daemon(scripts={"10-fwd.rhai": TO_FAR}, extra=relay_config(f"{scheme}://127.0.0.1:{port}", pin))
    send(d, sender="ann@test.example")
    assert wait_for(lambda: tls_relay.messages("carol@far.example"), timeout=10), d.log()[-2000:]


@pytest.mark.parametrize("pin", ["none", "wrong"])
@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "smtps"])
def test_unpinned_or_wrongly_pinned_self_signed_relay_defers(daemon, tls_relay, implicit, pin):
    scheme, port = ("smtps", tls_relay.tls_port) if implicit else ("smtp", tls_relay.port)
    url = f"{scheme}://127.0.0.1:{port}"
    d = daemon(scripts={"10-fwd.rhai": TO_FAR}, extra=relay_config(url, None if pin == "none" else "00" * 32))
    send(d, sender="ann@test.example")
    rows = wait_queue(d, lambda rows: rows and rows[0]["attempts"] == "1", timeout=10)
    assert rows, d.log()[-2000:]
    if pin == "none":  # rustls refuses a CA certificate as the server's own
        assert "TLS" in rows[0]["error"] and "CaUsedAsEndEntity" in rows[0]["error"], rows
    else:
        assert "not the pinned one" in rows[0]["error"] and tls_relay.sha256 in rows[0]["error"], rows
    assert tls_relay.messages("carol@far.example") == []
    assert d.messages("ann@test.example") == []  # deferred, not bounced


def test_a_malformed_pin_is_a_config_error(tmp_path):
    from smtpclient import mailflow

    config = tmp_path / "mailflow.toml"
    config.write_text('[outbound]\nrelay = "smtp://127.0.0.1:25"\nrelay_cert_sha256 = "abc"\n')
    r = mailflow("check", "--config", config)
    assert r.returncode != 0 and "relay_cert_sha256" in r.stderr, (r.stdout, r.stderr)
