"""SMTP receiver: DATA. The 250 and what lands in the Maildir, dot-stuffing, bare CR/LF,
every SMTP smuggling sequence, size limits, mail loops, and a corpus of real-world messages
delivered byte-identical below the trace headers.

Issue #2.
"""

import re
import smtplib
import time
from pathlib import Path

import pytest

from smtp_raw import RawClient, body_of, queue_id, simple_message, split_trace, wait_files

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
MAX_SIZE = 10000


@pytest.fixture
def mf(daemon):
    return daemon(extra_smtp=f"max_message_size = {MAX_SIZE}")


def open_data(d, rcpts=("user@example.org",), sender="a@client.test"):
    """A connection that has just received 354."""
    c = RawClient(d.port)
    c.ehlo()
    c.expect(f"MAIL FROM:<{sender}>", 250)
    for rcpt in rcpts:
        c.expect(f"RCPT TO:<{rcpt}>", 250)
    c.expect("DATA", 354)
    return c


def all_delivered(d):
    """Every delivered file under data/mail, any recipient except the sentinel."""
    root = d.root / "data" / "mail"
    return sorted(
        p
        for p in root.glob("*/*/*")
        if p.parent.name in ("new", "cur") and p.is_file() and p.parts[-3] != "sentinel@example.org"
    )


def after_sentinel(d):
    """Sends one more message on a new connection and waits for its delivery. The spool hands
    messages to the deliverer in the order they were accepted, so anything accepted before
    (say, a smuggled message) has been delivered by then: no need to sleep and hope."""
    with RawClient(d.port) as c:
        c.ehlo()
        queue_id(c.send_mail("a@client.test", ["sentinel@example.org"], simple_message(subject="sentinel")))
    assert len(wait_files(d, "sentinel@example.org", 1)) == 1
    return all_delivered(d)


# -- the 250 and the delivered file -----------------------------------------------------------


def test_250_reads_queued_as_and_message_lands_in_new_with_trace_headers(mf):
    msg = simple_message(subject="trace")
    with open_data(mf) as c:
        c.send(msg + b".\r\n")
        r = c.reply()
        qid = queue_id(r)
    (path,) = wait_files(mf, "user@example.org", 1)
    assert path.parent.name == "new"
    assert path.parent.parent == mf.maildir("user@example.org")
    assert list((mf.maildir("user@example.org") / "tmp").iterdir()) == []
    return_path, received, rest = split_trace(path.read_bytes())
    assert return_path == b"Return-Path: <a@client.test>\r\n"
    text = received.decode()
    assert re.match(
        r"Received: from client\.test \(\[127\.0\.0\.1\]\)\r\n"
        r"\tby mx\.test\.example \(mailflow\) with ESMTP id " + qid + r"\r\n"
        r"\tfor <user@example\.org>;\r\n"
        r"\t\w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}\r\n$",
        text,
    ), text
    assert rest == msg


def test_received_names_no_recipient_when_there_are_several(mf):
    msg = simple_message(subject="two")
    with open_data(mf, rcpts=("user@example.org", "other@test.example")) as c:
        c.send(msg + b".\r\n")
        queue_id(c.reply())
    for rcpt in ("user@example.org", "other@test.example"):
        (path,) = wait_files(mf, rcpt, 1)
        _, received, rest = split_trace(path.read_bytes())
        assert b"for <" not in received
        assert rest == msg


def test_helo_session_is_recorded_as_smtp(mf):
    with RawClient(mf.port) as c:
        c.expect("HELO old.client.test", 250)
        queue_id(c.send_mail("a@client.test", ["user@example.org"], simple_message()))
    (path,) = wait_files(mf, "user@example.org", 1)
    _, received, _ = split_trace(path.read_bytes())
    assert received.startswith(b"Received: from old.client.test ([127.0.0.1])")
    assert b" with SMTP id " in received


def test_several_messages_in_one_session_get_distinct_ids(mf):
    msgs = [simple_message(subject=f"n{i}") for i in range(4)]
    ids = []
    with RawClient(mf.port) as c:
        c.ehlo()
        for msg in msgs:
            ids.append(queue_id(c.send_mail("a@client.test", ["user@example.org"], msg)))
        c.expect("RSET", 250)
        ids.append(queue_id(c.send_mail("b@client.test", ["user@example.org"], msgs[0])))
    assert len(set(ids)) == 5
    files = wait_files(mf, "user@example.org", 5)
    assert len(files) == 5
    assert sorted(body_of(p) for p in files) == sorted(msgs + [msgs[0]])


