"""The POP3 and IMAP pollers against a real Dovecot (issue #5).

Every test starts its own private Dovecot (see dovecot.py: unprivileged, loopback ports, a
passwd-file user, a Maildir the test seeds) and its own mailflow with `[[accounts]]` pointing
at it. What the server holds afterwards is read with Python's imaplib/poplib, independently of
mailflow. "Processed" is counted from the `processed [<message-id>]` line each test script logs,
across restarts (the daemon appends to one log file).

Nothing here is skipped: a missing dovecot is a failure (test.sh installs it).
"""

import os
import poplib
import re
import shutil
import signal
import time
import tomllib
from collections import Counter

import pytest

from conftest import BIN, REPO, maildir_files, wait_for
from dovecot import dovecot  # noqa: F401  (fixture)
from mailutils import mailutils  # noqa: F401  (fixture)

LOG_SCRIPT = """
fn fetched(ctx, msg) {
    log("processed [" + msg.message_id + "] " + ctx.account + " " + ctx.protocol + " " + ctx.mailbox + " uid=" + ctx.uid);
}
"""


def message(n, subject=None, sender="alice@remote.example", extra="", body="Hello.\n"):
    return (
        f"From: Alice <{sender}>\n"
        f"To: me@example.org\n"
        f"Subject: {subject if subject is not None else f'message {n}'}\n"
        f"Date: Mon, 23 Nov 2026 10:00:00 +0000\n"
        f"Message-ID: <{n}@test.example>\n"
        f"{extra}"
        f"\n{body}"
    )


def processed(d):
    """Counter of Message-IDs (without <>) the scripts logged as processed."""
    return Counter(re.findall(r"processed \[([^\]]*)\]", d.log()))


def wait_processed(d, ids, timeout=15.0):
    """Waits until every id in `ids` was processed; returns the counter."""
    ids = set(ids)
    wait_for(lambda: ids <= set(processed(d)), timeout=timeout, interval=0.05)
    counts = processed(d)
    missing = ids - set(counts)
    assert not missing, f"not processed: {sorted(missing)[:10]}\n{d.log()[-3000:]}"
    return counts


def ids(*ns):
    return {f"{n}@test.example" for n in ns}


def mid(n):
    return f"<{n}@test.example>"


@pytest.fixture(params=["dovecot", "mailutils"])
def server(request):
    """The tests that hold for any IMAP/POP3 server run against Dovecot and GNU Mailutils
    imap4d/pop3d (no MOVE, no UIDPLUS, no IDLE push, `* n EXPUNGED`, X-UIDL headers)."""
    return request.getfixturevalue(request.param)


def start(daemon, dv, scripts, accounts, plugins=""):
    return daemon(scripts=scripts, extra=plugins + "".join(accounts))


# --- IMAP ------------------------------------------------------------------------------------


def test_idle_push_is_processed_within_two_seconds(daemon, dovecot):
    dv = dovecot()
    dv.seed([message(1)])
    d = start(daemon, dv, {"10-log.rhai": LOG_SCRIPT}, [dv.account(poll_interval="60s")])
    wait_processed(d, ids(1))
    time.sleep(0.5)  # now idling (a 60 s poll would never make the 2 s below)
    for n in (2, 3):
        t0 = time.time()
        dv.append(message(n))
        wait_processed(d, ids(n), timeout=5)
        elapsed = time.time() - t0
        print(f"IDLE: appended message processed after {elapsed:.3f} s")
        assert elapsed < 2.0, elapsed
    assert "idle=true" in d.log()
    assert set(processed(d).values()) == {1}


def test_polling_without_idle(daemon, server):
    dv = server()
    d = start(daemon, dv, {"10-log.rhai": LOG_SCRIPT}, [dv.account(idle=False, poll_interval="1s")])
    wait_for(lambda: "IMAP session open" in d.log())
    dv.append(message(1))
    wait_processed(d, ids(1), timeout=5)
    assert "idle=false" in d.log()


SORTER = r"""
fn fetched(ctx, msg) {
    log("processed [" + msg.message_id + "]");
    let s = msg.subject;
    if s == "archive" { msg.file_into("Archive"); }
    if s == "flag" { msg.flag("\\Flagged"); msg.mark_seen(); }
    if s == "keyword" { msg.flag("$Important"); }
    if s == "nested" { msg.mark_seen(); msg.file_into("Lists/rust"); }
    if s == "umlaut" { msg.file_into("Entwürfe"); }
    if s == "inbox" { msg.file_into("INBOX"); }
    if s == "delete" { msg.delete(); }
    if s == "discard" { msg.file_into("Archive"); return discard(); }
}
"""


