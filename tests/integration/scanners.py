"""Private spam scanners for the spam plugin tests (issue #28): Debian's rspamd (with a
private Redis for its Bayes statistics) and SpamAssassin's spamd.

Each instance lives in a fresh folder under /tmp with its own config, listens on free loopback
ports, and runs in a process group of its own, so stopping it signals the whole group (rspamd's
workers outlive a main process killed alone). rspamd reads the stock config from /etc/rspamd with
`LOCAL_CONFDIR` pointed at the private folder: its override.d moves the workers to our ports and
its local.d points Redis at ours, turns greylisting off (it would answer "soft reject" to a
plain first message), sends DNS to a closed port so checks fail fast instead of waiting, and
adds one rule (TEST_PRIZE_SUBJECT) that puts a known sample between the thresholds.

A missing scanner is a test failure, never a skip: test.sh installs rspamd, redis-server,
spamassassin and spamd.
"""

import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from conftest import free_port, wait_port

RSPAMD = shutil.which("rspamd") or "/usr/bin/rspamd"
REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
SPAMD = shutil.which("spamd") or "/usr/sbin/spamd"

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def message(subject, body, sender="friend@pals.example", msgid=None):
    """A well-formed message (Date, Message-ID), so a plain one scores as ham."""
    msgid = msgid or f"<{abs(hash((subject, body)))}@pals.example>"
    return (
        f"From: Friend <{sender}>\r\nTo: Me <me@example.org>\r\nSubject: {subject}\r\n"
        f"Date: Mon, 07 Dec 2026 10:00:00 +0000\r\nMessage-ID: {msgid}\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    )


def ham_message():
    return message("lunch on friday", "Hi, shall we meet for lunch on Friday at noon? The usual place.\r\nCheers")


def gtube_message():
    return message("test", f"This is the GTUBE test string.\r\n{GTUBE}\r\n")


class Group:
    """A process started in its own process group; stop() signals the group."""

    def __init__(self, argv, log):
        self.log = log
        self.proc = subprocess.Popen(argv, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def signal(self, sig):
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self):
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(5)
        # Workers may still be finishing after the main process exited.
        self.signal(signal.SIGKILL)


class Rspamd:
    """rspamd + Redis. `url` is the normal worker, `controller_url` the controller."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="mf-rspamd-"))
        self.port, self.controller_port, self.redis_port = free_port(), free_port(), free_port()
        for sub in ["local.d", "override.d", "db", "run", "log"]:
            (self.dir / sub).mkdir()
        (self.dir / "override.d" / "worker-normal.inc").write_text(
            f'bind_socket = "127.0.0.1:{self.port}";\ncount = 1;\n')
        (self.dir / "override.d" / "worker-controller.inc").write_text(
            f'bind_socket = "127.0.0.1:{self.controller_port}";\ncount = 1;\n')
        (self.dir / "override.d" / "worker-proxy.inc").write_text(
            f'bind_socket = "127.0.0.1:{free_port()}";\nenabled = false;\n')
        (self.dir / "local.d" / "redis.conf").write_text(f'servers = "127.0.0.1:{self.redis_port}";\n')
        (self.dir / "local.d" / "greylist.conf").write_text("enabled = false;\n")
        # One test rule: a Subject with "prize" scores 9 ("add header", below "reject"), so a
        # sample lands in Junk without the DNS lists real spam scores depend on.
        (self.dir / "prize.map").write_text("/\\bprize\\b/i\n")
        (self.dir / "local.d" / "multimap.conf").write_text(
            'TEST_PRIZE_SUBJECT { type = "header"; header = "Subject"; regexp = true; '
            f'map = "{self.dir}/prize.map"; score = 9.0; }}\n')
        (self.dir / "local.d" / "options.inc").write_text(
            'dns { nameserver = ["127.0.0.1:1"]; timeout = 0.1s; retransmits = 1; }\n')
        self.redis = Group([REDIS, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                            "--appendonly", "no", "--dir", str(self.dir / "db")], self.dir / "redis.log")
        wait_port(self.redis_port, timeout=10, proc=self.redis.proc)
        argv = [RSPAMD, "-f"]
        if os.geteuid() == 0:
            user = pwd.getpwnam("_rspamd")
            for path in [self.dir, *self.dir.rglob("*")]:
                os.chown(path, user.pw_uid, user.pw_gid)
            argv += ["-u", "_rspamd", "-g", "_rspamd"]
        for var, value in [("LOCAL_CONFDIR", self.dir), ("DBDIR", self.dir / "db"),
                           ("RUNDIR", self.dir / "run"), ("LOGDIR", self.dir / "log")]:
            argv += ["--var", f"{var}={value}"]
        self.main = Group(argv, self.dir / "rspamd.out")
        try:
            # Loading the stock config (TLD lists, regexps) takes a while on a busy machine.
            wait_port(self.port, timeout=90, proc=self.main.proc)
            wait_port(self.controller_port, timeout=30, proc=self.main.proc)
        except Exception:
            self.stop()
            raise

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def controller_url(self):
        return f"http://127.0.0.1:{self.controller_port}"

    def stat(self):
        with urllib.request.urlopen(self.controller_url + "/stat", timeout=10) as r:
            return json.load(r)

    def pause(self):
        """Stops every rspamd process (connections are still accepted by the kernel)."""
        self.main.signal(signal.SIGSTOP)

    def resume(self):
        self.main.signal(signal.SIGCONT)

    def stop(self):
        self.main.stop()
        self.redis.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Spamd:
    """SpamAssassin's spamd, local tests only (no network rules), on TCP and a Unix socket."""

    def __init__(self, unix=False):
        self.dir = Path(tempfile.mkdtemp(prefix="mf-spamd-"))
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        self.socket = self.dir / "spamd.sock"
        argv = [SPAMD, "--local", "--max-children=2", "--min-children=1", f"--pidfile={self.dir}/spamd.pid",
                "--syslog=stderr", f"--listen=127.0.0.1:{self.port}"]
        if unix:
            argv += [f"--listen={self.socket}", "--socketmode=0666"]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]
        self.main = Group(argv, self.dir / "spamd.log")
        try:
            wait_port(self.port, timeout=60, proc=self.main.proc)
            if unix:
                deadline = time.time() + 20
                while not self.socket.exists() and time.time() < deadline:
                    time.sleep(0.05)
        except Exception:
            self.stop()
            raise

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def pause(self):
        self.main.signal(signal.SIGSTOP)

    def resume(self):
        self.main.signal(signal.SIGCONT)

    def stop(self):
        self.main.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
