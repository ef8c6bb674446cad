#!/usr/bin/env python3
"""Large messages: memory and throughput with big messages in flight (called by bench/run).

BENCH_LARGE_SESSIONS (40) clients each send one BENCH_LARGE_MB (20) MB message at the same
time (smtplib, one thread and one connection each), to: a private Postfix (delivering into a
Maildir with virtual(8), message_size_limit raised to 30 MB), mailflow (the binary under test)
and, when MAILFLOW_OLD_BIN names one, an older mailflow. Servers interleaved per repetition
(BENCH_REPEAT, 3); a fresh instance for every run, so the kernel's VmHWM is that run's peak.

Then the poller row: a private Dovecot holding one BENCH_POLL_MB (50) MB message, and mailflow
(new, and old when given) polling it over IMAP with a local copy (`deliver`): the daemon's
VmHWM from start until the copy is in place, and the time that took.

Reported per server: MB/s (all bytes / wall seconds from the first connect to the last 250),
peak RSS (mailflow: VmHWM of its one process; Postfix: the highest sampled sum of RSS over
master and children, sampled every 50 ms, plus PSS), and seconds until all messages are in the
Maildir. Writes bench/results/large.md and .json.
"""

import os
import subprocess
import sys
import tempfile
import threading
import time
import smtplib
import shutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ingest import HOST, RCPT, SENDER, Mailflow, Postfix, count_files, log, proc_mem_kb  # noqa: E402
from extra import Dovecot, env_int, fmt_range, loadavg, server_mem_kb, write_result  # noqa: E402


class LargePostfix(Postfix):
    name = "postfix"

    def start(self):
        super().start()
        with open(os.path.join(self.etc, "main.cf"), "a") as f:
            f.write("message_size_limit = 31457280\nvirtual_mailbox_limit = 0\n")
        subprocess.run(["postfix", "-c", self.etc, "reload"], capture_output=True, timeout=60)
        time.sleep(2)


class NamedMailflow(Mailflow):
    """The ingest benchmark's bare mailflow, under another name (old and new binaries)."""

    def __init__(self, root, binary, name):
        self.variant_name = name
        super().__init__(root, binary, "mailflow")
        self.name = name

    def start(self):
        super().start()