def test_file_into_flags_and_seen_on_the_server(daemon, dovecot):
    dv = dovecot()
    subjects = ["archive", "flag", "keyword", "nested", "umlaut", "inbox", "delete", "discard", "plain"]
    dv.seed([message(n, subject=s) for n, s in enumerate(subjects)])
    d = start(daemon, dv, {"10-sort.rhai": SORTER}, [dv.account()])
    counts = wait_processed(d, ids(*range(len(subjects))))
    wait_for(lambda: "batch done" in d.log())
    time.sleep(0.5)

    inbox = dv.mailbox("INBOX")
    assert set(inbox) == {mid(1), mid(2), mid(5), mid(7), mid(8)}, inbox
    assert inbox[mid(1)] == {"\\Flagged", "\\Seen"}
    assert inbox[mid(2)] == {"$Important"}  # a keyword
    assert inbox[mid(5)] == set()  # file_into("INBOX") of INBOX: no move, no loop
    assert inbox[mid(7)] == set()  # discard(): processed, no action at all
    assert inbox[mid(8)] == set()  # fetched with BODY.PEEK: still unseen
    assert dv.mailbox("Archive") == {mid(0): set()}
    assert dv.mailbox("Lists.rust") == {mid(3): {"\\Seen"}}  # "/" is Dovecot's "." here
    assert dv.mailbox("Entw&APw-rfe") == {mid(4): set()}  # modified UTF-7
    assert mid(6) not in inbox and dv.count("INBOX") == 5  # deleted and expunged

    # Nothing is processed again, however long it runs: file_into("INBOX") made no new UID.
    time.sleep(2)
    assert processed(d) == counts
    assert set(counts.values()) == {1}


HEADERS_ONLY = """
fn fetched(ctx, msg) {
    log("processed [" + msg.message_id + "] size=" + msg.size);
    if msg.subject == "forward me" { msg.forward("keeper@example.org"); }
}
"""

BODY_READER = """
fn fetched(ctx, msg) {
    log("processed [" + msg.message_id + "] size=" + msg.size + " secret=" + msg.body_text.contains("secret"));
}
"""


def test_header_only_fetch_completes_a_forwarded_message(daemon, dovecot):
    """A script that reads no body gets only the header block from the server
    (BODY.PEEK[HEADER]); a message it forwards is fetched whole before it goes out."""
    from smtpclient import wait_delivered

    dv = dovecot()
    body = "line one\n" + "x" * 5000 + "\nlast line\n"
    seeded = [message(1, subject="forward me", body=body), message(2, subject="keep")]
    dv.seed(seeded)
    d = start(daemon, dv, {"10-fwd.rhai": HEADERS_ONLY}, [dv.account()])
    wait_processed(d, ids(1, 2))
    assert wait_for(lambda: "headers_only=true" in d.log()), d.log()[-2000:]
    files = wait_delivered(d, "keeper@example.org", timeout=10)
    assert len(files) == 1, d.log()[-3000:]
    got = files[0].read_bytes()
    assert b"x" * 5000 in got and b"last line" in got and b"Subject: forward me" in got
    # msg.size is the server's size of the whole message, not the size of the header block.
    for n, text in ((1, seeded[0]), (2, seeded[1])):
        sizes = re.findall(rf"processed \[{n}@test.example\] size=(\d+)", d.log())
        assert sizes == [str(len(text.replace("\n", "\r\n").encode()))]


def test_a_script_reading_the_body_gets_whole_messages(daemon, dovecot):
    dv = dovecot()
    dv.seed([message(1, body="the secret is here\n"), message(2)])
    d = start(daemon, dv, {"10-body.rhai": BODY_READER}, [dv.account()])
    wait_processed(d, ids(1, 2))
    assert wait_for(lambda: "headers_only=false" in d.log())
    assert re.search(r"processed \[1@test.example\] size=\d+ secret=true", d.log())
    assert re.search(r"processed \[2@test.example\] size=\d+ secret=false", d.log())


def test_restart_processes_nothing_twice(daemon, server):
    dv = server()
    dv.seed([message(n) for n in range(5)])
    script = LOG_SCRIPT.replace('log("processed', 'msg.flag("\\\\Flagged"); log("processed')
    d = start(daemon, dv, {"10-log.rhai": script}, [dv.account()])
    wait_processed(d, ids(*range(5)))
    assert d.stop() == 0
    dv.append(message(5))
    dv.append(message(6))
    d.start()
    counts = wait_processed(d, ids(*range(7)))
    time.sleep(1.5)
    d.stop()
    d.start()
    dv.append(message(7))
    counts = wait_processed(d, ids(*range(8)))
    time.sleep(1)
    counts = processed(d)
    assert counts == Counter({f"{n}@test.example": 1 for n in range(8)}), counts
    assert all(flags == {"\\Flagged"} for flags in dv.mailbox().values())


