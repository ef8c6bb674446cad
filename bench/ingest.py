#!/usr/bin/env python3
"""Ingest measurement driver (called by bench/ingest.sh; see bench/README.md).

Starts, side by side on loopback ports:
  smtp-sink  Postfix's test server: answers SMTP, stores nothing (the protocol ceiling)
  durable-sink  the durability floor (bench/loadclient/src/bin/durable-sink.rs): fixed replies,
             no parsing, no scripts, no log; a group-committed spool slot flushed before the
             250, then a group-committed Maildir — the least any server that keeps the promise does
  postfix    a private Postfix instance (own config, queue and data folders) that delivers
             every message for bench.test into one Maildir; it fsyncs its queue file before 250
  haraka     Haraka 3.3.4, one process, queue/discard: answers 250, stores nothing
  haraka-maildir  the same with bench/haraka/bench_maildir.js: fsynced Maildir file before 250
  mailflow   `mailflow run` with an empty scripts folder: durable spool before 250, then Maildir

then drives each with `smtp-source -s SESSIONS -m COUNT -l 4096` (one connection per message),
interleaving servers so that background load on the machine hits all of them alike. For each
run: msgs/s = COUNT / wall seconds of smtp-source; the seconds until all COUNT messages are in
the Maildir; the server's CPU time per message (measured after delivery finished, so it
includes delivery); its memory (RSS and PSS, sampled; for Postfix summed over all its processes).

Only loopback addresses are used; every run is bounded by COUNT and a timeout; every server
started here is stopped by PID and the temp folder is removed, also on Ctrl-C or SIGTERM.
"""

import argparse
import json
import os
import platform
import pwd
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HOST = "127.0.0.1"
SENDER = "sender@bench.test"
RCPT = "rcpt@bench.test"
MSG_LEN = 4096
MAX_COUNT = 20000
CLK_TCK = os.sysconf("SC_CLK_TCK")
SAMPLE_EVERY = 0.2  # seconds between memory samples


def log(*args):
    print("bench:", *args, file=sys.stderr, flush=True)


