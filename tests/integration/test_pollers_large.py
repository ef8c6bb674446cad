"""Pollers fetching large messages from a real Dovecot: a message over 256 KB is written to a
file as it arrives (POP3 line by line, IMAP in 1 MB pieces of `BODY.PEEK[]<offset.length>`),
so the daemon's memory does not grow with its size; the local copy is byte for byte what the
server holds, header edits shape it, and no file is left behind.
"""

import random

from conftest import maildir_files, peak_rss_kb, wait_for
from dovecot import dovecot  # noqa: F401  (fixture)
from test_pollers import ids, message, processed, start, wait_processed

SCRIPT = """
fn fetched(ctx, msg) {
    log("processed [" + msg.message_id + "] size=" + msg.size);
    if msg.subject == "tag" { msg.set_header("X-Tagged", "yes"); }
}
"""

BODY_SCRIPT = """
fn fetched(ctx, msg) {
    if msg.body_text.contains("needle-at-the-end") { log("processed [" + msg.message_id + "] found"); }
}
"""


def big_body(size, seed=7):
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789 .,"
    lines = []
    total = 0
    while total < size:
        line = "".join(rng.choice(alphabet) for _ in range(76))
        if rng.random() < 0.02:
            line = "." + line  # dot-stuffing on the POP3 wire
        lines.append(line)
        total += len(line) + 1
    return "\n".join(lines) + "\n"


def local_copies(d):
    return maildir_files(d.root / "data" / "fetched")


def large_leftovers(d):
    folder = d.root / "data" / "state" / "fetch-journal" / "large"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def check_copy(d, original):
    (copy,) = wait_for(lambda: local_copies(d), timeout=30)
    assert copy.read_bytes().replace(b"\r\n", b"\n").decode() == original
    assert wait_for(lambda: not large_leftovers(d), timeout=10), large_leftovers(d)


def test_pop3_large_message_is_fetched_to_a_file_and_copied_byte_exact(daemon, dovecot):
    dv = dovecot()
    original = message(1, body=big_body(3 * 1024 * 1024))
    dv.seed([original])
    d = start(daemon, dv, {"10.rhai": SCRIPT}, [dv.account(protocol="pop3", deliver="data/fetched")])
    wait_processed(d, ids(1), timeout=60)
    check_copy(d, original)


def test_imap_large_message_is_fetched_in_pieces_and_copied_byte_exact(daemon, dovecot):
    dv = dovecot()
    small = message(2, body="small\n")
    original = message(1, body=big_body(3 * 1024 * 1024 + 12345))
    dv.seed([original, small])
    d = start(daemon, dv, {"10.rhai": SCRIPT}, [dv.account(deliver="data/fetched", idle=False)])
    counts = wait_processed(d, ids(1, 2), timeout=60)
    assert set(counts.values()) == {1}
    copies = wait_for(lambda: (lambda c: c if len(c) == 2 else None)(local_copies(d)), timeout=30)
    texts = sorted(c.read_bytes().replace(b"\r\n", b"\n").decode() for c in copies)
    assert texts == sorted([original, small])
    assert wait_for(lambda: not large_leftovers(d), timeout=10)


def test_imap_header_edit_of_a_large_message_keeps_the_body(daemon, dovecot):
    dv = dovecot()
    body = big_body(1024 * 1024)
    dv.seed([message(1, subject="tag", body=body)])
    d = start(daemon, dv, {"10.rhai": SCRIPT}, [dv.account(deliver="data/fetched", idle=False)])
    wait_processed(d, ids(1), timeout=60)
    (copy,) = wait_for(lambda: local_copies(d), timeout=30)
    text = copy.read_bytes().replace(b"\r\n", b"\n").decode()
    head, _, rest = text.partition("\n\n")
    assert "X-Tagged: yes" in head.splitlines()
    assert rest == body


def test_a_script_reading_the_body_of_a_large_fetched_message_sees_all_of_it(daemon, dovecot):
    dv = dovecot()
    dv.seed([message(1, body=big_body(2 * 1024 * 1024) + "needle-at-the-end\n")])
    d = start(daemon, dv, {"10.rhai": BODY_SCRIPT}, [dv.account(idle=False)])
    wait_processed(d, ids(1), timeout=60)
    assert "found" in d.log()


def test_fetching_a_30_mb_message_does_not_grow_memory_by_its_size(daemon, dovecot):
    dv = dovecot()
    original = message(1, body=big_body(30 * 1024 * 1024))
    dv.seed([original])
    d = start(daemon, dv, {"10.rhai": SCRIPT}, [])
    before = peak_rss_kb(d.proc.pid)
    # the account is added by a reload, so the baseline is the daemon at rest
    d.config_path.write_text(d.config_path.read_text() + dv.account(protocol="imap", deliver="data/fetched", idle=False))
    d.reload()
    wait_processed(d, ids(1), timeout=120)
    check_copy(d, original)
    grown_mb = (peak_rss_kb(d.proc.pid) - before) / 1024
    print(f"peak RSS grew by {grown_mb:.1f} MB fetching a 30 MB message")
    assert grown_mb < 20, f"peak RSS grew by {grown_mb:.0f} MB fetching a 30 MB message"
    assert processed(d)["1@test.example"] == 1