def test_uidvalidity_change_runs_no_stale_action(daemon, dovecot):
    """The mailbox is deleted and re-created with new messages first (new UIDs 1-3 are at or
    below the old watermark) and the three old ones after them (new UIDs, same Message-IDs).
    The new ones must be processed despite the stale watermark; the old ones must not be
    processed again (they are not re-flagged). One new message is there twice, in the same
    fetch batch: its hook runs once, the copy is skipped like an old message."""
    dv = dovecot()
    for n in range(3):
        dv.append(message(n), mailbox="Work")
    script = LOG_SCRIPT.replace('log("processed', 'msg.flag("\\\\Flagged"); log("processed')
    d = start(daemon, dv, {"10-log.rhai": script}, [dv.account(mailbox="Work")])
    wait_processed(d, ids(0, 1, 2))
    wait_for(lambda: "batch done" in d.log())
    old_validity = dv.uidvalidity("Work")
    assert all(f == {"\\Flagged"} for f in dv.mailbox("Work").values())
    assert d.stop() == 0

    c = dv.imap()
    assert c.delete("Work")[0] == "OK"
    c.logout()
    time.sleep(1.1)  # a new UIDVALIDITY even where it is derived from the clock
    for n in (10, 10, 11, 0, 1, 2):
        dv.append(message(n), mailbox="Work")
    assert dv.uidvalidity("Work") != old_validity

    d.start()
    counts = wait_processed(d, ids(10, 11))
    time.sleep(1.5)
    counts = processed(d)
    assert all(counts[i] == 1 for i in ids(0, 1, 2, 10, 11)), counts
    # New UIDs in append order: 10, its copy, 11, then the old 0, 1, 2. Only the first
    # new messages (10 and 11) are flagged: the copy of 10 was skipped.
    c = dv.imap()
    c.select("Work", readonly=True)
    typ, data = c.uid("FETCH", "1:*", "(FLAGS)")
    c.logout()
    flags = {
        int(re.search(rb"UID (\d+)", x).group(1)): b"\\Flagged" in re.search(rb"FLAGS \(([^)]*)\)", x).group(1)
        for x in data
    }
    assert flags == {1: True, 2: False, 3: True, 4: False, 5: False, 6: False}, data
    assert "UIDVALIDITY changed" in d.log()
    assert d.log().count("already processed before the UIDVALIDITY change") == 4


def test_uidvalidity_change_while_running(daemon, server):
    """The same, live: the mailbox is deleted (Dovecot drops the session that has it
    selected), re-created and refilled within milliseconds; mailflow reconnects about a second
    later and finds the new UIDVALIDITY."""
    dv = server()
    for n in range(3):
        dv.append(message(n), mailbox="Work")
    script = LOG_SCRIPT.replace('log("processed', 'msg.flag("\\\\Flagged"); log("processed')
    d = start(daemon, dv, {"10-log.rhai": script}, [dv.account(mailbox="Work")])
    wait_processed(d, ids(0, 1, 2))
    wait_for(lambda: "batch done" in d.log())
    c = dv.imap()
    assert c.delete("Work")[0] == "OK"
    c.logout()
    for n in (10, 11, 0, 1, 2):
        dv.append(message(n), mailbox="Work")
    wait_processed(d, ids(10, 11), timeout=20)
    time.sleep(1.5)
    counts = processed(d)
    assert all(counts[i] == 1 for i in ids(0, 1, 2, 10, 11)), counts
    box = dv.mailbox("Work")
    assert box[mid(10)] == box[mid(11)] == {"\\Flagged"}
    assert box[mid(0)] == box[mid(1)] == box[mid(2)] == set(), box


def test_tempfail_is_retried_then_succeeds(daemon, server):
    dv = server()
    d = start(
        daemon,
        dv,
        {
            "10-flaky.rhai": r"""
                fn fetched(ctx, msg) {
                    if kv::incr("tries:" + msg.message_id) < 3 { return tempfail(); }
                    msg.flag("\\Flagged");
                    log("processed [" + msg.message_id + "]");
                }
            """
        },
        [dv.account(poll_interval="1s")],
        plugins='[plugins]\nenabled = ["kv"]\n\n',
    )
    wait_for(lambda: "IMAP session open" in d.log())
    dv.append(message(1))
    # IDLE alone would only wake on the next mail: the retry comes after poll_interval.
    wait_processed(d, ids(1), timeout=10)
    assert d.log().count("retried next round") == 2
    wait_for(lambda: dv.mailbox().get(mid(1)) == {"\\Flagged"}, timeout=3)
    assert dv.mailbox()[mid(1)] == {"\\Flagged"}