def test_empty_message_gets_a_prompt_250(mf):
    with open_data(mf) as c:
        start = time.time()
        c.send(b".\r\n")
        r = c.reply()
        assert time.time() - start < 2.0
        queue_id(r)
        c.expect("NOOP", 250)
    (path,) = wait_files(mf, "user@example.org", 1)
    assert split_trace(path.read_bytes())[2] == b""


def test_message_arriving_in_small_pieces(mf):
    msg = simple_message(subject="slowly", body="line one\r\n.dot\r\nline three")
    stuffed = msg.replace(b"\r\n.dot", b"\r\n..dot") + b".\r\n"
    with open_data(mf) as c:
        for i in range(0, len(stuffed), 7):
            c.send(stuffed[i : i + 7])
            time.sleep(0.002)
        queue_id(c.reply())
    (path,) = wait_files(mf, "user@example.org", 1)
    assert body_of(path) == msg


def test_large_message_is_byte_identical(daemon):
    d = daemon()  # default limit (25 MiB)
    line = bytes(range(0x20, 0x7F)) + b"\r\n"
    msg = simple_message(subject="big") + line * (2 * 1024 * 1024 // len(line))
    with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as s:
        assert s.sendmail("a@client.test", ["user@example.org"], msg) == {}
    (path,) = wait_files(d, "user@example.org", 1)
    assert body_of(path) == msg


# -- dot-stuffing -----------------------------------------------------------------------------


def test_dot_stuffing_is_undone(mf):
    wire = (
        b"Subject: dots\r\n\r\n"
        b"..\r\n"
        b"...\r\n"
        b"..leading\r\n"
        b"middle . dot\r\n"
        b". \r\n"  # not stuffed by a sloppy client: a dot then a space is still content
        b"..\r\n"
    )
    expected = b"Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\nmiddle . dot\r\n \r\n.\r\n"
    with open_data(mf) as c:
        c.send(wire + b".\r\n")
        queue_id(c.reply())
    (path,) = wait_files(mf, "user@example.org", 1)
    assert body_of(path) == expected


def test_smtplib_stuffs_and_server_unstuffs(mf):
    msg = b"Subject: dots\r\n\r\n.\r\n..\r\n.x\r\n"
    with smtplib.SMTP("127.0.0.1", mf.port, timeout=5) as s:
        s.sendmail("a@client.test", ["user@example.org"], msg)
    (path,) = wait_files(mf, "user@example.org", 1)
    assert body_of(path) == msg


def test_header_line_with_leading_dot_after_354(mf):
    # The very first line of the data can be stuffed too (the CRLF of DATA opens it).
    with open_data(mf) as c:
        c.send(b"..X-Odd: first line starts with a dot\r\n\r\nbody\r\n.\r\n")
        queue_id(c.reply())
    (path,) = wait_files(mf, "user@example.org", 1)
    assert body_of(path) == b".X-Odd: first line starts with a dot\r\n\r\nbody\r\n"


# -- bare CR / bare LF and SMTP smuggling ---------------------------------------------------------

SMUGGLED = (
    b"MAIL FROM:<attacker@elsewhere.test>\r\n"
    b"RCPT TO:<victim@example.org>\r\n"
    b"DATA\r\n"
    b"From: ceo@example.org\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n"
)

SMUGGLING_ENDINGS = [
    b"\n.\n",
    b"\r.\r",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\n.\r",
    b"\r.\n",
    b"\n\n.\n\n",
    b"\r\n.\r\r\n",
    b"\r\n.\n\r\n",
    b"\r\n\r.\r\n",
]


@pytest.mark.parametrize("ending", SMUGGLING_ENDINGS, ids=lambda e: repr(e)[2:-1])
def test_smuggling_never_makes_a_second_transaction(mf, ending):
    """The smuggled part is followed by a real CRLF.CRLF: a vulnerable server would see two
    messages (two 250s, a delivery to victim@). We must see one DATA, refused with 554 5.6.0."""
    payload = b"From: a@client.test\r\nSubject: cover\r\n\r\ncover text" + ending + SMUGGLED + b".\r\n"
    with open_data(mf) as c:
        c.send(payload)
        r = c.reply()
        assert (r.code, r.status) == (554, "5.6.0"), r
        # exactly one reply for the whole DATA: the next command gets the next reply (replies
        # to smuggled commands would come before it) and nothing follows
        c.expect("NOOP", 250)
        c.no_more_replies()
        # the session is in sync and usable: a clean transaction goes through
        clean = simple_message(subject="clean after smuggling attempt")
        queue_id(c.send_mail("a@client.test", ["user@example.org"], clean))
    (path,) = wait_files(mf, "user@example.org", 1)
    assert body_of(path) == clean
    assert after_sentinel(mf) == [path]
    assert mf.messages("victim@example.org") == []


@pytest.mark.parametrize("ending", SMUGGLING_ENDINGS, ids=lambda e: repr(e)[2:-1])
def test_smuggling_in_one_pipelined_write_counts_replies(mf, ending):
    with RawClient(mf.port) as c:
        c.send(
            b"EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<user@example.org>\r\nDATA\r\n"
            b"Subject: cover\r\n\r\ncover" + ending + SMUGGLED + b".\r\nQUIT\r\n"
        )
        replies = c.replies(6)
        assert [r.code for r in replies] == [250, 250, 250, 354, 554, 221], replies
        assert c.is_closed()
    assert after_sentinel(mf) == []


def test_smuggling_right_after_354(mf):
    # ".\n" as the first bytes: a lone dot ended by a bare LF is not the end either.
    with open_data(mf) as c:
        c.send(b".\n" + SMUGGLED + b".\r\n")
        r = c.reply()
        assert (r.code, r.status) == (554, "5.6.0")
        c.expect("NOOP", 250)
        c.no_more_replies()
    assert after_sentinel(mf) == []


@pytest.mark.parametrize(
    "data",
    [
        b"Subject: bare lf\n\nbody\r\n",
        b"Subject: bare lf in body\r\n\r\nline one\nline two\r\n",
        b"Subject: bare cr\r\n\r\nline one\rline two\r\n",
        b"Subject: cr cr lf\r\n\r\nline one\r\r\nline two\r\n",
        b"Subject: lf cr\r\n\r\nline one\n\rline two\r\n",
    ],
)
def test_bare_cr_or_lf_is_refused_after_the_real_end(mf, data):
    with open_data(mf) as c:
        c.send(data + b".\r\n")
        r = c.reply()
        assert (r.code, r.status) == (554, "5.6.0")
        c.expect("NOOP", 250)
        c.no_more_replies()
    assert after_sentinel(mf) == []


# -- size -------------------------------------------------------------------------------------


def sized_message(total):
    head = b"Subject: size\r\n\r\n"
    filler = total - len(head) - 2
    return head + b"x" * filler + b"\r\n"


def test_size_limit_boundary(mf):
    exact = sized_message(MAX_SIZE)
    assert len(exact) == MAX_SIZE
    with RawClient(mf.port) as c:
        c.ehlo()
        queue_id(c.send_mail("a@client.test", ["user@example.org"], exact))
        r = c.send_mail("a@client.test", ["user@example.org"], sized_message(MAX_SIZE + 1))
        assert (r.code, r.status) == (552, "5.3.4"), r
    (path,) = wait_files(mf, "user@example.org", 1)
    assert body_of(path) == exact
    assert after_sentinel(mf) == [path]


def test_declared_size_over_limit_is_552_at_mail(mf):
    with RawClient(mf.port) as c:
        c.ehlo()
        r = c.cmd(f"MAIL FROM:<a@client.test> SIZE={MAX_SIZE + 1}")
        assert (r.code, r.status) == (552, "5.3.4")
        assert c.cmd("RCPT TO:<user@example.org>").code == 503  # no transaction
        c.expect(f"MAIL FROM:<a@client.test> SIZE={MAX_SIZE}", 250)


@pytest.mark.parametrize("size", ["99999999999999999999999", "18446744073709551616", "1" + "0" * 40])
def test_declared_size_past_64_bits_is_552_not_wrapped(mf, size):
    # smtp-proto used to wrap such values around to a small number: 250 instead of 552
    with RawClient(mf.port) as c:
        c.ehlo()
        r = c.cmd(f"MAIL FROM:<a@client.test> SIZE={size}")
        assert (r.code, r.status) in ((552, "5.3.4"), (501, "5.5.4")), r
        assert c.cmd("RCPT TO:<user@example.org>").code == 503


def test_declared_size_seen_by_smtplib(mf):
    with smtplib.SMTP("127.0.0.1", mf.port, timeout=5) as s:
        with pytest.raises(smtplib.SMTPSenderRefused) as exc:
            s.sendmail("a@client.test", ["user@example.org"], sized_message(MAX_SIZE + 500))
        assert exc.value.smtp_code == 552


def test_undeclared_oversize_is_552_after_the_end_and_stays_in_sync(mf):
    big = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 50  # ~50 KB, limit 10 KB
    with open_data(mf) as c:
        # the data, its end and a pipelined NOOP in one go: exactly [552, 250] come back
        c.send(big + b".\r\nNOOP\r\n")
        r1, r2 = c.replies(2)
        assert (r1.code, r1.status) == (552, "5.3.4")
        assert r2.code == 250
        c.no_more_replies()
        queue_id(c.send_mail("a@client.test", ["user@example.org"], simple_message(subject="small")))
    files = wait_files(mf, "user@example.org", 1)
    assert after_sentinel(mf) == files
    assert b"Subject: small" in body_of(files[0])


def test_oversize_message_containing_a_fake_end_is_read_to_its_real_end(mf):
    big = b"Subject: big\r\n\r\n" + b"z" * (MAX_SIZE * 2) + b"\r\n\n.\nNOOP\r\n"
    with open_data(mf) as c:
        c.send(big + b".\r\n")
        r = c.reply()
        assert r.code in (552, 554)
        c.no_more_replies()
        c.expect("NOOP", 250)


# -- mail loops -------------------------------------------------------------------------------


def with_received(n):
    hops = b"".join(
        b"Received: from hop%d.test by hop%d.test with SMTP id %d;\r\n\tMon, 01 Jan 2024 10:00:00 +0000\r\n"
        % (i, i + 1, i)
        for i in range(n)
    )
    return hops + simple_message(subject=f"{n} hops")


def test_more_than_100_received_headers_is_a_loop(daemon):
    d = daemon()
    with RawClient(d.port) as c:
        c.ehlo()
        queue_id(c.send_mail("a@client.test", ["user@example.org"], with_received(100)))
        r = c.send_mail("a@client.test", ["user@example.org"], with_received(101))
        assert (r.code, r.status) == (554, "5.4.6")
        c.expect("NOOP", 250)
    files = wait_files(d, "user@example.org", 1)
    assert after_sentinel(d) == files


def test_max_received_headers_is_configurable(daemon):
    d = daemon(extra_smtp="max_received_headers = 3")
    with RawClient(d.port) as c:
        c.ehlo()
        queue_id(c.send_mail("a@client.test", ["user@example.org"], with_received(3)))
        r = c.send_mail("a@client.test", ["user@example.org"], with_received(4))
        assert (r.code, r.status) == (554, "5.4.6")
        # "Received:" lines in the body are not trace headers
        body = simple_message(body="Received: from a\r\n" * 10)
        queue_id(c.send_mail("a@client.test", ["user@example.org"], body))
    assert len(wait_files(d, "user@example.org", 2)) == 2


# -- 8-bit and the corpus -----------------------------------------------------------------------


def test_every_octet_but_cr_lf_nul_survives(mf):
    octets = bytes(b for b in range(1, 256) if b not in (0x0A, 0x0D))
    msg = b"Subject: octets\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + octets + b"\r\n" + octets[::-1] + b"\r\n"
    with smtplib.SMTP("127.0.0.1", mf.port, timeout=5) as s:
        s.sendmail("a@client.test", ["user@example.org"], msg, mail_options=["BODY=8BITMIME"])
    (path,) = wait_files(mf, "user@example.org", 1)
    assert body_of(path) == msg


def corpus_files():
    files = sorted(CORPUS.glob("*.eml"))
    assert len(files) >= 5, f"corpus missing in {CORPUS}"
    return files


def to_crlf(data: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", data)


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.stem)
def test_corpus_is_delivered_byte_identical(daemon, path):
    d = daemon()
    data = to_crlf(path.read_bytes())
    # What the server receives: smtplib sends the bytes as they are (dot-stuffed), adding a
    # final CRLF when the message lacks one.
    expected = data if data.endswith(b"\r\n") else data + b"\r\n"
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
        s.ehlo("corpus.client.test")
        refused = s.sendmail(
            "corpus@client.test", ["user@example.org"], data, mail_options=["BODY=8BITMIME"]
        )
        assert refused == {}
    (delivered,) = wait_files(d, "user@example.org", 1)
    return_path, received, rest = split_trace(delivered.read_bytes())
    assert return_path == b"Return-Path: <corpus@client.test>\r\n"
    assert received.startswith(b"Received: from corpus.client.test ([127.0.0.1])\r\n\tby mx.test.example")
    assert rest == expected


def test_corpus_has_the_promised_shapes():
    """Guards the corpus itself: the kinds of messages issue #2 asks for are there."""
    texts = {p.name: p.read_bytes() for p in corpus_files()}
    joined = b"\n".join(texts.values())
    assert b"multipart/alternative" in joined
    assert b"Content-Transfer-Encoding: base64" in joined
    assert b"=?UTF-8?" in joined
    assert re.search(rb"\n\.[^\n]*\n", joined)  # lines starting with a dot
    assert any(max(t) >= 0x80 for t in texts.values())  # 8-bit body
    assert any(not t.endswith(b"\n") for t in texts.values())  # no trailing line end
    assert any(len(line) > 200 for t in texts.values() for line in t.split(b"\n"))  # long header
