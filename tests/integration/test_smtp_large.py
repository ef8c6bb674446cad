"""Large messages: memory that does not grow with message size.

A message over 256 KB goes to a file in the spool (`data/spool/large/`) as it arrives; the
`data` hook reads its headers from there, header edits rewrite only the header block, local
delivery copies the file, and the file goes once the message is delivered. `max_inflight_memory`
refuses new DATA with 451 4.3.1 while sessions hold too much. Driven with raw SMTP and smtplib.
"""

import os
import re
import random
import signal
import smtplib
import subprocess
import threading
import time

from conftest import peak_rss_kb, wait_for
from smtp_raw import RawClient, body_of, queue_id, simple_message, wait_files


def big_message(size, subject="big", seed=1):
    """A message of about `size` bytes: CRLF lines of random printable text, some starting
    with a dot (dot-stuffing must round-trip through the file)."""
    rng = random.Random(seed)
    alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789 .,-"
    lines = []
    total = 0
    while total < size:
        line = bytes(rng.choice(alphabet) for _ in range(76))
        if rng.random() < 0.02:
            line = b"." + line
        lines.append(line)
        total += len(line) + 2
    head = simple_message(subject=subject, body="").rstrip(b"\r\n") + b"\r\n\r\n"
    return head + b"\r\n".join(lines) + b"\r\n"


def large_files(d):
    folder = d.root / "data" / "spool" / "large"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_large_message_is_delivered_byte_exact_and_its_file_removed(daemon):
    d = daemon()
    msg = big_message(3 * 1024 * 1024)
    with RawClient(d.port, timeout=30) as c:
        c.ehlo()
        qid = queue_id(c.send_mail("a@client.test", ["user@example.org"], msg))
    (path,) = wait_files(d, "user@example.org", 1)
    assert body_of(path) == msg
    assert f"id {qid}".encode() in path.read_bytes()
    assert wait_for(lambda: not large_files(d)), f"message file left after delivery: {large_files(d)}"


def test_hook_reads_headers_and_body_of_a_large_message_and_edits_headers(daemon):
    d = daemon(
        scripts={
            "10-tag.rhai": """
                fn data(ctx, msg) {
                    if msg.subject == "tag me" && msg.body_text.contains("needle-in-a-haystack") {
                        msg.add_header("X-Tagged", "yes");
                        msg.set_subject("[big] " + msg.subject);
                    }
                }
            """
        }
    )
    msg = big_message(2 * 1024 * 1024, subject="tag me")
    msg = msg.replace(b"\r\n\r\n", b"\r\n\r\nneedle-in-a-haystack\r\n", 1)
    with RawClient(d.port, timeout=30) as c:
        c.ehlo()
        queue_id(c.send_mail("a@client.test", ["user@example.org"], msg))
    (path,) = wait_files(d, "user@example.org", 1)
    delivered = path.read_bytes()  # add_header puts the field first, before Received
    head, _, body = delivered.partition(b"\r\n\r\n")
    assert b"X-Tagged: yes\r\n" in head + b"\r\n"
    assert b"Subject: [big] tag me\r\n" in head + b"\r\n"
    assert b"Subject: tag me\r\n" not in head + b"\r\n"
    assert body == msg.partition(b"\r\n\r\n")[2], "the body after the edited header block is intact"


def test_oversize_large_message_gets_552_and_leaves_no_file(daemon):
    d = daemon(extra_smtp="max_message_size = 1000000")
    msg = big_message(1_500_000)
    with RawClient(d.port, timeout=30) as c:
        c.ehlo()
        reply = c.send_mail("a@client.test", ["user@example.org"], msg)
        assert reply.code == 552, reply
        # the session is still in sync: a small message goes through after it
        queue_id(c.send_mail("a@client.test", ["user@example.org"], simple_message()))
    assert not large_files(d)


def test_rejected_large_message_leaves_no_file(daemon):
    d = daemon(scripts={"10-no.rhai": 'fn data(ctx, msg) { if msg.subject == "no" { return reject("no thanks"); } }'})
    with RawClient(d.port, timeout=30) as c:
        c.ehlo()
        assert c.send_mail("a@client.test", ["user@example.org"], big_message(600_000, subject="no")).code == 550
    assert not large_files(d)