def env_int(name, default, lo, hi):
    raw = os.environ.get(name, "")
    value = int(raw) if raw.strip() else default
    if not lo <= value <= hi:
        sys.exit(f"bench: {name}={value} is out of range [{lo}, {hi}]")
    return value


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(port, timeout, alive=lambda: True):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            return False
        try:
            with socket.create_connection((HOST, port), timeout=1) as s:
                s.settimeout(2)
                banner = s.recv(512)
                s.sendall(b"QUIT\r\n")
                if banner.startswith(b"220"):
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def proc_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def proc_stat(pid):
    """(ppid, utime+stime, cutime+cstime) in clock ticks, or None when gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # fields[0] is field 3 (state) of proc(5): ppid=4, utime=14, stime=15, cutime=16, cstime=17
    return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def proc_mem_kb(pid):
    """(VmRSS, Pss, VmHWM) in kB; 0 for what cannot be read."""
    rss = hwm = pss = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                    break
    except OSError:
        pass
    return rss, pss, hwm


def children_of(ppid):
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st and st[0] == ppid:
                out.append(int(name))
    return out


def count_files(path):
    try:
        return sum(1 for e in os.scandir(path) if e.is_file())
    except FileNotFoundError:
        return 0


# Where delivered files go between runs instead of being deleted (see empty_dir).
TRASH = {"dir": None}


def empty_dir(path):
    """Empties a Maildir folder between runs by renaming it into the trash and making a new
    empty one, instead of deleting its files: ext4 skips inodes freed in the last 60-300 s
    when it allocates new ones (`recently_deleted`), so deleting 5,000 files made the next
    run pay for them (perf: ~40 % of the server's system CPU in `recently_deleted`, and
    throughput halved for whichever server ran next). The trash is deleted at the very end
    (by bench/run when it sets BENCH_TRASH, else when this script exits)."""
    if not os.path.isdir(path) or not any(os.scandir(path)):
        return
    trash = TRASH["dir"]
    os.makedirs(trash, exist_ok=True)
    st = os.stat(path)
    os.rename(path, os.path.join(trash, f"{len(os.listdir(trash)):06d}"))
    os.mkdir(path, st.st_mode & 0o7777)
    os.chown(path, st.st_uid, st.st_gid)  # Postfix delivers as nobody


def spread_subdirs(path):
    """Marks `path` as the top of a directory hierarchy (ext4 `chattr +T`): the folders made
    directly in it go to block groups of their own, as /var/spool and /home do on a real
    system. Without it every server's files shared the bench root's block group, and the
    20,000 queue files Postfix deletes per run made the next server's file creations scan past
    them (ext4 `recently_deleted`): mailflow's CPU per message at 1 session 0.48 → 0.69-0.89 ms
    right after 20,000 deletions next door, unchanged with the flag (findings, eighth pass).
    Best effort: other filesystems have no such flag."""
    try:
        r = subprocess.run(["chattr", "+T", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return False
    return r.returncode == 0


def stop_pid(pid, name, grace=15.0):
    if not proc_alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and proc_alive(pid):
        time.sleep(0.05)
    if proc_alive(pid):
        log(f"{name} (pid {pid}) did not stop on SIGTERM in {grace:.0f}s: SIGKILL")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Server:
    name = "?"
    maildir_new = None  # folder whose file count is the number of delivered messages
    no_store_note = "n/a (stores nothing)"  # the report's Maildir columns when maildir_new is None

    def __init__(self, root):
        self.dir = os.path.join(root, self.name)
        os.makedirs(self.dir)
        spread_subdirs(self.dir)  # its queue or spool apart from its Maildir, as in production
        self.port = free_port()
        self.proc = None
        self.logfile = None

    def pids(self):
        return [self.proc.pid] if self.proc and proc_alive(self.proc.pid) else []

    def cpu_ticks(self):
        """CPU used so far by the server, children that have exited included."""
        st = proc_stat(self.proc.pid) if self.proc else None
        return (st[1] + st[2]) if st else 0

    def delivered(self):
        return count_files(self.maildir_new) if self.maildir_new else None

    def clear(self):
        if self.maildir_new:
            empty_dir(self.maildir_new)

    def popen(self, argv, **kw):
        self.logfile = open(os.path.join(self.dir, "server.log"), "ab")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.logfile,
                                     stderr=subprocess.STDOUT, start_new_session=True, **kw)

    def wait_ready(self):
        if not wait_port(self.port, 30, lambda: self.proc is None or self.proc.poll() is None):
            raise RuntimeError(f"{self.name} did not answer on {HOST}:{self.port}; log:\n{self.log_tail()}")

    def log_tail(self, n=20):
        path = os.path.join(self.dir, "server.log")
        try:
            with open(path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
        except OSError:
            return "(no log)"

    def peak_hwm_kb(self):
        return proc_mem_kb(self.proc.pid)[2] if self.proc else 0

    def stop(self):
        if self.proc:
            stop_pid(self.proc.pid, self.name)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self.logfile:
            self.logfile.close()

    def version(self):
        return ""

    def gone(self):
        """None while running, else how it ended."""
        if self.proc is None or self.proc.poll() is None:
            return None
        return f"exit status {self.proc.returncode}"

    def restart(self):
        if self.logfile:
            self.logfile.close()
        self.port = free_port()
        self.start_again()

    def start_again(self):
        self.start()


class SmtpSink(Server):
    name = "smtp-sink"

    def start(self):
        argv = ["smtp-sink"]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]
        # backlog 256; one event-driven process that answers 250 to everything and stores nothing
        self.popen(argv + [f"{HOST}:{self.port}", "256"])
        self.wait_ready()


LOADCLIENT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "loadclient")
DURABLE_SINK = os.environ.get("DURABLE_SINK_BIN") or os.path.join(
    os.environ.get("CARGO_TARGET_DIR") or os.path.join(LOADCLIENT_DIR, "target"), "release", "durable-sink")


class DurableSink(Server):
    """The durability floor: what every server that fsyncs before its 250 and delivers into
    Maildir must do at the least, and nothing else (see durable-sink.rs)."""
    name = "durable-sink"

    def __init__(self, root):
        super().__init__(root)
        self.maildir = os.path.join(self.dir, "mail")
        self.maildir_new = os.path.join(self.maildir, "new")

    def start(self):
        if not os.access(DURABLE_SINK, os.X_OK):
            raise RuntimeError(f"{DURABLE_SINK} missing: bench/loadclient did not build (see ingest.sh's output)")
        # one event loop for the sessions (as smtp-sink), a spool thread and a delivery thread
        self.popen([DURABLE_SINK, f"{HOST}:{self.port}", self.maildir])
        self.wait_ready()


DURABLE_SINK_NOTE = (
    "durable-sink: the durability floor (`bench/loadclient/src/bin/durable-sink.rs`): fixed replies on "
    "one event loop, no parsing, no scripts, no log; at the end of DATA one thread writes every waiting "
    "message over a reused, preallocated spool slot and `fdatasync`s it (mailflow's spool design), then "
    "the 250s; another writes each batch into `tmp/` of a Maildir, one `syncfs`, renames into `new/`, "
    "one fsync of `new/`. What a server that fsyncs before its 250 and delivers into Maildir must do at "
    "the least: mailflow's own work is the distance to this row.")


class Postfix(Server):
    name = "postfix"

    MASTER_CF = """\
{addr} inet n - n - - smtpd
pickup    unix  n - n 60    1 pickup
cleanup   unix  n - n -     0 cleanup
qmgr      unix  n - n 300   1 qmgr
rewrite   unix  - - n -     - trivial-rewrite
bounce    unix  - - n -     0 bounce
defer     unix  - - n -     0 bounce
trace     unix  - - n -     0 bounce
verify    unix  - - n -     1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -     - proxymap
proxywrite unix - - n -     1 proxymap
showq     unix  n - n -     - showq
error     unix  - - n -     - error
retry     unix  - - n -     - error
discard   unix  - - n -     - discard
virtual   unix  - n n -     - virtual
anvil     unix  - - n -     1 anvil
scache    unix  - - n -     1 scache
postlog   unix-dgram n - n - 1 postlogd
"""

    def __init__(self, root):
        super().__init__(root)
        self.etc = os.path.join(self.dir, "etc")
        self.mail = os.path.join(self.dir, "mail")
        self.maildir_new = os.path.join(self.mail, "inbox", "new")
        self.master_pid = None
        self.seen_children = set()

    def start(self):
        if os.geteuid() != 0:
            raise RuntimeError("a private Postfix instance needs root (its queue belongs to user postfix)")
        nobody = pwd.getpwnam("nobody")
        pf = pwd.getpwnam("postfix")
        queue, data = os.path.join(self.dir, "queue"), os.path.join(self.dir, "data")
        for d in (self.etc, queue, data, self.mail):
            os.makedirs(d)
        os.chown(data, pf.pw_uid, pf.pw_gid)
        os.chown(self.mail, nobody.pw_uid, nobody.pw_gid)
        main_cf = f"""\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