def make_message(size):
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ab\r\n"
    head = (f"From: <{SENDER}>\r\nTo: <{RCPT}>\r\nSubject: large\r\n"
            "Message-ID: <large@bench.test>\r\n\r\n").encode()
    return head + line * (size // len(line))


def run_once(server, sessions, msg, timeout):
    server.start()
    time.sleep(0.5)
    peak = {"rss": 0, "pss": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            rss, pss = server_mem_kb(server)
            peak["rss"] = max(peak["rss"], rss)
            peak["pss"] = max(peak["pss"], pss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    errors = []
    barrier = threading.Barrier(sessions)

    def send(i):
        try:
            with smtplib.SMTP(HOST, server.port, timeout=timeout) as s:
                s.ehlo("client.bench.test")
                barrier.wait(timeout=30)
                s.sendmail(SENDER, [RCPT], msg)
        except Exception as e:  # noqa: BLE001 - counted and reported
            errors.append(f"{type(e).__name__}: {e}"[:200])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(sessions)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    wall = time.monotonic() - t0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (count_files(server.maildir_new) or 0) < sessions - len(errors):
        time.sleep(0.05)
    all_in = time.monotonic() - t0
    stop.set()
    sampler.join()
    hwm = proc_mem_kb(server.proc.pid)[2] if server.name.startswith("mailflow") and server.proc else 0
    delivered = count_files(server.maildir_new) or 0
    server.stop()
    return {"server": server.name, "wall_s": wall, "mb_s": len(msg) * (sessions - len(errors)) / 1e6 / wall,
            "peak_rss_kb": hwm or peak["rss"], "sampled_rss_kb": peak["rss"], "peak_pss_kb": peak["pss"],
            "all_in_maildir_s": all_in, "delivered": delivered, "errors": errors[:5]}


def poll_once(root, binary, name, size_mb, timeout=300):
    """One mailflow polling one big message from a fresh Dovecot; (VmHWM kB, seconds)."""
    dv = Dovecot(root)
    body = make_message(size_mb * 1024 * 1024).replace(b"\r\n", b"\n")
    new = os.path.join(dv.maildir, "new")
    for sub in ("new", "cur", "tmp"):
        os.makedirs(os.path.join(dv.maildir, sub), exist_ok=True)
    with open(os.path.join(new, "1.big.bench"), "wb") as f:
        f.write(body)
    subprocess.run(["chown", "-R", f"{dv.uid}:{dv.gid}", dv.maildir], check=False)
    dv.start()
    d = os.path.join(root, f"poll-{name}")
    os.makedirs(d)
    local = os.path.join(d, "local")
    config = os.path.join(d, "mailflow.toml")
    with open(config, "w") as f:
        f.write(f"""[smtp]\nlisten = ["{HOST}:{free_port_local()}"]\n[state]\ndir = "{d}/state"\n
[[accounts]]\nname = "big"\nprotocol = "imap"\nhost = "{HOST}"\nport = {dv.port}\ntls = "none"
username = "me"\npassword = "secret"\nidle = false\npoll_interval = "60s"\ndeliver = "{local}"\n""")
    os.makedirs(os.path.join(d, "scripts"))
    log_file = open(os.path.join(d, "server.log"), "ab")
    proc = subprocess.Popen([binary, "run", "--config", config], cwd=d, stdout=log_file, stderr=subprocess.STDOUT,
                            start_new_session=True)
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < timeout:
            if count_files(os.path.join(local, "new")) or count_files(os.path.join(local, "cur")):
                break
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited: {proc.returncode}")
            time.sleep(0.05)
        took = time.monotonic() - t0
        hwm = proc_mem_kb(proc.pid)[2]
        ok = bool(count_files(os.path.join(local, "new")))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log_file.close()
        dv.stop()
    return {"server": name, "hwm_kb": hwm, "seconds": took, "copied": ok}


def free_port_local():
    import socket
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def main():
    sessions = env_int("BENCH_LARGE_SESSIONS", 40)
    size_mb = env_int("BENCH_LARGE_MB", 20)
    repeat = env_int("BENCH_REPEAT", 3)
    binary = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.environ["MAILFLOW_BIN"]
    old = os.environ.get("MAILFLOW_OLD_BIN")
    msg = make_message(size_mb * 1024 * 1024)
    root = tempfile.mkdtemp(prefix="mailflow-large.")
    os.chmod(root, 0o755)
    runs = []
    try:
        for rep in range(repeat):
            makers = [("postfix", lambda d: LargePostfix(d)), ("mailflow", lambda d: NamedMailflow(d, binary, "mailflow"))]
            if old:
                makers.append(("mailflow-old", lambda d: NamedMailflow(d, os.path.abspath(old), "mailflow-old")))
            for name, make in makers:
                d = os.path.join(root, f"{name}-{rep}")
                os.makedirs(d)
                log(f"large: {name} run {rep + 1}: {sessions} x {size_mb} MB")
                try:
                    r = run_once(make(d), sessions, msg, timeout=600)
                except Exception as e:  # noqa: BLE001 - reported
                    r = {"server": name, "error": str(e)[:300]}
                r["rep"] = rep
                runs.append(r)
                log(f"large: {r}")
                shutil.rmtree(d, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    names = []
    for r in runs:
        if r["server"] not in names:
            names.append(r["server"])
    lines = [f"{sessions} clients send one {size_mb} MB message each, all at once (smtplib); "
             f"{repeat} runs per server, interleaved, a fresh instance per run. Median (min–max).", "",
             "| server | MB/s | peak RSS MB | peak PSS MB (sampled) | all in Maildir after s | delivered | errors |",
             "|---|---|---|---|---|---|---|"]
    for name in names:
        ok = [r for r in runs if r["server"] == name and "error" not in r]
        if not ok:
            lines.append(f"| {name} | not measured: {[r.get('error') for r in runs if r['server'] == name][:1]} | | | | | |")
            continue
        lines.append(f"| {name} | {fmt_range([r['mb_s'] for r in ok], '{:.0f}')} | "
                     f"{fmt_range([r['peak_rss_kb'] / 1024 for r in ok], '{:.0f}')} | "
                     f"{fmt_range([r['peak_pss_kb'] / 1024 for r in ok], '{:.0f}')} | "
                     f"{fmt_range([r['all_in_maildir_s'] for r in ok], '{:.1f}')} | "
                     f"{'/'.join(str(r['delivered']) for r in ok)} | {sum(len(r['errors']) for r in ok)} |")
    by_rep = {}
    for r in runs:
        if "error" not in r:
            by_rep.setdefault(r["rep"], {})[r["server"]] = r
    ratios = [reps["mailflow"]["mb_s"] / reps["postfix"]["mb_s"] for reps in by_rep.values()
              if "mailflow" in reps and "postfix" in reps]
    if ratios:
        lines += ["", f"- MB/s mailflow / Postfix, run by run: {fmt_range(ratios, '{:.2f}')}x"]
    ratios = [reps["mailflow"]["mb_s"] / reps["mailflow-old"]["mb_s"] for reps in by_rep.values()
              if "mailflow" in reps and "mailflow-old" in reps]
    if ratios:
        lines += [f"- MB/s mailflow / mailflow-old ({old}), run by run: {fmt_range(ratios, '{:.2f}')}x"]
    lines += ["- peak RSS: mailflow's VmHWM (the kernel's exact peak of its one process); Postfix: the "
              "highest 50 ms sample of the summed RSS of master and children (RSS counts shared pages "
              "once per process, PSS shares them out)", f"- loadavg at the end: {loadavg()}"]
    poll_mb = env_int("BENCH_POLL_MB", 50)
    polls = []
    root = tempfile.mkdtemp(prefix="mailflow-poll.")
    os.chmod(root, 0o755)
    try:
        for rep in range(repeat):
            for name, path in [("mailflow", binary)] + ([("mailflow-old", os.path.abspath(old))] if old else []):
                log(f"large: poll {name} run {rep + 1}: one {poll_mb} MB message over IMAP")
                run_root = os.path.join(root, f"{rep}")
                os.makedirs(run_root, exist_ok=True)
                try:
                    r = poll_once(run_root, path, name, poll_mb)
                except Exception as e:  # noqa: BLE001 - reported
                    r = {"server": name, "error": str(e)[:300]}
                r["rep"] = rep
                polls.append(r)
                log(f"large: {r}")
                shutil.rmtree(run_root, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    lines += ["", f"## A poller fetching one {poll_mb} MB message (IMAP, Dovecot, local copy)", "",
              "| server | peak RSS MB (VmHWM) | seconds until copied | copied |", "|---|---|---|---|"]
    for name in ["mailflow", "mailflow-old"]:
        ok = [r for r in polls if r["server"] == name and "error" not in r]
        if ok:
            lines.append(f"| {name} | {fmt_range([r['hwm_kb'] / 1024 for r in ok], '{:.0f}')} | "
                         f"{fmt_range([r['seconds'] for r in ok], '{:.1f}')} | {'/'.join(str(r['copied']) for r in ok)} |")
        elif any(r["server"] == name for r in polls):
            lines.append(f"| {name} | not measured: {[r.get('error') for r in polls if r['server'] == name][:1]} | | |")
    write_result("large", f"Large messages: {sessions} x {size_mb} MB at once", lines, {"smtp": runs, "poll": polls})


if __name__ == "__main__":
    main()
