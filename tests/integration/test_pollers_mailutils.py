"""The IMAP poller against GNU Mailutils imap4d, where it differs from Dovecot (issue #24).

imap4d answers `UID SEARCH UID n:*` with an empty `* SEARCH`, never pushes new mail during
IDLE, and reports expunges as `* n EXPUNGED` (not an RFC 3501 response). Each test here names
one of those corners; the poller suite in test_pollers.py also runs against imap4d.
"""

import re
import time

from conftest import wait_for
from mailutils import mailutils  # noqa: F401  (fixture)
from test_pollers import LOG_SCRIPT, ids, message, mid, processed, wait_processed


def test_new_mail_is_found_on_imap4d(daemon, mailutils):
    mu = mailutils()
    mu.seed([message(n) for n in (1, 2, 3)])
    d = daemon(scripts={"10-log.rhai": LOG_SCRIPT}, extra=mu.account(idle=False))
    wait_processed(d, ids(1, 2, 3), timeout=10)
    mu.append(message(4))
    wait_processed(d, ids(4), timeout=10)
    assert set(processed(d).values()) == {1}
    assert "returned none" not in d.log()


def test_idle_without_push_still_checks_every_poll_interval(daemon, mailutils):
    mu = mailutils()
    d = daemon(scripts={"10-log.rhai": LOG_SCRIPT}, extra=mu.account(idle=True, poll_interval="1s"))
    assert wait_for(lambda: "idle=true" in d.log(), timeout=10), d.log()
    time.sleep(1.5)  # idling now; imap4d will not announce the message below
    t0 = time.time()
    mu.append(message(1))
    wait_processed(d, ids(1), timeout=6)
    print(f"IDLE without push: processed after {time.time() - t0:.2f} s")


EXPUNGING = r"""
fn fetched(ctx, msg) {
    log("processed [" + msg.message_id + "]");
    if msg.subject == "archive" { msg.file_into("Archive"); }
    if msg.subject == "delete" { msg.delete(); }
}
"""


def test_expunged_responses_do_not_drop_the_connection(daemon, mailutils):
    mu = mailutils()
    subjects = ["archive", "delete", "keep", "archive", "delete"]
    mu.seed([message(n, subject=s) for n, s in enumerate(subjects)])
    d = daemon(scripts={"10-sort.rhai": EXPUNGING}, extra=mu.account(idle=False, poll_interval="1s"))
    wait_processed(d, ids(*range(5)), timeout=10)
    # Without UIDPLUS and MOVE: UID COPY, \Deleted, EXPUNGE — answered with `* n EXPUNGED`.
    assert wait_for(lambda: set(mu.mailbox("INBOX")) == {mid(2)}, timeout=10), (mu.mailbox("INBOX"), d.log()[-3000:])
    assert set(mu.mailbox("Archive")) == {mid(0), mid(3)}
    # Another round of mail over the same connection, with its own expunge.
    mu.append(message(5, subject="delete"))
    wait_processed(d, ids(5), timeout=10)
    assert wait_for(lambda: set(mu.mailbox("INBOX")) == {mid(2)}, timeout=10)
    log = d.log()
    assert log.count("IMAP session open") == 1, log[-3000:]
    assert not re.search(r"ERROR|WARN", log), log[-3000:]
    assert set(processed(d).values()) == {1}