myhostname = mx.bench.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_banner = $myhostname ESMTP
virtual_mailbox_domains = bench.test
virtual_mailbox_maps = static:inbox/
virtual_transport = virtual
virtual_mailbox_base = {self.mail}
virtual_uid_maps = static:{nobody.pw_uid}
virtual_gid_maps = static:{nobody.pw_gid}
virtual_minimum_uid = 1
alias_maps =
alias_database =
local_recipient_maps =
biff = no
maillog_file_prefixes = {self.dir}
maillog_file = {self.dir}/server.log
"""
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            f.write(main_cf)
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write(self.MASTER_CF.format(addr=f"{HOST}:{self.port}"))
        for verb in ("check", "start"):
            r = subprocess.run(["postfix", "-c", self.etc, verb], stdin=subprocess.DEVNULL,
                               capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                raise RuntimeError(f"postfix {verb} failed: {r.stdout}{r.stderr}\n{self.log_tail()}")
        pidfile = os.path.join(queue, "pid", "master.pid")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.master_pid is None:
            try:
                with open(pidfile) as f:
                    self.master_pid = int(f.read().strip())
            except (OSError, ValueError):
                time.sleep(0.1)
        if self.master_pid is None:
            raise RuntimeError(f"postfix master did not write {pidfile}:\n{self.log_tail()}")
        if not wait_port(self.port, 30, lambda: proc_alive(self.master_pid)):
            raise RuntimeError(f"postfix did not answer on {HOST}:{self.port}:\n{self.log_tail()}")

    def pids(self):
        if not self.master_pid or not proc_alive(self.master_pid):
            return []
        kids = children_of(self.master_pid)
        self.seen_children.update(kids)
        return [self.master_pid] + kids

    def cpu_ticks(self):
        # live processes + what master has reaped (an exited child's whole CPU time lands in
        # master's cutime/cstime, so deltas stay right across process turnover)
        total = 0
        st = proc_stat(self.master_pid) if self.master_pid else None
        if not st:
            return 0
        total += st[1] + st[2]
        for pid in children_of(self.master_pid):
            cst = proc_stat(pid)
            if cst:
                total += cst[1]
        return total

    def peak_hwm_kb(self):
        return 0  # many processes: only the sampled sums mean something

    def gone(self):
        return None if self.master_pid and proc_alive(self.master_pid) else "master not running"

    def restart(self):
        raise RuntimeError("the Postfix instance is not restarted by this script")

    def stop(self):
        if self.master_pid:
            self.pids()
            # SIGTERM to master: it stops its children and exits (what `postfix stop` does)
            stop_pid(self.master_pid, "postfix master")
            deadline = time.monotonic() + 10
            for pid in sorted(self.seen_children):
                while time.monotonic() < deadline and self._ours(pid):
                    time.sleep(0.05)
                if self._ours(pid):
                    log(f"postfix child {pid} still running after master stopped: SIGKILL")
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

    def _ours(self, pid):
        """True if pid is alive and was started by our master (it carries our MAIL_CONFIG)."""
        if not proc_alive(pid):
            return False
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                return f"MAIL_CONFIG={self.etc}".encode() in f.read().split(b"\0")
        except OSError:
            return False

    def version(self):
        r = subprocess.run(["postconf", "-h", "-d", "mail_version"], capture_output=True, text=True)
        return r.stdout.strip()


BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
# ingest.sh installs Haraka here (`npm install --prefix bench/.haraka Haraka@3.3.4`, git-ignored)
HARAKA_PREFIX = os.path.join(BENCH_DIR, ".haraka")
HARAKA_BIN = os.environ.get("HARAKA_BIN") or os.path.join(HARAKA_PREFIX, "node_modules", ".bin", "haraka")
HARAKA_PLUGINS_SRC = os.path.join(BENCH_DIR, "haraka")  # our plugins: bench_rdns.js, bench_maildir.js


def descendants_of(pid):
    """All live descendants of pid (children, grandchildren, ...)."""
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st:
                parent[int(name)] = st[0]
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


class Haraka(Server):
    """Haraka 3.3.4 (Node.js), one process (`nodes=0`), an instance made by `haraka -i`.

    haraka          queue/discard: answers 250 after DATA and stores nothing
    haraka-maildir  bench/haraka/bench_maildir.js: write + fsync + rename + fsync of new/ into
                    one Maildir before 250 (the durability contract of Postfix and mailflow)
    Both also load bench/haraka/bench_rdns.js (answers `localhost` for 127.0.0.0/8: no DNS) and
    rcpt_to.in_host_list (config/host_list = bench.test). Log level `notice` (one line per
    SMTP step, about as much as Postfix writes; `info` adds a line per plugin hook).
    """

    def __init__(self, root, name="haraka", binary=HARAKA_BIN):
        self.name = name
        super().__init__(root)
        self.binary = binary
        self.inst = os.path.join(self.dir, "instance")
        self.maildir = os.path.join(self.dir, "maildir")
        self.maildir_new = os.path.join(self.maildir, "new") if name == "haraka-maildir" else None
        self.no_store_note = "n/a (discard)" if name == "haraka" else self.no_store_note
        self.seen = set()

    def start(self):
        if not os.access(self.binary, os.X_OK):
            hint = os.path.join(HARAKA_PREFIX, "npm-install.log")
            raise RuntimeError(f"Haraka is not installed ({self.binary} missing): bench/ingest.sh runs "
                               f"`npm install --prefix {HARAKA_PREFIX} Haraka@3.3.4`; see {hint}")
        if not os.path.isdir(self.inst):
            r = subprocess.run([self.binary, "-i", self.inst], stdin=subprocess.DEVNULL,
                               capture_output=True, text=True, timeout=60)
            if r.returncode != 0 or not os.path.isdir(os.path.join(self.inst, "config")):
                raise RuntimeError(f"`haraka -i {self.inst}` failed (rc={r.returncode}): {(r.stdout + r.stderr)[-500:]}")
        cfg = os.path.join(self.inst, "config")
        queue = "bench_maildir" if self.name == "haraka-maildir" else "queue/discard"
        files = {
            "smtp.ini": f"listen={HOST}:{self.port}\nnodes=0\n",
            # only what is needed: no DNS-using plugins (the stock list has mail_from.is_resolvable)
            "plugins": f"bench_rdns\nrcpt_to.in_host_list\n{queue}\n",
            "host_list": "bench.test\n",
            "me": "bench.test\n",
            "log.ini": "[main]\nlevel=notice\ntimestamps=false\nformat=default\n",
            "bench_maildir": self.maildir + "\n",
        }
        for fname, body in files.items():
            with open(os.path.join(cfg, fname), "w") as f:
                f.write(body)
        plugdir = os.path.join(self.inst, "plugins")
        os.makedirs(plugdir, exist_ok=True)
        for f in ("bench_rdns.js", "bench_maildir.js"):
            shutil.copy(os.path.join(HARAKA_PLUGINS_SRC, f), plugdir)
        env = dict(os.environ)
        if self.name == "haraka":
            env["YES_REALLY_DO_DISCARD"] = "1"  # queue/discard answers 451 without it
        self.popen([self.binary, "-c", self.inst], cwd=self.inst, env=env)
        self.wait_ready()

    def pids(self):
        if not self.proc or not proc_alive(self.proc.pid):
            return []
        kids = descendants_of(self.proc.pid)  # none with nodes=0; summed if there were workers
        self.seen.update(kids)
        return [self.proc.pid] + kids

    def cpu_ticks(self):
        total = super().cpu_ticks()  # the node process + reaped children
        for pid in self.pids()[1:]:
            st = proc_stat(pid)
            if st:
                total += st[1]
        return total

    def stop(self):
        self.pids()
        super().stop()
        for pid in sorted(self.seen):
            if proc_alive(pid):
                log(f"{self.name} child {pid} still running after the main process stopped: SIGKILL")
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def peak_hwm_kb(self):
        return 0

    def version(self):
        pkg = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(self.binary))), "package.json")
        try:
            with open(pkg) as f:
                v = json.load(f).get("version", "")
        except (OSError, ValueError):
            v = "?"
        r = subprocess.run(["node", "--version"], capture_output=True, text=True)
        return f"Haraka {v} (node {r.stdout.strip()})"


SCRIPTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts")

# mailflow variants: name -> (scripts folder under bench/scripts or None, plugins, Maildir++ folder)
MAILFLOW_VARIANTS = {
    "mailflow": (None, [], None),
    # the same binary's predecessor (MAILFLOW_OLD_BIN), for old/new rows in one run
    "mailflow-old": (None, [], None),
    "mailflow-rules": ("rules", [], "Bench"),
    "mailflow-rules-kv": ("kv", ["kv"], "Bench"),
    # the rules with decision traces off (they are on by default): what recording costs
    "mailflow-rules-notrace": ("rules", [], "Bench"),
}
# Extra config of a variant.
MAILFLOW_EXTRA = {"mailflow-rules-notrace": '[web]\ntrace_retention = "0s"\n'}
HARAKA_VARIANTS = ("haraka", "haraka-maildir")
DEFAULT_SERVERS = ["smtp-sink", "durable-sink", "postfix", *HARAKA_VARIANTS,
                   *(v for v in MAILFLOW_VARIANTS if v not in ("mailflow-old", "mailflow-rules-notrace"))]


class Mailflow(Server):
    name = "mailflow"

    def __init__(self, root, binary, name="mailflow"):
        self.name = name
        super().__init__(root)
        self.binary = binary
        self.scripts_src, self.plugins, folder = MAILFLOW_VARIANTS[name]
        box = os.path.join(self.dir, "mail", f"{RCPT}")
        self.maildir_new = os.path.join(box, f".{folder}" if folder else "", "new")

    def start(self):
        scripts = os.path.join(self.dir, "scripts")
        os.makedirs(scripts, exist_ok=True)
        if self.scripts_src:
            src = os.path.join(SCRIPTS_DIR, self.scripts_src)
            for f in sorted(os.listdir(src)):
                if f.endswith(".rhai"):
                    shutil.copy(os.path.join(src, f), scripts)
        plugins = ", ".join(f'"{p}"' for p in self.plugins)
        config = os.path.join(self.dir, "mailflow.toml")
        with open(config, "w") as f:
            f.write(f"""\