def test_kill_9_after_250_of_a_large_message_then_restart_delivers(daemon):
    d = daemon()
    blocker = d.maildir("user@example.org")
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a Maildir")
    msg = big_message(1024 * 1024, subject="survives")
    with RawClient(d.port, timeout=30) as c:
        c.ehlo()
        qid = queue_id(c.send_mail("a@client.test", ["user@example.org"], msg))
        d.kill()
    assert d.proc.returncode == -signal.SIGKILL
    assert large_files(d), "250 was sent but the message file is not in the spool"
    blocker.unlink()
    d.start()
    (path,) = wait_files(d, "user@example.org", 1)
    assert body_of(path) == msg
    assert f"id {qid}".encode() in path.read_bytes()
    assert wait_for(lambda: not large_files(d))


def test_a_session_cut_off_mid_data_leaves_no_file_after_restart(daemon):
    d = daemon()
    c = RawClient(d.port, timeout=30)
    c.ehlo()
    c.expect("MAIL FROM:<a@client.test>", 250)
    c.expect("RCPT TO:<user@example.org>", 250)
    c.expect("DATA", 354)
    c.send(big_message(800_000)[:700_000])
    assert wait_for(lambda: large_files(d)), "a message over 256 KB is written to a file as it arrives"
    d.kill()
    c.close()
    d.start()
    assert wait_for(lambda: not large_files(d)), "the file of a message that never got its 250 is removed"
    assert d.messages("user@example.org") == []


def test_max_inflight_memory_refuses_new_data_with_451_4_3_1(daemon):
    """Session A holds a message in memory mid-DATA (under 256 KB, not yet in a file); with the
    cap at 700 KB (room for one session's worst case, 512 KB, but not two) a second session's
    DATA is refused until A finishes."""
    d = daemon(extra_smtp='max_inflight_memory = "700KB"')
    a = RawClient(d.port, timeout=30)
    a.ehlo()
    a.expect("MAIL FROM:<a@client.test>", 250)
    a.expect("RCPT TO:<user@example.org>", 250)
    a.expect("DATA", 354)
    part = simple_message(body="x" * 70 + "\r\n").rstrip(b"\r\n") + b"\r\n" + (b"y" * 98 + b"\r\n") * 2000
    a.send(part)

    def second_data():
        with RawClient(d.port, timeout=10) as b:
            b.ehlo()
            b.expect("MAIL FROM:<b@client.test>", 250)
            b.expect("RCPT TO:<user@example.org>", 250)
            return b.cmd("DATA")

    refused = wait_for(lambda: (r := second_data()).code == 451 and r, timeout=10)
    assert refused, "DATA was not refused while another session held 200 KB of a 700 KB cap"
    assert refused.status == "4.3.1", refused
    a.send(b".\r\n")
    queue_id(a.reply())
    a.close()
    # A's memory is released: a new message is accepted
    with RawClient(d.port, timeout=10) as b:
        b.ehlo()
        queue_id(b.send_mail("b@client.test", ["user@example.org"], simple_message()))
    assert "max_inflight_memory reached" in d.log()