def test_failing_script_gives_up_after_five_attempts_and_moves_on(daemon, server):
    dv = server()
    dv.seed([message(1, subject="boom"), message(2)])
    script = r"""
        fn fetched(ctx, msg) {
            if msg.subject == "boom" { throw "broken"; }
            log("processed [" + msg.message_id + "]");
        }
    """
    d = start(daemon, dv, {"10.rhai": script}, [dv.account(poll_interval="1s")])
    wait_processed(d, ids(2))
    assert wait_for(lambda: "giving up on this message" in d.log(), timeout=15)
    assert d.log().count("retried next round") == 4
    dv.append(message(3))
    wait_processed(d, ids(3))
    assert dv.mailbox()[mid(1)] == set()  # left untouched


def test_on_error_accept_processes_a_failing_message_without_its_actions(daemon, server):
    dv = server()
    dv.seed([message(1, subject="boom"), message(2)])
    scripts = {
        "10-log.rhai": LOG_SCRIPT,
        "20-boom.rhai": r"""
            fn fetched(ctx, msg) {
                msg.flag("\\Flagged");
                if msg.subject == "boom" { throw "broken"; }
            }
        """,
    }
    d = daemon(scripts=scripts, extra='[scripts]\non_error = "accept"\n\n' + dv.account(poll_interval="1s"))
    wait_processed(d, ids(1, 2))
    wait_for(lambda: dv.mailbox().get(mid(2)) == {"\\Flagged"}, timeout=5)
    time.sleep(2.5)  # two more polls: nothing is retried
    log = d.log()
    assert "script failed; on_error applies" in log
    assert "retried next round" not in log and "giving up" not in log
    assert set(processed(d).values()) == {1}
    assert dv.mailbox()[mid(1)] == set()  # the failing stage's actions are dropped
    assert dv.mailbox()[mid(2)] == {"\\Flagged"}


def test_account_restart_during_slow_hooks_processes_each_message_once(daemon, dovecot):
    """A SIGHUP that changes an account while its hooks are busy (each takes tens of ms, a
    batch far longer than `shutdown_grace`): the old poller's hook thread stops before its next
    message, and only then does the new poller start, so no message is hooked twice."""
    dv = dovecot()
    count = 40
    dv.seed([message(n) for n in range(1, count + 1)])
    slow = r"""
        fn fetched(ctx, msg) {
            let i = 0;
            while i < 300000 { i += 1; }
            log("processed [" + msg.message_id + "]");
        }
    """
    limits = '[scripts]\ntimeout_ms = 10000\nmax_operations = 100000000\n\n'
    d = daemon(
        scripts={"10-slow.rhai": slow},
        extra_smtp='shutdown_grace = "1s"',
        extra=limits + dv.account(poll_interval="60s", idle=False),
    )
    assert wait_for(lambda: len(processed(d)) >= 3, timeout=30), d.log()[-2000:]
    assert len(processed(d)) < count, "hooks too fast for this test: make the loop longer"
    d.config_path.write_text(d.config_path.read_text().replace('poll_interval = "60s"', 'poll_interval = "59s"'))
    d.reload()
    counts = wait_processed(d, ids(*range(1, count + 1)), timeout=180)
    assert "account removed or changed: stopping its poller" in d.log()
    twice = {m: c for m, c in counts.items() if c != 1}
    assert not twice, f"hooked more than once: {twice}"