[smtp]
listen = ["{HOST}:{self.port}"]
hostname = "bench.test"
local_domains = ["bench.test"]
max_connections = 2000

[scripts]
dir = "{scripts}"

[delivery]
maildir = "{self.dir}/mail/{{local}}@{{domain}}"

[state]
dir = "{self.dir}/data/state"

[plugins]
enabled = [{plugins}]
""" + MAILFLOW_EXTRA.get(self.name, ""))
            # Receipt checks (SPF, DKIM, DMARC) have their own rows (bench/auth.py): off here,
            # so that these rows compare with older binaries, which have no [auth] section.
            if self.knows_auth_section(config):
                f.write("\n[auth]\nverify = false\n")
        self.popen([self.binary, "run", "--config", config], cwd=self.dir)
        self.wait_ready()

    def knows_auth_section(self, config):
        probe = config + ".probe"
        with open(probe, "w") as f:
            f.write(f'[scripts]\ndir = "{self.dir}/scripts"\n[auth]\nverify = false\n')
        return subprocess.run([self.binary, "check", "--config", probe], capture_output=True).returncode == 0

    def version(self):
        r = subprocess.run([self.binary, "--version"], capture_output=True, text=True)
        return r.stdout.strip()


class MemSampler(threading.Thread):
    """Peak of the summed RSS and PSS of a server's processes, sampled."""

    def __init__(self, server):
        super().__init__(daemon=True)
        self.server = server
        self.stop_event = threading.Event()
        self.peak_rss = self.peak_pss = 0
        self.max_procs = 0

    def sample(self):
        pids = self.server.pids()
        rss = pss = 0
        for pid in pids:
            r, p, _ = proc_mem_kb(pid)
            rss += r
            pss += p
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)
        self.max_procs = max(self.max_procs, len(pids))

    def run(self):
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(SAMPLE_EVERY)

    def finish(self):
        self.stop_event.set()
        self.join()
        self.sample()


