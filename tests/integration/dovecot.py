"""A private Dovecot (IMAP + POP3) for the poller tests (issue #5).

Each `Dovecot` is its own instance: own config, `base_dir`, `state_dir`, `instance_name`, log,
passwd-file and Maildirs in a fresh folder under /tmp, listening on free loopback ports, with
plaintext LOGIN allowed and no TLS — or, given a test certificate (testca.py), STARTTLS/STLS on
the plain ports and implicit TLS on two more. It runs in the foreground (`dovecot -F`) as a child of the
test, so stopping it is a signal to a PID we own.

Run as root (CI, test.sh), the mail processes run as the unprivileged user `mfmail` (test.sh
creates it); run as an ordinary user, everything runs as that user. A missing `dovecot` or
`mfmail` is a test failure, never a skip: test.sh installs dovecot-imapd and dovecot-pop3d.

Helpers talk to the server with Python's own clients (imaplib, poplib), independent of
mailflow, so the tests check what the server really holds.
"""

import imaplib
import os
import poplib
import pwd
import re
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

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
DOVEADM = shutil.which("doveadm") or "/usr/bin/doveadm"
MAIL_USER = "mfmail"


def _account():
    """(user name, uid, gid) the mail processes run as."""
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam(MAIL_USER)
        except KeyError:
            pytest.fail(
                f"user {MAIL_USER!r} is missing: run test.sh, or "
                f"`useradd -r -M -s /usr/sbin/nologin {MAIL_USER}`"
            )
        return MAIL_USER, pw.pw_uid, pw.pw_gid
    pw = pwd.getpwuid(os.geteuid())
    return pw.pw_name, pw.pw_uid, pw.pw_gid


def seed_maildir(base, messages, chown):
    """Writes `messages` (str or bytes, LF line ends as a Maildir holds them) into `base`/new
    the way a delivery agent does (tmp/ then rename), making the folder if needed; `chown`
    gives each new path to the mail user. Returns how many were written."""
    for sub in ("", "new", "cur", "tmp"):
        p = base / sub
        if not p.exists():
            p.mkdir()
            chown(p)
    stamp = int(time.time())
    n = 0
    for i, message in enumerate(messages):
        data = message.encode() if isinstance(message, str) else message
        data = data.replace(b"\r\n", b"\n")
        name = f"{stamp}.M{i}P{os.getpid()}R{os.urandom(4).hex()}.seed"
        tmp = base / "tmp" / name
        tmp.write_bytes(data)
        chown(tmp)
        os.rename(tmp, base / "new" / name)
        n += 1
    return n


class PortTaken(Exception):
    pass


