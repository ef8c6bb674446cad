"""A private GNU Mailutils `imap4d` + `pop3d`: the second IMAP and POP3 servers of the poller
tests, beside Dovecot (see dovecot.py, whose helpers this reuses).

Each instance has its own config, password files and Maildirs in a fresh folder under /tmp,
and runs both daemons in the foreground, each in its own process group (a restart cuts every
session off, as a reboot would), on free loopback ports. Users log in as `NAME@mu.test`: the
`virtdomain` module reads `pw/mu.test` (passwd format, crypt hashes); APOP secrets are in a
GDBM file made with `popauth`. Mailutils differs from Dovecot where servers differ: no MOVE,
no UIDPLUS, no IDLE push, `* n EXPUNGED` responses, `/` as hierarchy delimiter, folders as
plain sub-directories, and an `X-UIDL:` header added to every message pop3d serves.

A missing imap4d/pop3d is a failure, never a skip: test.sh installs mailutils-imap4d and
mailutils-pop3d.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from conftest import free_port
from dovecot import Dovecot, _account, seed_maildir

IMAP4D = shutil.which("imap4d") or "/usr/sbin/imap4d"
POP3D = shutil.which("pop3d") or "/usr/sbin/pop3d"
POPAUTH = shutil.which("popauth") or "/usr/bin/popauth"
DOMAIN = "mu.test"


class Mailutils(Dovecot):
    """One private imap4d + pop3d pair. `users` maps user name → password."""

    # The deliberately different corners, for tests that check them.
    name = "mailutils"
    delimiter = "/"

    def __init__(self, users=None, imap_connections=50):  # noqa: ARG002 (same signature)
        for program in (IMAP4D, POP3D, POPAUTH):
            if not os.path.exists(program):
                pytest.fail(f"{program} is missing: run test.sh, which installs mailutils-imap4d and mailutils-pop3d")
        self.login_user, self.uid, self.gid = _account()
        self.dir = Path(tempfile.mkdtemp(prefix="mailflow-mailutils-"))
        os.chmod(self.dir, 0o755)
        self.imap_port = free_port()
        self.pop3_port = free_port()
        self.users = dict(users or {"me": "secret"})
        self.procs = []
        self.log_files = []
        self.started_once = False
        for sub in ("pw", "mail"):
            (self.dir / sub).mkdir()
        self._write_passwords()
        self._write_configs()
        for user in self.users:
            self.maildir(user)

    # --- set-up ---------------------------------------------------------------------------

    def login(self, user):
        return f"{user}@{DOMAIN}"

    def _write_passwords(self):
        lines = []
        for user, password in self.users.items():
            hashed = subprocess.run(
                ["openssl", "passwd", "-6", password], check=True, capture_output=True, text=True
            ).stdout.strip()
            lines.append(f"{user}:{hashed}:{self.uid}:{self.gid}::{self.dir}/mail/{user}:/bin/sh\n")
        (self.dir / "pw" / DOMAIN).write_text("".join(lines))
        apop = self.dir / "apop.db"
        apop.unlink(missing_ok=True)
        for user, password in self.users.items():
            subprocess.run(
                [POPAUTH, "-a", "-u", self.login(user), "-p", password, "-f", str(apop)],
                check=True, capture_output=True,
            )

    def _write_configs(self):
        common = textwrap.dedent(f"""\
            logging {{ syslog false; }};
            auth {{
              authentication clear; authentication generic;
              authorization clear; authorization virtdomain;
            }};
            virtdomain {{ passwd-dir {self.dir}/pw; }};
            mailbox {{ mailbox-type maildir; }};
            mandatory-locking {{ enable false; }};
            tcp-wrappers {{ enable false; }};
            foreground true;
            mode daemon;
            timeout 600;
            """)
        (self.dir / "imap4d.conf").write_text(common + f"server 127.0.0.1:{self.imap_port} {{ }};\n")
        (self.dir / "pop3d.conf").write_text(
            common + f"apop-database-file {self.dir}/apop.db;\nserver 127.0.0.1:{self.pop3_port} {{ }};\n"
        )

    def set_password(self, user, password):
        self.users[user] = password
        self._write_passwords()

    # --- life cycle -----------------------------------------------------------------------

    def start(self, timeout=15.0, attempts=3):
        for attempt in range(attempts):
            if self._start(timeout):
                self.started_once = True
                return self
            self.stop()
            if self.started_once or attempt == attempts - 1:
                pytest.fail(f"mailutils: ports {self.imap_port}/{self.pop3_port} are taken:\n{self.errors()}")
            self.imap_port, self.pop3_port = free_port(), free_port()
            self._write_configs()

    def _start(self, timeout):
        """True when both daemons answer; False when a port was taken meanwhile."""
        self.procs, self.log_files = [], []
        for program, conf, port in ((IMAP4D, "imap4d.conf", self.imap_port), (POP3D, "pop3d.conf", self.pop3_port)):
            log = open(self.dir / f"{Path(program).name}.log", "ab")
            self.log_files.append(log)
            proc = subprocess.Popen(
                [program, f"--config-file={self.dir / conf}", "--foreground"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
            self.procs.append(proc)
            deadline = time.time() + timeout
            while True:
                if proc.poll() is not None:
                    if "in use" in self.errors():
                        return False
                    pytest.fail(f"{program} exited with {proc.returncode}:\n{self.errors()}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                        s.settimeout(5)
                        if s.recv(200).startswith((b"* OK", b"+OK")):
                            break
                except OSError:
                    pass
                if time.time() > deadline:
                    pytest.fail(f"{program} not answering on port {port}:\n{self.errors()}")
                time.sleep(0.05)
        return True

    def stop(self, timeout=15.0):
        for proc in self.procs:
            if proc.poll() is None:
                # The daemon and the session processes it forked share its process group.
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=timeout)
        for log in self.log_files:
            log.close()
        self.procs, self.log_files = [], []
        for port in (self.imap_port, self.pop3_port):
            deadline = time.time() + timeout
            while time.time() < deadline:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        pass
                except OSError:
                    break
                time.sleep(0.05)

    def settle(self, timeout=10.0):
        """Waits until every session process of both daemons has ended. pop3d rewrites every
        message file of the Maildir as a session ends (an `X-UIDL:` header, a new file name),
        also when the client vanished without QUIT; a session that lists the Maildir meanwhile
        misses a file now and then (299 of 300 right after a poller was killed)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not any(self._sessions(proc.pid) for proc in self.procs):
                return
            time.sleep(0.05)
        pytest.fail(f"mailutils: sessions still running after {timeout} s")

    @staticmethod
    def _sessions(pgid):
        """PIDs in the daemon's process group other than the daemon (its sessions)."""
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == pgid:
                continue
            try:
                if os.getpgid(int(entry)) == pgid:
                    out.append(int(entry))
            except ProcessLookupError:
                pass
        return out

    def errors(self):
        text = ""
        for name in ("imap4d.log", "pop3d.log"):
            p = self.dir / name
            if p.exists():
                text += p.read_text(errors="replace")[-3000:]
        return text

    # --- mailflow configuration -----------------------------------------------------------

    def account(self, name="mu", protocol="imap", user="me", password=None, **keys):
        text = super().account(name=name, protocol=protocol, user=user, password=password, **keys)
        return text.replace(f'username = "{user}"', f'username = "{self.login(user)}"', 1)

    # --- mailboxes ------------------------------------------------------------------------

    def maildir(self, user="me"):
        """The user's INBOX Maildir (its folders are sibling directories)."""
        home = self.dir / "mail" / user
        root = home / "INBOX"
        for p in (home, root, root / "new", root / "cur", root / "tmp"):
            if not p.exists():
                p.mkdir()
                self._chown(p)
        return root

    def seed(self, messages, user="me", folder=None):
        root = self.maildir(user)
        base = root if folder is None else root.parent / folder
        return seed_maildir(base, messages, self._chown)

    def imap(self, user="me"):
        import imaplib

        client = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=30)
        client.login(self.login(user), self.users[user])
        return client

    def pop3(self, user="me"):
        import poplib

        client = poplib.POP3("127.0.0.1", self.pop3_port, timeout=30)
        client.user(self.login(user))
        client.pass_(self.users[user])
        return client


@pytest.fixture
def mailutils():
    """Factory: mailutils(users={"me": "secret", ...}) → a started private imap4d + pop3d,
    stopped and removed after the test."""
    made = []

    def factory(users=None, imap_connections=50):
        m = Mailutils(users, imap_connections)
        made.append(m)
        return m.start()

    yield factory
    for m in made:
        m.cleanup()
