#!/usr/bin/env python3
"""Spam scoring cost (issue #28): ingest with `rspamd::check` on every message against the same
run without it, and rspamd's own throughput at the same concurrency (see bench/README.md).

Starts a private rspamd + Redis (tests/integration/scanners.py: own config, loopback ports,
greylisting off, DNS to a closed port) and, one after the other, `mailflow run` with a script
that calls `rspamd::check` at `data` and sets X-Spam-Score ("rspamd"), and with no script
("plain"). Each is driven by Postfix's `smtp-source -s SESSIONS -m COUNT -l 4096` (one
connection per message); msgs/s = COUNT / wall seconds. "rspamd alone" posts the same message
COUNT times to rspamd's /checkv2 from SESSIONS threads with kept connections: the ceiling the
scanner itself sets on this machine. Runs are interleaved; medians are printed and written as
JSON to bench/results/spam.json.

    python3 bench/spam.py --mailflow target/release/mailflow [--count 2000] [--sessions 20] [--runs 3]

Only loopback; every process started here is stopped by PID/process group at the end.
"""

import argparse
import http.client
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))

from conftest import free_port, wait_port  # noqa: E402
from scanners import Rspamd  # noqa: E402

SCRIPT = """
fn data(ctx, msg) {
    let r = rspamd::check(msg);
    if r.action == "reject" { return reject(550, "5.7.1 spam"); }
    msg.set_header("X-Spam-Score", "" + r.score);
}
"""


def log(*args):
    print("bench:", *args, file=sys.stderr, flush=True)


def message(size=4096):
    head = ("From: Sender <sender@bench.test>\r\nTo: rcpt@bench.test\r\nSubject: bench\r\n"
            "Date: Mon, 07 Dec 2026 10:00:00 +0000\r\nMessage-ID: <bench@bench.test>\r\n\r\n")
    line = "The quick brown fox jumps over the lazy dog, again and again.\r\n"
    return (head + line * ((size - len(head)) // len(line) + 1)).encode()[:size]


def start_mailflow(binary, root, rspamd_url):
    port = free_port()
    (root / "scripts").mkdir(parents=True)
    config = (f'[smtp]\nlisten = ["127.0.0.1:{port}"]\nhostname = "bench.test"\n'
              f'local_domains = ["bench.test"]\n[delivery]\nmaildir = "data/mail/{{local}}@{{domain}}"\n'
              f'[scripts]\ndir = "scripts"\ntimeout_ms = 20000\n'
              # Receipt checks (SPF, DKIM, DMARC) have their own rows (bench/auth.py).
              '[auth]\nverify = false\n')
    if rspamd_url:
        (root / "scripts" / "10-spam.rhai").write_text(SCRIPT)
        config += f'[plugins]\nenabled = ["rspamd"]\n[plugins.rspamd]\nurl = "{rspamd_url}"\ntimeout_ms = 20000\n'
    (root / "mailflow.toml").write_text(config)
    proc = subprocess.Popen([binary, "run", "--config", root / "mailflow.toml"], cwd=root,
                            stdout=open(root / "log", "wb"), stderr=subprocess.STDOUT)
    wait_port(port, timeout=20, proc=proc)
    return proc, port


def smtp_source(port, count, sessions, root):
    eml = root / "msg.eml"
    eml.write_bytes(message())
    started = time.monotonic()
    subprocess.run(["smtp-source", "-s", str(sessions), "-m", str(count), "-l", "4096",
                    "-f", "sender@bench.test", "-t", "rcpt@bench.test", f"127.0.0.1:{port}"],
                   check=True, timeout=3600, stdout=subprocess.DEVNULL)
    return count / (time.monotonic() - started)


def delivered(root):
    return sum(1 for _ in (root / "data").rglob("new/*")) + sum(1 for _ in (root / "data").rglob("cur/*"))


def mailflow_run(binary, count, sessions, rspamd_url):
    root = Path(tempfile.mkdtemp(prefix="mf-bench-spam-"))
    proc, port = start_mailflow(binary, root, rspamd_url)
    try:
        rate = smtp_source(port, count, sessions, root)
        deadline = time.monotonic() + 120
        while delivered(root) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        got = delivered(root)
        if got != count:
            log(f"warning: {got} of {count} delivered ({root / 'log'})")
        return rate
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        shutil.rmtree(root, ignore_errors=True)


def rspamd_alone(rspamd, count, sessions):
    body = message()
    left = [count]
    lock = threading.Lock()

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", rspamd.port, timeout=60)
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            conn.request("POST", "/checkv2", body, {"From": "sender@bench.test", "Rcpt": "rcpt@bench.test",
                                                   "IP": "127.0.0.1", "Helo": "localhost"})
            reply = conn.getresponse()
            reply.read()
            assert reply.status == 200, reply.status

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return count / (time.monotonic() - started)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mailflow", required=True)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "results" / "spam.json"))
    args = parser.parse_args()
    if not 1 <= args.count <= 20000 or not 1 <= args.sessions <= 100:
        sys.exit("bench: --count 1..20000, --sessions 1..100")
    rspamd = Rspamd()
    rows = {"plain": [], "rspamd": [], "rspamd alone": []}
    try:
        rspamd_alone(rspamd, 100, args.sessions)  # warm-up: rspamd compiles its regexps lazily
        for n in range(args.runs):
            rows["plain"].append(mailflow_run(args.mailflow, args.count, args.sessions, None))
            rows["rspamd"].append(mailflow_run(args.mailflow, args.count, args.sessions, rspamd.url))
            rows["rspamd alone"].append(rspamd_alone(rspamd, args.count, args.sessions))
            log(f"run {n + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rows.items()))
    finally:
        rspamd.stop()
    medians = {k: statistics.median(v) for k, v in rows.items()}
    result = {"count": args.count, "sessions": args.sessions, "runs": rows, "median_msgs_per_s": medians,
              "rspamd_share": medians["rspamd"] / medians["rspamd alone"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median_msgs_per_s"]), f"mailflow+rspamd / rspamd alone = {result['rspamd_share']:.2f}")


if __name__ == "__main__":
    main()
