"""One IMAP account watching several folders (`mailboxes = ["INBOX", "Junk"]`), against Dovecot
and GNU Mailutils imap4d (issue #24).

Each folder has its own poller, connection and state: every message is processed once per
folder it is found in, `ctx.mailbox` names that folder (as written in the config), and a restart
processes nothing again. A message a script moves into another watched folder is new there.
"""

import re
import time
from collections import Counter

from conftest import wait_for
from dovecot import dovecot  # noqa: F401  (fixture)
from mailutils import mailutils  # noqa: F401  (fixture)
from test_pollers import message, mid, server  # noqa: F401  (server: fixture)

SCRIPT = """
fn fetched(ctx, msg) {
    log("seen [" + msg.message_id + "] in [" + ctx.mailbox + "] uid=" + ctx.uid + " account=" + ctx.account);
    if ctx.mailbox == "INBOX" && msg.subject == "junk" { msg.file_into("Junk"); }
}
"""


def seen(d):
    """Counter of (Message-ID, folder) pairs the script logged."""
    return Counter(re.findall(r"seen \[([^\]]*)\] in \[([^\]]*)\]", d.log()))


def pairs(*items):
    return Counter({(f"{n}@test.example", box): 1 for n, box in items})


def test_several_mailboxes_each_message_once_per_folder(daemon, server):
    dv = server()
    dv.seed([message(1), message(2, subject="junk")])
    dv.seed([message(3), message(4)], folder="Junk")
    account = dv.account(mailboxes=["INBOX", "Junk"], poll_interval="1s")
    d = daemon(scripts={"10-folders.rhai": SCRIPT}, extra=account)
    # 2 is processed in INBOX, moved to Junk by the script, and is new mail there.
    want = pairs((1, "INBOX"), (2, "INBOX"), (2, "Junk"), (3, "Junk"), (4, "Junk"))
    assert wait_for(lambda: set(seen(d)) >= set(want), timeout=15), (seen(d), d.log()[-3000:])
    assert wait_for(lambda: set(dv.mailbox("Junk")) == {mid(2), mid(3), mid(4)}, timeout=5)
    time.sleep(1.5)  # another check of each folder
    assert seen(d) == want, seen(d)
    log = d.log()
    # One poller (its own session) per folder, named in its log lines.
    for box in ("INBOX", "Junk"):
        assert re.search(rf"mailbox={box}.*IMAP session open", log) or re.search(
            rf"poller\{{[^}}]*mailbox={box}[^}}]*\}}.*IMAP session open", log), log[-3000:]
    assert re.search(r"seen \[3@test.example\] in \[Junk\] uid=\d+ account=(dv|mu) ", log)

    assert d.stop() == 0
    dv.append(message(5))
    dv.append(message(6), mailbox="Junk")
    d.start()
    want += pairs((5, "INBOX"), (6, "Junk"))
    assert wait_for(lambda: set(seen(d)) >= set(want), timeout=15), (seen(d), d.log()[-3000:])
    time.sleep(1.5)
    assert seen(d) == want, seen(d)