def test_kill_9_mid_batch_processes_every_message_exactly_once(daemon, server):
    """1,000 messages (5 batches); mailflow is killed with SIGKILL in the middle of the second
    batch, then restarted. Afterwards every message has had its server action exactly once
    (each Message-ID is in exactly one folder, with the flags its rule gives), and its hook
    ran once — except the one message whose hook was running at the instant of the kill,
    which may run again (the hook is code with side effects of its own; nothing can make it
    run exactly once across a crash)."""
    dv = server()
    total = 1000
    dv.seed([message(n, subject=f"n{n}") for n in range(total)])
    script = r"""
        fn fetched(ctx, msg) {
            let n = parse_int(msg.subject.sub_string(1));
            if n % 3 == 0 { msg.flag("\\Flagged"); }
            if n % 2 == 1 { msg.file_into("Odd"); }
            log("processed [" + msg.message_id + "]");
        }
    """
    d = start(daemon, dv, {"10.rhai": script}, [dv.account()])
    assert wait_for(lambda: len(processed(d)) >= 300, timeout=60, interval=0.01)
    d.kill()
    at_kill = processed(d)
    print(f"killed after {len(at_kill)} hooks; batches committed: {d.log().count('batch done')}")
    assert d.log().count("batch done") < total // 200, "too late: the kill did not land mid-run"
    d.start()
    counts = wait_processed(d, {f"{n}@test.example" for n in range(total)}, timeout=120)
    wait_for(lambda: d.log().count("batch done") >= total // 200, timeout=10)
    time.sleep(1)
    counts = processed(d)
    twice = [m for m, c in counts.items() if c > 1]
    print(f"hooks run twice: {twice}")
    assert len(twice) <= 1 and all(counts[m] == 2 for m in twice), twice
    assert "resuming an interrupted batch from the journal" in d.log()

    inbox, odd = dv.mailbox("INBOX"), dv.mailbox("Odd")
    assert len(inbox) + len(odd) == total
    for n in range(total):
        box = odd if n % 2 else inbox
        assert mid(n) in box, n
        assert box[mid(n)] == ({"\\Flagged"} if n % 3 == 0 else set()), (n, box[mid(n)])


def test_wrong_password_on_one_account_does_not_affect_another(daemon, dovecot):
    """Dovecot only: here an IMAP and a POP3 account read the same mailbox at the same time,
    which GNU Mailutils does not survive. pop3d rewrites every message file of the Maildir as
    its session ends (an `X-UIDL:` header, a new file name), and an imap4d session that had the
    folder selected before keeps the old names: from then on it answers every `UID FETCH` with
    `RFC822.SIZE 0 BODY[] ""` and OK, even after NOOP, until it logs out (seen with imaplib
    and poplib alone, no mailflow involved). The IMAP poller then gets an empty message (no
    Message-ID) — see docs/accounts.md, "One mailbox, two readers"."""
    dv = dovecot(users={"me": "secret", "other": "pw-other"})
    dv.seed([message(1)], user="me")
    dv.seed([message(2)], user="other")
    d = start(
        daemon,
        dv,
        {"10-log.rhai": LOG_SCRIPT},
        [
            dv.account(name="bad", user="me", password="wrong"),
            dv.account(name="good", user="other"),
            dv.account(name="badpop", protocol="pop3", user="me", password="wrong"),
        ],
    )
    counts = wait_processed(d, ids(2))
    dv.append(message(3), user="other")
    counts = wait_processed(d, ids(3))
    assert "1@test.example" not in counts
    assert wait_for(lambda: re.search(r"account=bad .*IMAP connection failed", d.log()), timeout=10)
    assert wait_for(lambda: re.search(r"account=badpop .*POP3 round failed", d.log()), timeout=10)
    assert re.search(r"processed \[2@test.example\] good imap INBOX", d.log())
    assert "1@test.example" not in processed(d)

    # The password is fixed in the config; SIGHUP restarts that account alone.
    d.config_path.write_text(d.config_path.read_text().replace('password = "wrong"', 'password = "secret"'))
    d.reload()
    counts = wait_processed(d, ids(1), timeout=20)
    time.sleep(1.5)
    counts = processed(d)
    # Both the IMAP and the POP3 account see message 1: two hook runs, one per account.
    assert counts["1@test.example"] == 2 and counts["2@test.example"] == 1, counts
    assert re.search(r"processed \[1@test.example\] badpop pop3 INBOX", d.log())


def test_missing_folder_is_retried_with_backoff(daemon, dovecot):
    dv = dovecot()
    d = start(daemon, dv, {"10-log.rhai": LOG_SCRIPT}, [dv.account(name="typo", mailbox="Nope")])
    time.sleep(6)
    failures = d.log().count("IMAP connection failed")
    assert 2 <= failures <= 4, d.log()  # 1 s, 2 s, 4 s...: not one login per second
    dv.append(message(1), mailbox="Nope")
    wait_processed(d, ids(1), timeout=20)


def test_pollers_reconnect_after_dovecot_restart(daemon, server):
    dv = server(users={"me": "secret", "popper": "pw"})
    d = start(
        daemon,
        dv,
        {"10-log.rhai": LOG_SCRIPT},
        [dv.account(name="im"), dv.account(name="po", protocol="pop3", user="popper")],
    )
    dv.append(message(1))
    dv.seed([message(2)], user="popper")
    wait_processed(d, ids(1, 2))
    dv.restart()
    t0 = time.time()
    dv.append(message(3))
    dv.seed([message(4)], user="popper")
    wait_processed(d, ids(3, 4), timeout=30)
    print(f"after a Dovecot restart, new mail processed in {time.time() - t0:.1f} s")
    assert "IMAP connection failed; reconnecting" in d.log()
    assert d.log().count("IMAP session open") >= 2
    assert set(processed(d).values()) == {1}


def test_password_command(daemon, dovecot):
    dv = dovecot()
    dv.seed([message(1)])
    account = dv.account().replace('password = "secret"', "password_command = \"printf 'secret\\\\nignored'\"")
    d = start(daemon, dv, {"10-log.rhai": LOG_SCRIPT}, [account])
    wait_processed(d, ids(1))


# --- POP3 ------------------------------------------------------------------------------------


POP_SCRIPT = """
fn fetched(ctx, msg) {
    log("processed [" + msg.message_id + "] " + ctx.protocol + " uid=" + ctx.uid);
    if msg.subject == "remove" { msg.delete(); }
    if msg.subject == "file" { msg.file_into("Filed"); msg.flag("\\\\Flagged"); msg.set_header("X-Filed", "yes"); }
}
"""


def pop_ids(dv, user="me"):
    """Message-IDs on the POP3 server (TOP 0: headers only, nothing marked). Retried when
    mailflow's own session expunges messages under our feet."""
    for attempt in range(20):
        c = dv.pop3(user)
        try:
            out = []
            count, _ = c.stat()
            for n in range(1, count + 1):
                _, lines, _ = c.top(n, 0)
                for line in lines:
                    if line.lower().startswith(b"message-id:"):
                        out.append(line.split(b"<", 1)[1].split(b">", 1)[0].decode())
            return sorted(out)
        except poplib.error_proto:
            time.sleep(0.1)
        finally:
            try:
                c.quit()
            except (poplib.error_proto, OSError):
                pass
    raise AssertionError("POP3 listing kept changing")


def test_pop3_without_delete_after_fetch(daemon, server):
    dv = server()
    dv.seed([message(1), message(2, subject="remove"), message(3)])
    d = start(daemon, dv, {"10.rhai": POP_SCRIPT}, [dv.account(protocol="pop3")])
    wait_processed(d, ids(1, 2, 3))
    wait_for(lambda: pop_ids(dv) == ["1@test.example", "3@test.example"], timeout=5)
    # Kept on the server (msg.delete() removed only its own message) and not processed again.
    assert pop_ids(dv) == ["1@test.example", "3@test.example"]
    time.sleep(2.5)  # a few more rounds
    dv.seed([message(4)])
    counts = wait_processed(d, ids(4))
    time.sleep(1.5)
    assert processed(d) == counts and set(counts.values()) == {1}, counts
    assert pop_ids(dv) == ["1@test.example", "3@test.example", "4@test.example"]
    assert re.search(r"processed \[1@test.example\] pop3 uid=\S+", d.log())
    # Restarted, it still knows what it has seen.
    d.stop()
    d.start()
    dv.seed([message(5)])
    wait_processed(d, ids(5))
    time.sleep(1)
    assert set(processed(d).values()) == {1}


def test_pop3_delete_after_fetch_with_local_copy(daemon, server):
    dv = server()
    dv.seed([message(1), message(2, subject="file"), message(3)])
    d = start(
        daemon, dv, {"10.rhai": POP_SCRIPT}, [dv.account(protocol="pop3", delete_after_fetch=True, deliver="data/fetched")]
    )
    wait_processed(d, ids(1, 2, 3))
    assert wait_for(lambda: pop_ids(dv) == [], timeout=5), pop_ids(dv)
    local = d.root / "data" / "fetched"
    inbox = maildir_files(local)
    filed = maildir_files(local, "Filed")
    assert len(inbox) == 2 and len(filed) == 1, (inbox, filed)
    assert filed[0].parent.name == "cur" and filed[0].name.endswith(":2,F")
    assert b"Message-ID: <2@test.example>" in filed[0].read_bytes()
    assert b"X-Filed: yes" in filed[0].read_bytes()  # header edits shape the local copy
    assert not list((local / "tmp").iterdir())
    dv.seed([message(4)])
    wait_processed(d, ids(4))
    assert wait_for(lambda: pop_ids(dv) == [], timeout=5)
    time.sleep(1.5)
    assert len(maildir_files(local)) == 3
    assert set(processed(d).values()) == {1}


def test_pop3_dot_stuffing_and_long_lines_survive_intact(daemon, dovecot):
    dv = dovecot()
    long_line = "x" * 20000
    body = f".leading dot\n..two dots\n.\nend\n{long_line}\nlast line\n"
    dv.seed([message(1, body=body)])
    d = start(daemon, dv, {"10-log.rhai": LOG_SCRIPT}, [dv.account(protocol="pop3", deliver="data/fetched")])
    wait_processed(d, ids(1))
    (copy,) = wait_for(lambda: maildir_files(d.root / "data" / "fetched"), timeout=5)
    text = copy.read_bytes().replace(b"\r\n", b"\n").decode()
    assert text == message(1, body=body), text[:500]


def test_pop3_kill_9_mid_round_leaves_one_local_copy_each(daemon, server):
    dv = server()
    total = 300
    dv.seed([message(n) for n in range(total)])
    d = start(
        daemon,
        dv,
        {"10-log.rhai": LOG_SCRIPT},
        [dv.account(protocol="pop3", delete_after_fetch=True, deliver="data/fetched")],
    )
    assert wait_for(lambda: len(processed(d)) >= 100, timeout=60, interval=0.01)
    d.kill()
    print(f"killed after {len(processed(d))} hooks")
    assert len(processed(d)) < total
    # pop3d rewrites the Maildir as the killed poller's session ends; a listing made meanwhile
    # may miss a message (the server's doing, not a deletion): list once it is done.
    dv.settle()
    assert len(pop_ids(dv)) == total  # no QUIT, so no deletion, before the round's commit
    d.start()
    wait_processed(d, {f"{n}@test.example" for n in range(total)}, timeout=120)
    assert wait_for(lambda: pop_ids(dv) == [], timeout=10)
    files = maildir_files(d.root / "data" / "fetched")
    found = Counter(re.search(rb"Message-ID: <([^>]*)>", f.read_bytes()).group(1).decode() for f in files)
    assert found == Counter({f"{n}@test.example": 1 for n in range(total)})
    counts = processed(d)
    assert sum(c - 1 for c in counts.values()) <= 1, [m for m, c in counts.items() if c > 1]


# --- the examples, in the daemon -------------------------------------------------------------


def example_daemon(daemon, dv, name):
    """The example's scripts and its `[[accounts]]` entry, pointed at our Dovecot."""
    example = REPO / "examples" / name
    (account,) = tomllib.loads((example / "mailflow.toml").read_text())["accounts"]
    keep = {k: v for k, v in account.items() if k not in
            ("name", "protocol", "host", "port", "tls", "username", "password", "password_command")}
    keep["poll_interval"] = "1s"
    d = daemon(start=False, extra=dv.account(name=account["name"], protocol=account["protocol"], **keep))
    shutil.rmtree(d.scripts_dir)
    shutil.copytree(example / "scripts", d.scripts_dir)
    return example, account, d.start()


def test_imap_sorter_example_against_dovecot(daemon, dovecot):
    dv = dovecot()
    example, _, d = example_daemon(daemon, dv, "imap-sorter")
    wait_for(lambda: "IMAP session open" in d.log())
    for eml in sorted((example / "mail").glob("*.eml")):
        dv.append(eml.read_bytes())
    expected = {
        "Lists.rust-users": {"<crab-77@crab.example>": set()},
        "Shopping": {"<order-4711@shop.example>": set()},
        "INBOX": {
            "<slides-1@work.example>": {"\\Flagged"},
            "<build-1234@ci.example>": {"\\Seen"},
            "<lunch-9@family.example>": set(),
        },
    }
    assert wait_for(lambda: all(dv.mailbox(box) == want for box, want in expected.items()), timeout=10), (
        {box: dv.mailbox(box) for box in expected}, d.log()[-2000:])


def test_pop3_download_example_against_dovecot(daemon, dovecot):
    dv = dovecot()
    dv.seed([eml.read_bytes() for eml in sorted((REPO / "examples" / "pop3-download" / "mail").glob("*.eml"))])
    _, account, d = example_daemon(daemon, dv, "pop3-download")
    assert account["delete_after_fetch"] is True
    assert wait_for(lambda: "POP3 round done" in d.log(), timeout=10), d.log()
    assert wait_for(lambda: pop_ids(dv) == [], timeout=5)
    local = d.root / "data" / "mail" / account["name"]

    def ids_in(folder=None):
        return {re.search(rb"Message-ID: (<[^>]*>)", f.read_bytes()).group(1).decode(): f
                for f in maildir_files(local, folder)}

    assert set(ids_in()) == {"<hike-5@friends.example>"}
    assert set(ids_in("Lists/debian-user")) == {"<upgrade-3@people.example>"}
    receipts = ids_in("Receipts")
    assert set(receipts) == {"<receipt-2026-11@power.example>"}
    assert receipts["<receipt-2026-11@power.example>"].name.endswith(":2,F")
    assert "dropped spam from winner@prize.example" in d.log()  # discarded: no copy anywhere
    assert not any(b"win-1@prize.example" in f.read_bytes() for f in local.rglob("*") if f.is_file())


# --- 10,000 messages ---------------------------------------------------------------------------


FILLER = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud.\n"
) * 45


