"""Spam scoring plugins (issue #28): `rspamd::check`, `rspamd::learn_spam`/`learn_ham` and
`spamd::check` in the running daemon and in `mailflow test`, against private instances of the
real scanners (tests/integration/scanners.py): GTUBE is spam, a plain message is ham, the
envelope reaches rspamd, a scanner that is down or stopped is a 451 within the timeout, and
learning moves rspamd's counters (`/stat`), once per message."""

import json
import smtplib
import time

import pytest

from conftest import free_port
from scanners import Rspamd, Spamd, gtube_message, ham_message, message
from smtpclient import mailflow, parse, wait_delivered

CHECK_SCRIPT = """
fn data(ctx, msg) {
    let r = rspamd::check(msg);
    if r.action == "reject" { return reject(550, "5.7.1 spam (" + r.score + ")"); }
    let names = r.symbols.keys();
    names.sort();
    msg.set_header("X-Spam-Score", "" + r.score);
    msg.set_header("X-Spam-Action", r.action);
    msg.set_header("X-Spam-Symbols", names.reduce(|acc, s| if acc == "" { s } else { acc + "," + s }, ""));
}
"""

SPAMD_SCRIPT = """
fn data(ctx, msg) {
    let r = spamd::check(msg);
    if r.is_spam { return reject(550, "5.7.1 spam (" + r.score + ")"); }
    msg.set_header("X-Spam-Score", "" + r.score + "/" + r.required_score);
    msg.set_header("X-Spam-Symbols", r.symbols.reduce(|acc, s| if acc == "" { s } else { acc + "," + s }, ""));
}
"""


def rspamd_config(url, controller_url=None, timeout_ms=5000):
    controller = f'controller_url = "{controller_url}"\n' if controller_url else ""
    return (f'[scripts]\ntimeout_ms = 8000\n[plugins]\nenabled = ["rspamd"]\n'
            f'[plugins.rspamd]\nurl = "{url}"\n{controller}timeout_ms = {timeout_ms}\n')


def spamd_config(address, timeout_ms=8000):
    return (f'[scripts]\ntimeout_ms = 10000\n[plugins]\nenabled = ["spamd"]\n'
            f'[plugins.spamd]\naddress = "{address}"\ntimeout_ms = {timeout_ms}\n')


