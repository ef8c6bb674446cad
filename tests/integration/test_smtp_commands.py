"""SMTP receiver: every command, its order rules and reply codes, line limits, pipelining.

Issue #2. Raw sockets where the exact bytes matter, smtplib and swaks as real clients.
"""

import shutil
import signal
import smtplib
import subprocess

import pytest

from smtp_raw import RawClient, body_of, deliver_sentinel, queue_id, simple_message, split_trace, start_shared, wait_files


@pytest.fixture
def mf(daemon):
    return daemon(extra_smtp="max_message_size = 100000\nmax_recipients = 3")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One daemon (same limits) for the tests that only look at replies."""
    d = start_shared(tmp_path_factory, "max_message_size = 100000\nmax_recipients = 3")
    yield d
    d.stop(signal.SIGKILL)


def raw(d, **kw):
    return RawClient(d.port, **kw)


# -- greeting, HELO, EHLO ---------------------------------------------------------------------


def test_greeting_names_host_and_product(shared):
    with raw(shared) as c:
        assert c.greeting.code == 220
        assert c.greeting.lines == ["mx.test.example ESMTP mailflow"]


def test_ehlo_advertises_the_extensions(shared):
    with raw(shared) as c:
        r = c.ehlo("client.test")
        assert r.lines[0].startswith("mx.test.example")
        assert r.lines[1:] == ["PIPELINING", "SIZE 100000", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8", "HELP"]


def test_ehlo_seen_by_smtplib(shared):
    with smtplib.SMTP("127.0.0.1", shared.port, timeout=5) as s:
        code, _ = s.ehlo("client.test")
        assert code == 250
        for ext in ("pipelining", "8bitmime", "enhancedstatuscodes", "smtputf8", "help"):
            assert s.has_extn(ext), ext
        assert s.esmtp_features["size"] == "100000"


def test_helo_is_plain_smtp(shared):
    with raw(shared) as c:
        r = c.expect("HELO client.test", 250)
        assert len(r.lines) == 1 and "PIPELINING" not in r.text
        # SMTP (not ESMTP) clients may not use MAIL parameters.
        assert c.cmd("MAIL FROM:<a@client.test> SIZE=10").code == 555
        assert c.cmd("MAIL FROM:<a@client.test>").code == 250


def test_helo_without_name_is_a_syntax_error(shared):
    with raw(shared) as c:
        assert c.cmd("EHLO").code == 501
        assert c.cmd("HELO").code == 501
        # and still no greeting recorded
        r = c.cmd("MAIL FROM:<a@client.test>")
        assert (r.code, r.status) == (503, "5.5.1")


# -- order of commands -------------------------------------------------------------------------


def test_mail_before_helo_is_503(shared):
    with raw(shared) as c:
        r = c.cmd("MAIL FROM:<a@client.test>")
        assert (r.code, r.status) == (503, "5.5.1")


def test_nested_mail_is_503(shared):
    with raw(shared) as c:
        c.ehlo()
        c.expect("MAIL FROM:<a@client.test>", 250)
        r = c.cmd("MAIL FROM:<b@client.test>")
        assert (r.code, r.status) == (503, "5.5.1")
        # the first transaction is still open and usable
        c.expect("RCPT TO:<user@example.org>", 250)


def test_rcpt_before_mail_is_503(shared):
    with raw(shared) as c:
        c.ehlo()
        r = c.cmd("RCPT TO:<user@example.org>")
        assert (r.code, r.status) == (503, "5.5.1")


def test_data_before_mail_and_before_rcpt_is_503(shared):
    with raw(shared) as c:
        c.ehlo()
        assert c.cmd("DATA").code == 503
        c.expect("MAIL FROM:<a@client.test>", 250)
        r = c.cmd("DATA")
        assert (r.code, r.status) == (503, "5.5.1")
        # a refused RCPT does not count as a recipient
        assert c.cmd("RCPT TO:<x@elsewhere.test>").code == 550
        assert c.cmd("DATA").code == 503
        # the session is still in sync: a NOOP gets exactly one answer
        c.expect("NOOP", 250)
        c.no_more_replies()


def test_rset_ends_the_transaction(shared):
    with raw(shared) as c:
        c.ehlo()
        c.expect("MAIL FROM:<a@client.test>", 250)
        c.expect("RCPT TO:<user@example.org>", 250)
        r = c.expect("RSET", 250)
        assert r.status == "2.0.0"
        assert c.cmd("RCPT TO:<user@example.org>").code == 503
        assert c.cmd("DATA").code == 503
        c.expect("MAIL FROM:<a@client.test>", 250)


def test_new_ehlo_resets_the_transaction(shared):
    with raw(shared) as c:
        c.ehlo()
        c.expect("MAIL FROM:<a@client.test>", 250)
        c.ehlo("again.test")
        assert c.cmd("RCPT TO:<user@example.org>").code == 503


# -- other commands ---------------------------------------------------------------------------


def test_vrfy_expn_help_noop_quit(shared):
    with raw(shared) as c:
        c.ehlo()
        r = c.cmd("VRFY user")
        assert r.code == 252 and r.status == "2.5.0"
        r = c.cmd("EXPN list")
        assert r.code == 502 and r.status.startswith("5.")
        r = c.cmd("HELP")
        assert r.code == 214 and len(r.lines) >= 1 and "MAIL" in r.text
        r = c.cmd("NOOP")
        assert (r.code, r.status) == (250, "2.0.0")
        r = c.cmd("NOOP with an argument")
        assert r.code == 250
        r = c.cmd("QUIT")
        assert r.code == 221 and "mx.test.example" in r.text
        assert c.is_closed()


def test_commands_are_case_insensitive(shared):
    with raw(shared) as c:
        c.expect("ehlo client.test", 250)
        c.expect("mail from:<a@client.test>", 250)
        c.expect("rCpT To:<user@example.org>", 250)
        c.expect("rset", 250)
        c.expect("noop", 250)
        assert c.cmd("quit").code == 221


def test_unknown_command_is_500(shared):
    with raw(shared) as c:
        r = c.cmd("FROB nicate")
        assert (r.code, r.status) == (500, "5.5.2")
        r = c.cmd("")
        assert r.code == 500
        c.ehlo()  # still usable


@pytest.mark.parametrize(
    "line, code",
    [
        ("MAIL FROM:a@client.test", 501),
        ("MAIL FROM:<not an address>", 501),
        ("MAIL FROM:<a@@client.test>", 501),
        ("MAIL FROM:<a@bad_domain.test>", 501),
        ("MAIL TO:<a@client.test>", 501),
        ("MAIL", 501),
        ("MAIL FROM:<a@client.test> SIZE=abc", 501),
    ],
)
def test_mail_syntax_errors_are_501(shared, line, code):
    with raw(shared) as c:
        c.ehlo()
        r = c.cmd(line)
        assert r.code == code, r
        assert r.status.startswith("5.")
        # no transaction was opened
        assert c.cmd("RCPT TO:<user@example.org>").code == 503


@pytest.mark.parametrize(
    "line",
    ["RCPT TO:user@example.org", "RCPT TO:<user@@example.org>", "RCPT FROM:<user@example.org>", "RCPT TO:<>"],
)
def test_rcpt_syntax_errors_are_501(shared, line):
    with raw(shared) as c:
        c.ehlo()
        c.expect("MAIL FROM:<a@client.test>", 250)
        r = c.cmd(line)
        assert r.code == 501, r
        assert c.cmd("DATA").code == 503  # nothing was added


def test_unknown_mail_parameter_is_555(shared):
    with raw(shared) as c:
        c.ehlo()
        r = c.cmd("MAIL FROM:<a@client.test> FROBNICATE=yes")
        assert r.code == 555 and r.status.startswith("5.5.")
        c.expect("MAIL FROM:<a@client.test> BODY=8BITMIME", 250)
        r = c.cmd("RCPT TO:<user@example.org> FROBNICATE=yes")
        assert r.code == 555


def test_null_sender_is_accepted(mf):
    with raw(mf) as c:
        c.ehlo()
        r = c.send_mail("", ["user@example.org"], simple_message(subject="bounce"))
        queue_id(r)
    (path,) = wait_files(mf, "user@example.org", 1)
    assert path.read_bytes().startswith(b"Return-Path: <>\r\n")


def test_postmaster_without_domain_is_accepted(shared):
    with raw(shared) as c:
        c.ehlo()
        r = c.cmd("MAIL FROM:<a@client.test>")
        assert r.code == 250
        r = c.cmd("RCPT TO:<Postmaster>")
        assert (r.code, r.status) == (250, "2.1.5")


# -- line length ------------------------------------------------------------------------------


def test_line_of_512_octets_is_accepted_513_is_500(shared):
    with raw(shared) as c:
        c.ehlo()
        line = b"NOOP " + b"x" * (512 - 5 - 2)
        assert len(line + b"\r\n") == 512
        c.send(line + b"\r\n")
        assert c.reply().code == 250
        c.send(line + b"y\r\n")
        r = c.reply()
        assert (r.code, r.status) == (500, "5.5.2")
        c.expect("NOOP", 250)
        c.no_more_replies()


def test_overlong_line_arriving_in_pieces_gets_one_500_and_stays_in_sync(shared):
    with raw(shared) as c:
        c.ehlo()
        # A MAIL command hidden after 5000 octets must not be executed.
        c.send(b"NOOP " + b"x" * 3000)
        c.send(b"y" * 2000 + b" MAIL FROM:<a@client.test>\r\n")
        r = c.reply()
        assert (r.code, r.status) == (500, "5.5.2")
        c.no_more_replies()
        assert c.cmd("RCPT TO:<user@example.org>").code == 503  # no MAIL happened
        c.expect("NOOP", 250)


def test_overlong_line_followed_by_pipelined_commands(shared):
    with raw(shared) as c:
        c.ehlo()
        c.send(b"X" * 2000 + b"\r\nNOOP\r\nMAIL FROM:<a@client.test>\r\n")
        codes = [r.code for r in c.replies(3)]
        assert codes == [500, 250, 250]
        c.no_more_replies()


def test_bare_lf_command_lines_are_understood(shared):
    # Many clients (and humans with netcat) end commands with a bare LF.
    with raw(shared) as c:
        c.send(b"EHLO client.test\n")
        assert c.reply().code == 250
        c.send(b"NOOP\n")
        assert c.reply().code == 250


# -- pipelining -------------------------------------------------------------------------------


def test_pipelined_mail_rcpt_rcpt_data_in_one_write(mf):
    with raw(mf) as c:
        c.ehlo()
        c.send(
            b"MAIL FROM:<a@client.test>\r\n"
            b"RCPT TO:<user@example.org>\r\n"
            b"RCPT TO:<other@test.example>\r\n"
            b"DATA\r\n"
        )
        replies = c.replies(4)
        assert [r.code for r in replies] == [250, 250, 250, 354]
        assert [r.status for r in replies[:3]] == ["2.1.0", "2.1.5", "2.1.5"]
        msg = simple_message(subject="pipelined")
        c.send(msg + b".\r\n")
        queue_id(c.reply())
        c.send(b"QUIT\r\n")
        assert c.reply().code == 221
    for rcpt in ("user@example.org", "other@test.example"):
        (path,) = wait_files(mf, rcpt, 1)
        assert body_of(path) == msg


def test_pipelined_group_with_a_refused_recipient(mf):
    with raw(mf) as c:
        c.ehlo()
        c.send(
            b"MAIL FROM:<a@client.test>\r\n"
            b"RCPT TO:<user@example.org>\r\n"
            b"RCPT TO:<victim@elsewhere.test>\r\n"
            b"RCPT TO:<other@test.example>\r\n"
            b"DATA\r\n"
        )
        assert [r.code for r in c.replies(5)] == [250, 250, 550, 250, 354]
        c.send(simple_message() + b".\r\n")
        queue_id(c.reply())
    assert len(wait_files(mf, "user@example.org", 1)) == 1
    assert len(wait_files(mf, "other@test.example", 1)) == 1
    assert mf.messages("victim@elsewhere.test") == []


def test_whole_session_in_one_write(mf):
    msg = simple_message(subject="all at once")
    with raw(mf) as c:
        c.send(
            b"EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<user@example.org>\r\nDATA\r\n"
            + msg
            + b".\r\nNOOP\r\nQUIT\r\n"
        )
        replies = c.replies(7)
        assert [r.code for r in replies] == [250, 250, 250, 354, 250, 250, 221]
        queue_id(replies[4])
        assert c.is_closed()
    (path,) = wait_files(mf, "user@example.org", 1)
    assert body_of(path) == msg


def test_pipelined_replies_come_in_one_burst(shared):
    """PIPELINING: the server answers a group without waiting for more input."""
    with raw(shared) as c:
        c.ehlo()
        c.send(b"NOOP\r\n" * 50)
        replies = c.replies(50)
        assert all(r.code == 250 for r in replies)
        c.no_more_replies()


# -- recipients -------------------------------------------------------------------------------


def test_max_recipients_gives_452_and_delivers_to_the_accepted(mf):
    rcpts = [f"r{i}@example.org" for i in range(5)]
    with raw(mf) as c:
        c.ehlo()
        c.expect("MAIL FROM:<a@client.test>", 250)
        codes = []
        for rcpt in rcpts:
            r = c.cmd(f"RCPT TO:<{rcpt}>")
            codes.append((r.code, r.status))
        assert codes == [(250, "2.1.5")] * 3 + [(452, "4.5.3")] * 2
        c.expect("DATA", 354)
        c.send(simple_message() + b".\r\n")
        queue_id(c.reply())
    for rcpt in rcpts[:3]:
        assert len(wait_files(mf, rcpt, 1)) == 1
    for rcpt in rcpts[3:]:
        assert mf.messages(rcpt) == []


def test_duplicate_recipient_gets_one_copy(mf):
    with raw(mf) as c:
        c.ehlo()
        r = c.send_mail("a@client.test", ["user@example.org", "USER@EXAMPLE.ORG"], simple_message())
        queue_id(r)
    assert len(wait_files(mf, "user@example.org", 1)) >= 1
    # A second copy would be written after the first: count only once a later message is in.
    deliver_sentinel(mf)
    assert len(mf.messages("user@example.org")) == 1, mf.messages("user@example.org")


def test_smtputf8_address(mf):
    with raw(mf) as c:
        c.ehlo()
        # without SMTPUTF8 a UTF-8 address is refused ...
        c.expect("MAIL FROM:<a@client.test>", 250)
        r = c.cmd("RCPT TO:<jöran@example.org>".encode())
        assert (r.code, r.status) == (553, "5.6.7")
        r = c.cmd("RSET")
        r = c.cmd("MAIL FROM:<jöran@client.test>".encode())
        assert (r.code, r.status) == (553, "5.6.7")
        # ... and accepted with it
        c.expect("MAIL FROM:<jöran@client.test> SMTPUTF8".encode(), 250)
        c.expect("RCPT TO:<jöran@example.org>".encode(), 250)
        c.expect("DATA", 354)
        c.send(simple_message(subject="utf8") + b".\r\n")
        queue_id(c.reply())
    (path,) = wait_files(mf, "jöran@example.org", 1)
    raw_bytes = path.read_bytes()
    assert raw_bytes.startswith("Return-Path: <jöran@client.test>\r\n".encode())


# -- real clients -----------------------------------------------------------------------------


def test_smtplib_sendmail_roundtrip(mf):
    msg = simple_message(subject="via smtplib")
    with smtplib.SMTP("127.0.0.1", mf.port, timeout=5) as s:
        refused = s.sendmail("a@client.test", ["user@example.org"], msg)
        assert refused == {}
        code, text = s.noop()
        assert code == 250
    (path,) = wait_files(mf, "user@example.org", 1)
    rp, received, rest = split_trace(path.read_bytes())
    assert rp == b"Return-Path: <a@client.test>\r\n"
    assert b"by mx.test.example" in received and b"for <user@example.org>" in received
    assert rest == msg


def test_swaks_delivers_and_sees_the_replies(mf):
    swaks = shutil.which("swaks")
    assert swaks, "swaks is not installed (apt-get install swaks): this test needs it"
    result = subprocess.run(
        [
            swaks, "--server", "127.0.0.1", "--port", str(mf.port),
            "--ehlo", "swaks.test", "--from", "sw@client.test", "--to", "user@example.org",
            "--header", "Subject: from swaks", "--body", "swaks body line\n.dot line",
            "--pipeline",
        ],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "220 mx.test.example ESMTP mailflow" in out
    assert "PIPELINING" in out
    assert "250 2.0.0 Ok: queued as " in out
    assert "221 2.0.0" in out
    (path,) = wait_files(mf, "user@example.org", 1)
    rest = split_trace(path.read_bytes())[2]
    assert b"Subject: from swaks\r\n" in rest
    # swaks dot-stuffs the ".dot line"; the server must undo it
    assert b"\r\n\r\nswaks body line\r\n.dot line\r\n" in rest


def test_swaks_relay_attempt_is_refused(mf):
    swaks = shutil.which("swaks")
    assert swaks, "swaks is not installed (apt-get install swaks): this test needs it"
    result = subprocess.run(
        [swaks, "--server", "127.0.0.1", "--port", str(mf.port), "--from", "sw@client.test",
         "--to", "victim@elsewhere.test"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode != 0
    assert "550 5.7.1 Relaying denied" in result.stdout
    assert mf.messages("victim@elsewhere.test") == []