class Dovecot:
    """One private Dovecot instance. `users` maps user name → password."""

    def __init__(
        self, users=None, imap_connections=50, oauth2_url=None, submission_relay=None, cert=None, apop=False, lmtp=False
    ):
        if not os.path.exists(DOVECOT):
            pytest.fail("dovecot is missing: run test.sh, which installs dovecot-imapd and dovecot-pop3d")
        self.login_user, self.uid, self.gid = _account()
        # Not under pytest's tmp_path: that is private to the test runner (0700), and the mail
        # processes run as another user.
        self.dir = Path(tempfile.mkdtemp(prefix="mailflow-dovecot-"))
        os.chmod(self.dir, 0o755)
        self.imap_port = free_port()
        self.pop3_port = free_port()
        # With `cert` (testca.Cert): STARTTLS/STLS on the plain ports, implicit TLS on these.
        self.cert = cert
        self.imaps_port = free_port() if cert else 0
        self.pop3s_port = free_port() if cert else 0
        # APOP needs the plaintext password in the passdb (it is, `{PLAIN}`) and the mechanism.
        self.apop = apop
        self.users = dict(users or {"me": "secret"})
        self.imap_connections = imap_connections
        # OAuth2 token introspection endpoint (RFC 7662) for XOAUTH2/OAUTHBEARER logins.
        self.oauth2_url = oauth2_url
        # The port of an SMTP server that a submission service (dovecot-submissiond) relays
        # to; None: no submission service.
        self.submission_relay = submission_relay
        self.submission_port = free_port() if submission_relay else None
        # With `lmtp`: an LMTP service on a Unix socket (`lmtp_socket`) and on a loopback port
        # (`lmtp_port`), filing `user+Folder` into Folder (lmtp_save_to_detail_mailbox).
        self.lmtp = lmtp
        self.lmtp_port = free_port() if lmtp else None
        self.instance = f"mfdv-{self.dir.name}"
        self.config_path = self.dir / "dovecot.conf"
        self.log_path = self.dir / "dovecot.log"
        self.proc = None
        self.started_once = False
        for sub in ("run", "state", "mail"):
            (self.dir / sub).mkdir()
        self._chown(self.dir / "mail")
        self._write_passwd()
        self._write_oauth2()
        self._write_config()
        for user in self.users:
            self.maildir(user)

    # --- set-up ---------------------------------------------------------------------------

    def _chown(self, path):
        if os.geteuid() == 0:
            os.chown(path, self.uid, self.gid)

    def _write_passwd(self):
        lines = [
            f"{user}:{{PLAIN}}{password}:{self.uid}:{self.gid}::{self.dir}/mail/{user}\n"
            for user, password in self.users.items()
        ]
        path = self.dir / "passwd"
        path.write_text("".join(lines))
        os.chmod(path, 0o644)

    def _write_oauth2(self):
        if not self.oauth2_url:
            return
        path = self.dir / "oauth2.conf"
        path.write_text(textwrap.dedent(f"""\
            introspection_mode = post
            introspection_url = {self.oauth2_url}
            username_attribute = username
            active_attribute = active
            active_value = true
            """))
        os.chmod(path, 0o644)

    def _oauth2_passdb(self):
        if not self.oauth2_url:
            return ""
        return f"passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {self.dir}/oauth2.conf\n}}\n"

    def _write_config(self):
        d = self.dir
        ssl = "yes" if self.cert else "no"
        mechanisms = "plain login" + (" apop" if self.apop else "") + (" xoauth2 oauthbearer" if self.oauth2_url else "")
        protocols = "imap pop3" + (" submission" if self.submission_relay else "") + (" lmtp" if self.lmtp else "")
        self.config_path.write_text(textwrap.dedent(f"""\
            base_dir = {d}/run
            state_dir = {d}/state
            instance_name = {self.instance}
            protocols = {protocols}
            listen = 127.0.0.1
            ssl = {ssl}
            disable_plaintext_auth = no
            auth_mechanisms = {mechanisms}
            auth_verbose = yes
            mail_location = maildir:~/Maildir
            first_valid_uid = 1
            log_path = {self.log_path}
            default_login_user = {self.login_user}
            default_internal_user = {self.login_user}
            default_internal_group = {self.login_user}
            pop3_uidl_format = %08Xu%08Xv
            passdb {{
              driver = passwd-file
              args = scheme=PLAIN {d}/passwd
            }}
            {{oauth2_passdb}}
            userdb {{
              driver = static
              args = uid={self.uid} gid={self.gid} home={d}/mail/%u
            }}
            service imap-login {{
              chroot =
              inet_listener imap {{
                address = 127.0.0.1
                port = {self.imap_port}
              }}
              inet_listener imaps {{
                address = 127.0.0.1
                port = {self.imaps_port}
              }}
            }}
            service pop3-login {{
              chroot =
              inet_listener pop3 {{
                address = 127.0.0.1
                port = {self.pop3_port}
              }}
              inet_listener pop3s {{
                address = 127.0.0.1
                port = {self.pop3s_port}
              }}
            }}
            service anvil {{
              chroot =
            }}
            protocol imap {{
              mail_max_userip_connections = {self.imap_connections}
            }}
            protocol pop3 {{
              mail_max_userip_connections = 50
            }}
            """).replace("{oauth2_passdb}", self._oauth2_passdb())
            + self._submission()
            + self._lmtp()
            + (f"ssl_cert = <{self.cert.cert}\nssl_key = <{self.cert.key}\n" if self.cert else ""))

    def _submission(self):
        if not self.submission_relay:
            return ""
        return textwrap.dedent(f"""\
            hostname = submission.test.example
            submission_relay_host = 127.0.0.1
            submission_relay_port = {self.submission_relay}
            submission_relay_trusted = yes
            service submission-login {{
              chroot =
              inet_listener submission {{
                address = 127.0.0.1
                port = {self.submission_port}
              }}
            }}
            """)

    @property
    def lmtp_socket(self):
        return self.dir / "run" / "lmtp-mf"

    def _lmtp(self):
        if not self.lmtp:
            return ""
        # The passdb/userdb know users by bare name: the domain of the recipient is dropped.
        return textwrap.dedent(f"""\
            recipient_delimiter = +
            lmtp_save_to_detail_mailbox = yes
            lda_mailbox_autocreate = yes
            lda_mailbox_autosubscribe = yes
            service lmtp {{
              unix_listener {self.lmtp_socket} {{
                mode = 0666
              }}
              inet_listener lmtp {{
                address = 127.0.0.1
                port = {self.lmtp_port}
              }}
            }}
            protocol lmtp {{
              auth_username_format = %Ln
            }}
            """)

    def set_password(self, user, password):
        """Changes a password (the passwd-file is re-read on the next login)."""
        self.users[user] = password
        self._write_passwd()

    # --- life cycle -----------------------------------------------------------------------

    def start(self, timeout=15.0, attempts=3):
        """Starts the instance; when a free port was taken meanwhile (other test runs share the
        machine), the first start picks new ports and tries again."""
        for attempt in range(attempts):
            try:
                return self._start(timeout)
            except PortTaken:
                if self.proc is not None and self.proc.poll() is None:
                    self.stop()
                if attempt == attempts - 1 or self.started_once:
                    pytest.fail(f"dovecot: ports {self.imap_port}/{self.pop3_port} are taken:\n{self.errors()}")
                self.imap_port, self.pop3_port = free_port(), free_port()
                if self.submission_port:
                    self.submission_port = free_port()
                if self.lmtp_port:
                    self.lmtp_port = free_port()
                if self.cert:
                    self.imaps_port, self.pop3s_port = free_port(), free_port()
                self._write_config()

    def _start(self, timeout):
        self.log_file = open(self.dir / "dovecot.stderr", "ab")
        self.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.config_path)], stdout=self.log_file, stderr=subprocess.STDOUT
        )
        deadline = time.time() + timeout
        for port in (self.imap_port, self.pop3_port, self.submission_port, self.lmtp_port):
            while port is not None:
                if self.proc.poll() is not None:
                    self.log_file.close()
                    if "Address already in use" in self.errors():
                        raise PortTaken()
                    pytest.fail(f"dovecot exited with {self.proc.returncode}:\n{self.errors()}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                        s.settimeout(5)
                        greeting = s.recv(200)
                    if greeting.startswith((b"* OK", b"+OK", b"220 ")):
                        break
                except OSError:
                    pass
                if time.time() > deadline:
                    pytest.fail(f"dovecot not answering on port {port}:\n{self.errors()}")
                time.sleep(0.05)
        self.started_once = True
        return self

    def stop(self, timeout=15.0):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log_file.close()
        # Dovecot 2.3's master leaves running mail processes (an IMAP session in IDLE, say)
        # behind when it stops: a restart must cut every client off, as a reboot would. They
        # are ours: their title carries this instance's unique name.
        marker = f"dovecot-{self.instance}/".encode()
        deadline = time.time() + timeout
        while time.time() < deadline:
            pids = self._instance_pids(marker)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        # The master is gone; wait until the ports are really free for a restart.
        for port in (self.imap_port, self.pop3_port, self.imaps_port, self.pop3s_port, self.lmtp_port):
            if not port:
                continue
            deadline = time.time() + timeout
            while time.time() < deadline:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        pass
                except OSError:
                    break
                time.sleep(0.05)

    def settle(self):
        """Dovecot never rewrites a message file as a session ends: nothing to wait for (see
        mailutils.py)."""

    @staticmethod
    def _instance_pids(marker):
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read().startswith(marker):
                        pids.append(int(entry))
            except OSError:
                pass
        return pids

    def restart(self):
        self.stop()
        return self.start()

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def errors(self):
        text = ""
        for name in ("dovecot.stderr", "dovecot.log"):
            p = self.dir / name
            if p.exists():
                text += p.read_text(errors="replace")[-3000:]
        return text

    # --- mailflow configuration -----------------------------------------------------------

    def account(self, name="dv", protocol="imap", user="me", password=None, tls="none", **keys):
        """An `[[accounts]]` table for mailflow.toml pointing at this instance (`tls =
        "implicit"` uses the imaps/pop3s port)."""
        if tls == "implicit":
            port = self.imaps_port if protocol == "imap" else self.pop3s_port
        else:
            port = self.imap_port if protocol == "imap" else self.pop3_port
        password = self.users[user] if password is None else password
        lines = [
            "[[accounts]]",
            f'name = "{name}"',
            f'protocol = "{protocol}"',
            'host = "127.0.0.1"',
            f"port = {port}",
            f'tls = "{tls}"',
            f'username = "{user}"',
            f'password = "{password}"',
        ]
        keys.setdefault("poll_interval", "1s")
        for key, value in keys.items():
            if isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            elif isinstance(value, (list, tuple)):
                lines.append(f"{key} = [{', '.join(repr_toml(v) for v in value)}]")
            else:
                lines.append(f"{key} = {repr_toml(value)}")
        return "\n".join(lines) + "\n\n"

    # --- mailboxes ------------------------------------------------------------------------

    def maildir(self, user="me"):
        """The user's Maildir root (created, owned by the mail user)."""
        home = self.dir / "mail" / user
        root = home / "Maildir"
        for p in (home, root, root / "new", root / "cur", root / "tmp"):
            if not p.exists():
                p.mkdir()
                self._chown(p)
        return root

    def seed(self, messages, user="me", folder=None):
        """Writes messages (str or bytes) straight into the Maildir's new/ (as a delivery agent
        would); Dovecot indexes them at the next SELECT/STAT. Returns how many were written."""
        root = self.maildir(user)
        base = root if folder is None else root / ("." + folder.replace("/", "."))
        return seed_maildir(base, messages, self._chown)

    def imap(self, user="me"):
        """A logged-in imaplib client."""
        client = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=30)
        client.login(user, self.users[user])
        return client

    def pop3(self, user="me"):
        client = poplib.POP3("127.0.0.1", self.pop3_port, timeout=30)
        client.user(user)
        client.pass_(self.users[user])
        return client

    def append(self, message, user="me", mailbox="INBOX", flags=""):
        data = message.encode() if isinstance(message, str) else message
        data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        c = self.imap(user)
        try:
            if mailbox.upper() != "INBOX":
                c.create(quote(mailbox))
            typ, resp = c.append(quote(mailbox), flags or None, None, data)
            assert typ == "OK", resp
        finally:
            c.logout()

    def mailbox(self, mailbox="INBOX", user="me"):
        """{Message-ID: set of flags} of a mailbox, read with imaplib (no side effects: the
        headers are fetched with BODY.PEEK). {} when the mailbox does not exist."""
        c = self.imap(user)
        try:
            typ, _ = c.select(quote(mailbox), readonly=True)
            if typ != "OK":
                return {}
            out = {}
            typ, data = c.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
            for item in data:
                if not isinstance(item, tuple):
                    continue
                meta, header = item
                flags = set(re.search(rb"FLAGS \(([^)]*)\)", meta).group(1).decode().split()) - {"\\Recent"}
                m = re.search(rb"<[^>]*>", header)
                mid = m.group(0).decode() if m else ""
                assert mid not in out, f"{mid} twice in {mailbox}"
                out[mid] = flags
            return out
        finally:
            c.logout()

    def count(self, mailbox="INBOX", user="me"):
        c = self.imap(user)
        try:
            typ, data = c.status(quote(mailbox), "(MESSAGES)")
            if typ != "OK":
                return 0
            return int(re.search(rb"MESSAGES (\d+)", data[0]).group(1))
        finally:
            c.logout()

    def uidvalidity(self, mailbox="INBOX", user="me"):
        c = self.imap(user)
        try:
            typ, data = c.status(quote(mailbox), "(UIDVALIDITY)")
            return int(re.search(rb"UIDVALIDITY (\d+)", data[0]).group(1))
        finally:
            c.logout()


def repr_toml(value):
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


def quote(mailbox):
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.fixture
def dovecot():
    """Factory: dovecot(users={"me": "secret", ...}, imap_connections=50, oauth2_url=None,
    submission_relay=None, cert=None, apop=False, lmtp=False) → a started private instance, stopped
    and removed after the test. With `oauth2_url` (a token introspection endpoint) it also accepts
    XOAUTH2 and OAUTHBEARER; with `submission_relay` (an SMTP port) it also runs a submission
    service relaying there (`submission_port`); with `cert` (testca.Cert) STARTTLS/STLS on the
    plain ports and implicit TLS on two more; with `apop`, APOP; with `lmtp`, an LMTP service on
    `lmtp_socket` and `lmtp_port` that files `user+Folder@domain` into Folder."""
    made = []

    def factory(users=None, imap_connections=50, oauth2_url=None, submission_relay=None, cert=None, apop=False, lmtp=False):
        d = Dovecot(users, imap_connections, oauth2_url, submission_relay, cert=cert, apop=apop, lmtp=lmtp)
        made.append(d)
        return d.start()

    yield factory
    for d in made:
        d.cleanup()