def send(port, text, sender="friend@pals.example", rcpts=("me@example.org",)):
    """The SMTP reply code to DATA (250, or the refusal's) and its text."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        try:
            s.sendmail(sender, list(rcpts), text.encode())
            return 250, ""
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error.decode()


def header(path, name):
    return parse(path)[name]


@pytest.fixture(scope="module")
def rspamd():
    r = Rspamd()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def spamd():
    s = Spamd(unix=True)
    yield s
    s.stop()


# --- rspamd ----------------------------------------------------------------------------------


def test_rspamd_gtube_is_rejected_and_ham_is_scored(daemon, rspamd):
    d = daemon(scripts={"10-spam.rhai": CHECK_SCRIPT}, extra=rspamd_config(rspamd.url))
    code, text = send(d.port, gtube_message())
    assert code == 550 and "spam (15" in text, (code, text)
    code, _ = send(d.port, ham_message())
    assert code == 250
    (path,) = wait_delivered(d, "me@example.org")
    score = float(header(path, "X-Spam-Score"))
    assert score < 6, score
    assert header(path, "X-Spam-Action") == "no action"
    assert "MIME_GOOD" in header(path, "X-Spam-Symbols").split(",")


def test_rspamd_sees_the_envelope(daemon, rspamd):
    """The envelope sender differs from From: (FORGED_SENDER); To: names two addresses and
    both are envelope recipients (TO_MATCH_ENVRCPT_ALL, not _SOME and not absent): so the From
    and every Rcpt request header reached rspamd."""
    d = daemon(scripts={"10-spam.rhai": CHECK_SCRIPT}, extra=rspamd_config(rspamd.url))
    text = ham_message().replace("To: Me <me@example.org>", "To: Me <me@example.org>, You <you@example.org>")
    code, _ = send(d.port, text, sender="bounces@elsewhere.example", rcpts=["me@example.org", "you@example.org"])
    assert code == 250
    (path,) = wait_delivered(d, "me@example.org")
    symbols = header(path, "X-Spam-Symbols").split(",")
    assert "TO_MATCH_ENVRCPT_ALL" in symbols, symbols
    assert "FORGED_SENDER" in symbols, symbols


def test_rspamd_down_is_a_451_at_once(daemon):
    d = daemon(scripts={"10-spam.rhai": CHECK_SCRIPT}, extra=rspamd_config(f"http://127.0.0.1:{free_port()}"))
    started = time.monotonic()
    code, text = send(d.port, ham_message())
    assert code == 451, (code, text)
    assert time.monotonic() - started < 3
    assert "rspamd" in d.log()


def test_rspamd_stopped_is_a_451_within_the_timeout(daemon, rspamd):
    d = daemon(scripts={"10-spam.rhai": CHECK_SCRIPT}, extra=rspamd_config(rspamd.url, timeout_ms=700))
    rspamd.pause()
    try:
        started = time.monotonic()
        code, text = send(d.port, ham_message())
        elapsed = time.monotonic() - started
    finally:
        rspamd.resume()
    assert code == 451, (code, text)
    assert 0.6 < elapsed < 3, elapsed
    assert "timed out after 700 ms" in d.log()


LEARN_SCRIPT = """
fn fetched(ctx, msg) {
    let learned = if msg.subject.starts_with("ham") { rspamd::learn_ham(msg) } else { rspamd::learn_spam(msg) };
    log("learned: " + learned);
}
"""


def run_fetched(tmp_path, config, script, text):
    (tmp_path / "scripts").mkdir(exist_ok=True)
    (tmp_path / "scripts" / "10-learn.rhai").write_text(script)
    (tmp_path / "mailflow.toml").write_text('[smtp]\nlocal_domains = ["example.org"]\n' + config)
    (tmp_path / "m.eml").write_text(text)
    r = mailflow("test", "--config", tmp_path / "mailflow.toml", "--stage", "fetched", "--json",
                         tmp_path / "m.eml")
    assert r.returncode == 0, r.stderr
    (run,) = json.loads(r.stdout)["runs"]
    return run


def test_rspamd_learning_moves_the_counters_once(tmp_path, rspamd):
    config = rspamd_config(rspamd.url, rspamd.controller_url)
    spammy = message("cheap pills", "Buy cheap pills now, best offer, click here, winner bonus " * 20,
                     msgid="<learn-spam-1@deals.example>")
    before = rspamd.stat()["learned"]
    run = run_fetched(tmp_path, config, LEARN_SCRIPT, spammy)
    assert run["error"] is None, run
    assert run["logs"] == ["10-learn.rhai: learned: true"]
    assert rspamd.stat()["learned"] == before + 1
    # The same message again: rspamd knows it (208), nothing moves, no error.
    run = run_fetched(tmp_path, config, LEARN_SCRIPT, spammy)
    assert run["error"] is None and run["logs"] == ["10-learn.rhai: learned: false"], run
    assert rspamd.stat()["learned"] == before + 1
    hammy = message("ham: minutes of the meeting", "Attached are the minutes of Tuesday's meeting. " * 20,
                    msgid="<learn-ham-1@pals.example>")
    run = run_fetched(tmp_path, config, LEARN_SCRIPT, hammy)
    assert run["error"] is None and run["logs"] == ["10-learn.rhai: learned: true"], run
    assert rspamd.stat()["learned"] == before + 2


def test_rspamd_learning_without_a_controller_is_an_error(tmp_path, rspamd):
    # The normal worker has no /learnspam: its HTTP error is a script error, named.
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "10-learn.rhai").write_text(LEARN_SCRIPT)
    (tmp_path / "mailflow.toml").write_text('[smtp]\nlocal_domains = ["example.org"]\n'
                                            + rspamd_config(rspamd.url, rspamd.url))
    (tmp_path / "m.eml").write_text(ham_message())
    r = mailflow("test", "--config", tmp_path / "mailflow.toml", "--stage", "fetched", tmp_path / "m.eml")
    assert r.returncode != 0
    assert "rspamd: learning as spam answered 500" in r.stderr, r.stderr


# --- spamd -----------------------------------------------------------------------------------


@pytest.mark.parametrize("over", ["tcp", "unix"])
def test_spamd_gtube_is_rejected_and_ham_is_scored(daemon, spamd, over):
    address = spamd.address if over == "tcp" else str(spamd.socket)
    d = daemon(scripts={"10-spam.rhai": SPAMD_SCRIPT}, extra=spamd_config(address))
    code, text = send(d.port, gtube_message())
    assert code == 550 and float(text.split("(")[1].rstrip(")")) >= 900, (code, text)  # GTUBE: 1000 points
    code, _ = send(d.port, ham_message())
    assert code == 250
    (path,) = wait_delivered(d, "me@example.org")
    score, required = map(float, header(path, "X-Spam-Score").split("/"))
    assert score < required == 5.0
    assert "GTUBE" not in header(path, "X-Spam-Symbols")


def test_spamd_down_is_a_451_at_once(daemon):
    d = daemon(scripts={"10-spam.rhai": SPAMD_SCRIPT}, extra=spamd_config(f"127.0.0.1:{free_port()}"))
    started = time.monotonic()
    code, _ = send(d.port, ham_message())
    assert code == 451
    assert time.monotonic() - started < 3


def test_spamd_stopped_is_a_451_within_the_timeout(daemon, spamd):
    d = daemon(scripts={"10-spam.rhai": SPAMD_SCRIPT}, extra=spamd_config(spamd.address, timeout_ms=700))
    spamd.pause()
    try:
        started = time.monotonic()
        code, _ = send(d.port, ham_message())
        elapsed = time.monotonic() - started
    finally:
        spamd.resume()
    assert code == 451
    assert 0.6 < elapsed < 3, elapsed
    assert "timed out after 700 ms" in d.log()