def bulk_message(i):
    kind = i % 10
    headers = [f"Message-ID: <bulk-{i}@gen.example>", "To: me@example.org", "Date: Mon, 23 Nov 2026 10:00:00 +0000"]
    if kind < 3:
        headers += [
            "From: Someone <someone@elsewhere.example>",
            f"Subject: [rust] list post {i}",
            "List-Id: Rust users <rust-users.lists.example.net>",
        ]
    elif kind < 5:
        headers += ["From: Shop <orders@shop.example>", f"Subject: your order {i}"]
    elif kind == 5:
        headers += ["From: Boss <boss@work.example>", f"Subject: URGENT: thing {i}"]
    else:
        headers += ["From: Friend <friend@home.example>", f"Subject: hello {i}"]
    return "\n".join(headers) + "\n\n" + FILLER


BULK_RULES = r"""
// Three rules, as in the benchmark notes: List-Id -> folder, sender domain -> folder,
// subject -> flag.
fn fetched(ctx, msg) {
    if msg.header("List-Id").contains("<rust-users.lists.example.net>") {
        msg.file_into("Lists/rust");
        return;
    }
    if ctx.sender.ends_with("@shop.example") {
        msg.file_into("Shop");
        return;
    }
    if msg.subject.starts_with("URGENT") {
        msg.flag("\\Flagged");
    }
}
"""