def smtp_source(port, sessions, count, timeout):
    argv = ["smtp-source", "-s", str(sessions), "-m", str(count), "-l", str(MSG_LEN),
            "-f", SENDER, "-t", RCPT, f"{HOST}:{port}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=timeout)
        rc, out = r.returncode, (r.stdout + r.stderr).strip()
    except subprocess.TimeoutExpired as e:
        rc, out = "timeout", f"smtp-source killed after {timeout}s"
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return rc, out, wall, load_cpu


def measure(server, sessions, count, timeout, drain_timeout):
    server.clear()
    sampler = MemSampler(server)
    sampler.sample()
    cpu0 = server.cpu_ticks()
    sampler.start()
    t0 = time.perf_counter()
    rc, out, wall, load_cpu = smtp_source(server.port, sessions, count, timeout)
    delivered = server.delivered()
    drained = None
    if delivered is not None and not (rc != 0 and server.gone()):
        deadline = time.monotonic() + drain_timeout
        while delivered < count and time.monotonic() < deadline:
            time.sleep(0.05)
            delivered = server.delivered()
        if delivered >= count:
            drained = time.perf_counter() - t0
    sampler.finish()
    cpu = (server.cpu_ticks() - cpu0) / CLK_TCK
    return {
        "server": server.name, "sessions": sessions, "count": count,
        "rc": rc, "smtp_source_output": out[-2000:], "wall_s": wall,
        "msgs_per_s": count / wall if rc == 0 else None,
        "delivered": delivered, "all_delivered_s": drained,
        "server_cpu_ms_per_msg": cpu * 1000 / count, "load_cpu_ms_per_msg": load_cpu * 1000 / count,
        "peak_rss_kb": sampler.peak_rss, "peak_pss_kb": sampler.peak_pss, "max_procs": sampler.max_procs,
    }


def fmt_range(values, fmt="{:.0f}"):
    if not values:
        return "—"
    med = statistics.median(values)
    if len(values) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def report(results, meta, servers, notes):
    lines = ["# Ingest: smtp-source against smtp-sink, Postfix, Haraka and mailflow (with and without scripts)", ""]
    lines.append(f"{meta['count']} messages of {MSG_LEN} bytes per run, one connection per message "
                 f"(`smtp-source -s S -m {meta['count']} -l {MSG_LEN}`), {meta['repeat']} runs per row: "
                 "median (min–max). msgs/s = messages / wall seconds of smtp-source; a 250 after DATA "
                 "means durable (fsynced) for durable-sink, Postfix, haraka-maildir and mailflow, nothing for "
                 "smtp-sink and haraka (queue/discard).")
    lines.append("")
    lines.append("| server | sessions | msgs/s median (min–max) | peak RSS MB | peak PSS MB | server CPU ms/msg | all in Maildir after s | delivered |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for s in servers:
        for sessions in meta["sessions"]:
            rows = [r for r in results if r["server"] == s.name and r["sessions"] == sessions]
            if not rows:
                continue
            ok = [r for r in rows if r["msgs_per_s"] is not None]
            rate = fmt_range([r["msgs_per_s"] for r in ok])
            failed = len(rows) - len(ok)
            if failed:
                rate += f", {failed} run(s) failed"
            rss = max(r["peak_rss_kb"] for r in rows) / 1024
            pss = max(r["peak_pss_kb"] for r in rows) / 1024
            procs = max(r["max_procs"] for r in rows)
            rss_s = f"{rss:.1f}" + (f" ({procs} procs)" if procs > 1 else "")
            cpu = fmt_range([r["server_cpu_ms_per_msg"] for r in rows], "{:.2f}")
            if s.maildir_new:
                drains = [r["all_delivered_s"] for r in rows if r["all_delivered_s"] is not None]
                drain = fmt_range(drains, "{:.1f}") if drains else "—"
                dlv = "/".join(str(r["delivered"]) for r in rows)
            else:
                drain, dlv = s.no_store_note, "n/a"
            lines.append(f"| {s.name} | {sessions} | {rate} | {rss_s} | {pss:.1f} | {cpu} | {drain} | {dlv} |")
    lines.append("")
    for n in notes:  # servers that could not be installed or started: said here, not only below
        if n.startswith("**"):
            lines.append(f"- {n}")
            lines.append("")
    lines.append("mailflow variants: `mailflow` = empty scripts folder; `mailflow-rules` = "
                 "`bench/scripts/rules` (20 rules over connect/helo/mail_from/rcpt_to/data, the last "
                 "files every message into the Maildir++ folder `.Bench`); `mailflow-rules-kv` = the same "
                 "plus `bench/scripts/kv/20-kv.rhai` (one durable `kv::incr` per message).")
    lines.append("")
    if any(s.name == "durable-sink" for s in servers):
        lines.append(DURABLE_SINK_NOTE)
        lines.append("")
    if any(s.name in HARAKA_VARIANTS for s in servers):
        lines.append("Haraka: one process (`nodes=0`), plugins `bench_rdns` (answers `localhost` for 127.0.0.0/8, "
                     "no DNS), `rcpt_to.in_host_list` and the queue: `haraka` = `queue/discard` (stores nothing, "
                     "nothing to count); `haraka-maildir` = `bench/haraka/bench_maildir.js` (write, fsync, rename "
                     "into `new/`, fsync of `new/`, then 250: counted in that Maildir). Log level `notice`.")
        lines.append("")
    # ratios between runs of the same repetition (interleaved, so they saw the same background load)
    names = [s.name for s in servers]
    pairs = [(a, b) for a in names if a.startswith("mailflow")
             for b in ("smtp-sink", "durable-sink", "postfix", "haraka-maildir", "mailflow")
             if b in names and b != a]
    if {"durable-sink", "smtp-sink"} <= set(names):
        pairs.insert(0, ("durable-sink", "smtp-sink"))
    if pairs:
        lines.append("Throughput ratios, computed run by run between interleaved runs of the same repetition: median (min–max).")
        lines.append("")
        lines.append("| ratio | sessions | msgs/s ratio |")
        lines.append("|---|---|---|")
        for a, b in pairs:
            for sessions in meta["sessions"]:
                vals = []
                for rep in sorted({r.get("rep") for r in results}):
                    ra = [r for r in results if r["server"] == a and r["sessions"] == sessions and r.get("rep") == rep and r["msgs_per_s"]]
                    rb = [r for r in results if r["server"] == b and r["sessions"] == sessions and r.get("rep") == rep and r["msgs_per_s"]]
                    if ra and rb:
                        vals.append(ra[0]["msgs_per_s"] / rb[0]["msgs_per_s"])
                if vals:
                    lines.append(f"| {a} / {b} | {sessions} | {fmt_range(vals, '{:.2f}')} |")
        lines.append("")
    lines.append("Columns: peak RSS/PSS are the highest of samples taken every "
                 f"{SAMPLE_EVERY}s during the runs of that row (Postfix: summed over master and all "
                 "its children; Haraka: over its process tree, one process with `nodes=0`; RSS "
                 "double-counts shared pages, PSS does not). Server CPU is user+system "
                 "time of the server's processes from the start of a run until its last message is in the "
                 "Maildir (so it includes delivery). `delivered` is the Maildir file count per run.")
    lines.append("")
    lines.append("## Conditions")
    lines.append("")
    for k in ("date", "host", "cpus", "kernel", "mailflow", "postfix", "haraka", "commit", "spread_dirs", "loadavg_before", "loadavg_after", "elapsed_s"):
        if meta.get(k) not in (None, ""):
            lines.append(f"- {k}: {meta[k]}")
    lines.append("- Noise: load generator, servers and any other work on the machine share the same cores; "
                 "the servers are interleaved run by run so background load hits all of them alike. "
                 "Compare rows from the same run, not across runs.")
    for name, kb in (meta.get("mailflow_hwm_kb") or {}).items():
        lines.append(f"- {name} VmHWM at the end (kernel's exact peak RSS over the whole invocation, "
                     f"warm-up included): {kb / 1024:.1f} MB")
    for n in notes:
        lines.append(f"- {n}")
    lines.append("")
    lines.append("## Runs")
    lines.append("")
    lines.append("| # | server | sessions | wall s | msgs/s | server CPU ms/msg | smtp-source CPU ms/msg | all in Maildir after s | delivered |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    no_store = {s.name: s.no_store_note for s in servers}
    for i, r in enumerate(results, 1):
        rate = f"{r['msgs_per_s']:.0f}" if r["msgs_per_s"] is not None else f"failed ({r['rc']})"
        drain = f"{r['all_delivered_s']:.1f}" if r["all_delivered_s"] is not None else "—"
        dlv = r["delivered"] if r["delivered"] is not None else no_store.get(r["server"], "n/a")
        lines.append(f"| {i} | {r['server']} | {r['sessions']} | {r['wall_s']:.2f} | {rate} | "
                     f"{r['server_cpu_ms_per_msg']:.2f} | {r['load_cpu_ms_per_msg']:.2f} | {drain} | {dlv} |")
    lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mailflow", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    count = env_int("BENCH_COUNT", MAX_COUNT, 1, MAX_COUNT)
    repeat = env_int("BENCH_REPEAT", 3, 1, 10)
    budget = env_int("BENCH_TIMEOUT", 5400, 60, 4 * 3600)
    sessions_list = [int(x) for x in os.environ.get("BENCH_SESSIONS", "1 5 20 50").split()]
    if not sessions_list or any(not 1 <= s <= 100 for s in sessions_list):
        sys.exit("bench: BENCH_SESSIONS must be numbers in [1, 100]")
    wanted = os.environ.get("BENCH_SERVERS", " ".join(DEFAULT_SERVERS)).split()
    unknown = set(wanted) - {"smtp-sink", "durable-sink", "postfix"} - set(HARAKA_VARIANTS) - set(MAILFLOW_VARIANTS)
    if unknown:
        sys.exit(f"bench: unknown server(s) in BENCH_SERVERS: {' '.join(sorted(unknown))}")
    # a run that needs more than 50 ms a message is broken, not slow
    run_timeout = max(60, count // 20)
    drain_timeout = max(60, count // 50)

    started = time.monotonic()
    root = tempfile.mkdtemp(prefix="mailflow-bench.")
    spread = spread_subdirs(root)  # each server's folders in block groups of their own
    # On the servers' filesystem, so that emptying a Maildir is a rename.
    TRASH["dir"] = os.path.join(root, "trash")
    os.chmod(root, 0o755)  # Postfix's virtual(8) delivers as nobody below here
    servers, notes, results = [], [], []

    def on_signal(signum, _frame):
        raise SystemExit(f"bench: signal {signum}: stopping")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    meta = {
        "count": count, "repeat": repeat, "sessions": sessions_list,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": platform.node(),
        "cpus": os.cpu_count(), "kernel": platform.release(),
        "loadavg_before": open("/proc/loadavg").read().strip(),
        "spread_dirs": "yes (chattr +T on the bench root and each server's folder)" if spread
        else "no (chattr +T failed: not ext4?)",
    }
    try:
        r = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(__file__)), "describe",
                            "--always", "--dirty"], capture_output=True, text=True, timeout=10)
        tree = r.stdout.strip()
        given = os.environ.get("MAILFLOW_BIN")
        meta["commit"] = (f"{tree} (binary given by MAILFLOW_BIN={given})" if given
                          else f"{tree} (working tree that ingest.sh built)")
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for name in wanted:
            server = {"smtp-sink": SmtpSink, "durable-sink": DurableSink, "postfix": Postfix}.get(name)
            if server:
                s = server(root)
            elif name in HARAKA_VARIANTS:
                s = Haraka(root, name)
            elif name == "mailflow-old":
                old = os.environ.get("MAILFLOW_OLD_BIN")
                if not old:
                    sys.exit("bench: mailflow-old needs MAILFLOW_OLD_BIN=path")
                s = Mailflow(root, os.path.abspath(old), name)
            else:
                s = Mailflow(root, os.path.abspath(args.mailflow), name)
            try:
                log(f"starting {s.name} on {HOST}:{s.port}")
                s.start()
                servers.append(s)
            except Exception as e:  # keep measuring the others, and say why (loudly)
                notes.append(f"**{s.name} not measured**: {e}".replace("\n", " "))
                log("!" * 78)
                log(f"ERROR: {s.name} could not be started; it is SKIPPED (noted in the report):")
                log(str(e))
                log("!" * 78)
                s.stop()
        meta["mailflow"] = next((s.version() for s in servers if s.name.startswith("mailflow")), "")
        meta["postfix"] = next((s.version() for s in servers if s.name == "postfix"), "")
        meta["haraka"] = next((s.version() for s in servers if s.name in HARAKA_VARIANTS), "")

        warm = min(200, count)
        for s in servers:
            log(f"warm-up: {s.name}, {warm} messages")
            w = measure(s, max(sessions_list), warm, run_timeout, drain_timeout)
            if w["rc"] != 0 or (w["delivered"] is not None and w["delivered"] < warm):
                notes.append(f"{s.name} warm-up: rc={w['rc']} delivered={w['delivered']}/{warm}: {w['smtp_source_output'][-300:]}")
                log(notes[-1])

        skipped = 0
        restarts = {}
        for rep in range(1, repeat + 1):
            for sessions in sessions_list:
                for s in servers:
                    if time.monotonic() - started > budget:
                        skipped += 1
                        continue
                    how = s.gone()
                    if how:
                        # something outside this script stopped the server: say so, start it
                        # again (same folders, new port) and go on measuring
                        notes.append(f"{s.name} stopped before run {rep} with {sessions} session(s) "
                                     f"({how}), not by this script; last log lines: "
                                     + " | ".join(s.log_tail(3).splitlines()))
                        log(notes[-1])
                        try:
                            s.restart()
                            restarts[s.name] = restarts.get(s.name, 0) + 1
                            log(f"{s.name} started again on {HOST}:{s.port}")
                        except Exception as e:
                            notes.append(f"{s.name} could not be started again: {e}".replace("\n", " "))
                            log(notes[-1])
                    log(f"run {rep}/{repeat}: {s.name}, {sessions} session(s), {count} messages")
                    r = measure(s, sessions, count, run_timeout, drain_timeout)
                    r["rep"] = rep
                    results.append(r)
                    msg = f"  {r['wall_s']:.2f}s"
                    if r["msgs_per_s"]:
                        msg += f", {r['msgs_per_s']:.0f} msgs/s"
                    if r["delivered"] is not None:
                        msg += f", delivered {r['delivered']}/{count}"
                    log(msg)
                    if r["rc"] != 0:
                        notes.append(f"{s.name} run {rep} with {sessions} session(s): smtp-source rc={r['rc']}: {r['smtp_source_output'][-300:]}")
                    elif r["delivered"] is not None and r["delivered"] < count:
                        notes.append(f"{s.name} run {rep} with {sessions} session(s): only {r['delivered']}/{count} in the Maildir after {drain_timeout}s")
                    if r["smtp_source_output"] and r["rc"] == 0:
                        notes.append(f"{s.name} run {rep}: smtp-source said: {r['smtp_source_output'][-300:]}")
        if skipped:
            notes.append(f"{skipped} run(s) skipped: BENCH_TIMEOUT={budget}s reached")
        for name, n in restarts.items():
            notes.append(f"{name} was started again {n} time(s): its peak memory covers each process separately, VmHWM only the last")
        for s in servers:
            how = s.gone()
            if how:
                notes.append(f"{s.name} was no longer running at the end ({how}): "
                             + " | ".join(s.log_tail(3).splitlines()))
            elif s.name.startswith("mailflow"):
                meta.setdefault("mailflow_hwm_kb", {})[s.name] = s.peak_hwm_kb()
    finally:
        for s in reversed(servers):
            log(f"stopping {s.name}")
            s.stop()
        meta["loadavg_after"] = open("/proc/loadavg").read().strip()
        meta["elapsed_s"] = f"{time.monotonic() - started:.0f}"
        if results:
            text = report(results, meta, servers, notes)
            os.makedirs(os.path.dirname(args.out), exist_ok=True)
            with open(args.out, "w") as f:
                f.write(text)
            with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
                json.dump({"meta": meta, "notes": notes, "runs": results}, f, indent=1)
            print(text)
        keep = os.environ.get("BENCH_TRASH")
        if keep and os.path.isdir(TRASH["dir"]):
            # bench/run deletes it after the last section, so no later measurement pays for it.
            try:
                os.makedirs(keep, exist_ok=True)
                os.rename(TRASH["dir"], os.path.join(keep, f"ingest-{os.getpid()}"))
            except OSError as e:  # another filesystem: delete it now after all
                log(f"trash not kept ({e}); deleting it now")
        shutil.rmtree(root, ignore_errors=True)
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