def test_max_inflight_memory_below_one_session_is_a_config_error(tmp_path):
    from conftest import BIN

    config = tmp_path / "mailflow.toml"
    config.write_text('[smtp]\nmax_inflight_memory = "100KB"\n')
    out = subprocess.run([str(BIN), "check", "--config", str(config)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1, out
    assert "max_inflight_memory" in out.stdout + out.stderr


def test_memory_does_not_grow_with_message_size(daemon):
    """Eight concurrent 8 MB messages (64 MB in flight) raise the daemon's peak RSS by far less
    than the data in flight: each session holds a bounded buffer, the rest is on disk."""
    d = daemon()
    before = peak_rss_kb(d.proc.pid)
    msg = big_message(8 * 1024 * 1024)
    errors = []

    def send(i):
        try:
            with smtplib.SMTP("127.0.0.1", d.port, timeout=60) as s:
                s.sendmail(f"s{i}@client.test", ["user@example.org"], msg)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    files = wait_files(d, "user@example.org", 8, timeout=60)
    assert len(files) == 8
    grown_mb = (peak_rss_kb(d.proc.pid) - before) / 1024
    print(f"peak RSS grew by {grown_mb:.1f} MB for 64 MB in flight")
    assert grown_mb < 40, f"peak RSS grew by {grown_mb:.0f} MB for 64 MB in flight"
    assert all(os.path.getsize(p) > 8 * 1024 * 1024 for p in files)


def test_large_forward_goes_out_byte_exact_and_leaves_no_file(daemon):
    """A forward of a large message is copied from its spool file into the outbound queue and
    sent from there: X-Loop + the stored bytes, dot-stuffed on the wire."""
    from test_outbound import RawServer, outbound, unstuff

    server = RawServer()
    try:
        d = daemon(scripts={"10-fwd.rhai": 'fn data(ctx, msg) { msg.forward("bob@far.example"); }'},
                   extra=outbound(server.port))
        msg = big_message(3 * 1024 * 1024, subject="forward me")
        with RawClient(d.port, timeout=30) as c:
            c.ehlo()
            queue_id(c.send_mail("alice@remote.example", ["user@example.org"], msg))
        (path,) = wait_files(d, "user@example.org", 1)
        local = path.read_bytes()
        local = local[local.index(b"\r\n") + 2 :]  # without Return-Path
        (fwd,) = server.wait(1, timeout=30)
        assert unstuff(fwd["wire"]) == b"X-Loop: mx.test.example\r\n" + local
        assert fwd["rcpts"] == ["bob@far.example"]
        assert wait_for(lambda: not large_files(d), timeout=10)
        assert wait_for(lambda: not list((d.root / "data" / "queue").glob("*.msg")), timeout=10)
    finally:
        server.close()


def test_exec_pipe_streams_a_large_message_from_its_file(daemon):
    """exec::pipe feeds a large message to the command from its file: the command sees every
    byte the daemon stores (Received header included)."""
    d = daemon(
        scripts={"10-count.rhai": 'fn data(ctx, msg) { let out = exec::pipe("count", msg).stdout; out.trim(); log("wc=" + out); }'},
        extra='[plugins]\nenabled = ["exec"]\n[plugins.exec]\ntimeout_ms = 20000\n[plugins.exec.commands]\ncount = ["/usr/bin/wc", "-c"]\n[scripts]\ntimeout_ms = 30000\n',
    )
    msg = big_message(4 * 1024 * 1024)
    with RawClient(d.port, timeout=30) as c:
        c.ehlo()
        queue_id(c.send_mail("a@client.test", ["user@example.org"], msg))
    (path,) = wait_files(d, "user@example.org", 1)
    stored = len(path.read_bytes()) - len(b"Return-Path: <a@client.test>\r\n")
    counted = wait_for(lambda: re.search(r"wc=(\d+)", d.log()))
    assert counted, d.log()[-2000:]
    assert int(counted.group(1)) == stored


def test_add_header_on_a_large_message_without_a_header_block_end_keeps_it_in_its_file(daemon):
    """No blank line in the first megabyte: an added field still goes in front and the rest is
    copied from the file unchanged (a field added needs no end of the header block)."""
    d = daemon(scripts={"10-add.rhai": 'fn data(ctx, msg) { msg.add_header("X-Scanned", "yes"); }'})
    msg = b"".join(b"X-Filler-%06d: %s\r\n" % (i, b"v" * 60) for i in range(20000))  # 1.5 MB of fields
    with RawClient(d.port, timeout=30) as c:
        c.ehlo()
        queue_id(c.send_mail("a@client.test", ["user@example.org"], msg))
    (path,) = wait_files(d, "user@example.org", 1)
    raw = path.read_bytes()
    raw = raw[raw.index(b"\r\n") + 2 :]  # Return-Path
    assert raw.startswith(b"X-Scanned: yes\r\nReceived: ")
    assert raw.endswith(msg)