def test_ten_thousand_messages_filtered_end_to_end(daemon, dovecot, capsys):
    total = 10_000
    dv = dovecot()
    t0 = time.time()
    dv.seed(bulk_message(i) for i in range(total))
    size = sum(p.stat().st_size for p in (dv.maildir() / "new").iterdir())
    print(f"seeded {total} messages ({size / 2**20:.1f} MiB) in {time.time() - t0:.1f} s")
    d = start(daemon, dv, {"10-rules.rhai": BULK_RULES}, [dv.account()], )

    def done():
        return sum(int(n) for n in re.findall(r"batch done processed=(\d+)", d.log()))

    t0 = time.time()
    assert wait_for(lambda: done() >= total, timeout=240, interval=0.1), done()
    elapsed = time.time() - t0
    fields = open(f"/proc/{d.proc.pid}/stat").read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    with capsys.disabled():  # a benchmark figure: shown even without -s
        print(f"\n[bench] 10,000-message IMAP mailbox filtered end to end: {elapsed:.1f} s "
              f"({total / elapsed:.0f} msg/s; mailflow CPU {cpu:.1f} s = {cpu * 1000 / total:.2f} ms/msg; "
              f"{'release' if 'release' in str(BIN) else 'debug'} build)")
    assert done() == total
    # A backlog this long is fetched over two connections (the second read-only).
    assert "fetch_connections=2" in d.log()
    assert dv.count("INBOX") == 5000
    assert dv.count("Lists.rust") == 3000
    assert dv.count("Shop") == 2000
    c = dv.imap()
    c.select("INBOX", readonly=True)
    flagged = c.uid("SEARCH", "FLAGGED")[1][0].split()
    unseen = c.uid("SEARCH", "UNSEEN")[1][0].split()
    c.logout()
    assert len(flagged) == 1000
    assert len(unseen) == 5000  # nothing was marked seen by fetching
    assert elapsed < 180, f"{elapsed:.1f} s"
    # A restart has nothing left to do.
    d.stop()
    d.start()
    time.sleep(2)
    assert done() == total


def test_a_server_allowing_one_connection_gets_the_backlog_over_one(daemon, dovecot):
    """The second connection of a long fetch is a speed-up only: refused, the fetch goes on
    over the first."""
    total = 2500
    dv = dovecot(imap_connections=1)
    dv.seed(bulk_message(i) for i in range(total))
    d = start(daemon, dv, {"10-rules.rhai": BULK_RULES}, [dv.account()])

    def done():
        return sum(int(n) for n in re.findall(r"batch done processed=(\d+)", d.log()))

    assert wait_for(lambda: done() >= total, timeout=120, interval=0.1), done()
    assert "fetch_connections=1" in d.log() and "fetch_connections=2" not in d.log()
    d.stop()  # it holds the one connection the server allows
    assert dv.count("Lists.rust") == 750 and dv.count("Shop") == 500 and dv.count("INBOX") == 1250


def test_sigterm_during_a_large_run_stops_promptly(daemon, dovecot):
    dv = dovecot()
    dv.seed(bulk_message(i) for i in range(2000))
    d = start(daemon, dv, {"10-rules.rhai": BULK_RULES}, [dv.account()])
    assert wait_for(lambda: "batch done" in d.log(), timeout=60)
    t0 = time.time()
    assert d.stop(signal.SIGTERM) == 0
    assert time.time() - t0 < 5
    assert "did not stop in time" not in d.log()


# --- the accounts reference --------------------------------------------------------------------


def test_accounts_doc_lists_every_key_and_its_examples_compile(tmp_path):
    from test_docs import check_compiles, markdown_blocks

    doc = (REPO / "docs" / "accounts.md").read_text()
    source = (REPO / "engine" / "src" / "config" / "mod.rs").read_text()
    struct = re.search(r"pub struct AccountConfig \{(.*?)\n\}", source, re.S).group(1)
    keys = re.findall(r"pub (\w+):", struct)
    assert len(keys) >= 14
    for key in keys:
        assert f"| `{key}` |" in doc, f"docs/accounts.md does not describe `{key}`"
    blocks = markdown_blocks(doc)
    assert blocks
    for i, block in enumerate(blocks):
        check_compiles(tmp_path / str(i), block)
    # The TOML example is a valid config.
    toml_block = re.search(r"```toml\n(.*?)```", doc, re.S).group(1)
    config = tomllib.loads(toml_block)
    assert [a["protocol"] for a in config["accounts"]] == ["imap", "pop3"]
