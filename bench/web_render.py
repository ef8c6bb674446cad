#!/usr/bin/env python3
"""Status page render times with a full recent list and a long queue (docs/web.md).

Starts `mailflow run` (MAILFLOW_BIN, a release build) with [web] on, sends WEB_MESSAGES
messages (default 10,000; every tenth is forwarded to a relay that is not there, so 1,000
entries wait in the outbound queue), logs in and fetches each page WEB_ROUNDS times, printing
the median and worst wall time of each request. Loopback only; the daemon is stopped by PID
and its folder removed at the end.
"""

import http.cookiejar
import os
import shutil
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

BIN = os.environ.get("MAILFLOW_BIN", "target/release/mailflow")
COUNT = int(os.environ.get("WEB_MESSAGES", "10000"))
ROUNDS = int(os.environ.get("WEB_ROUNDS", "20"))
THREADS = 8


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port):
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    sys.exit(f"port {port} not listening")


def send_all(port, first, step):
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        for n in range(first, COUNT, step):
            subject = f"fwd message {n}" if n % 10 == 0 else f"message {n} about lunch"
            msg = f"From: s{n}@remote.example\r\nTo: bob@bench.test\r\nSubject: {subject}\r\nMessage-ID: <{n}@remote.example>\r\n\r\nHello {n}.\r\n"
            smtp.sendmail(f"s{n}@remote.example", ["bob@bench.test"], msg)


def main():
    root = tempfile.mkdtemp(prefix="mailflow-web.")
    smtp_port, web_port, dead = free_port(), free_port(), free_port()
    pw = subprocess.run([BIN, "hash-password"], input="pw\n", capture_output=True, text=True, check=True).stdout.strip()
    os.makedirs(f"{root}/scripts")
    with open(f"{root}/scripts/10-fwd.rhai", "w") as f:
        f.write('fn data(ctx, msg) { if msg.subject.starts_with("fwd") { msg.forward("x@remote.example"); } }\n')
    with open(f"{root}/mailflow.toml", "w") as f:
        f.write(f'[smtp]\nlisten = ["127.0.0.1:{smtp_port}"]\nlocal_domains = ["bench.test"]\nmax_connections = 100\n'
                f'[outbound]\nrelay = "smtp://127.0.0.1:{dead}"\nretry = ["1h"]\n'
                f'[web]\nlisten = "127.0.0.1:{web_port}"\npassword_hash = "{pw}"\n')
    proc = subprocess.Popen([os.path.abspath(BIN), "run", "--config", "mailflow.toml"], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=open(f"{root}/log", "w"))
    try:
        wait_port(smtp_port)
        wait_port(web_port)
        started = time.time()
        threads = [threading.Thread(target=send_all, args=(smtp_port, i, THREADS)) for i in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(f"sent {COUNT} messages in {time.time() - started:.1f} s", file=sys.stderr)
        queue = f"{root}/data/queue"
        for _ in range(600):
            if len([n for n in os.listdir(queue) if n.endswith(".json")]) >= COUNT // 10:
                break
            time.sleep(0.1)
        time.sleep(2)
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        base = f"http://127.0.0.1:{web_port}"
        opener.open(base + "/login", data=urllib.parse.urlencode({"password": "pw"}).encode()).read()
        pages = ["/", "/now", "/messages", "/messages?q=lunch", "/messages?q=nothing-matches",
                 f"/messages/{'x'}", "/scripts", "/accounts", "/queue"]
        # One real queue id for the trace page.
        body = opener.open(base + "/messages?q=fwd").read().decode()
        qid = body.split('href="/messages/')[1].split('"')[0]
        pages[5] = f"/messages/{qid}"
        print(f"| page | median ms | worst ms | bytes |\n|---|---|---|---|")
        for page in pages:
            times, size = [], 0
            for _ in range(ROUNDS):
                t0 = time.perf_counter()
                size = len(opener.open(base + page).read())
                times.append((time.perf_counter() - t0) * 1000)
            print(f"| `{page}` | {statistics.median(times):.1f} | {max(times):.1f} | {size} |")
        n_queue = len([n for n in os.listdir(queue) if n.endswith(".json")])
        rss = [l for l in open(f"/proc/{proc.pid}/status") if l.startswith("VmRSS")][0].split()[1]
        print(f"\nqueue entries: {n_queue}; daemon RSS after: {int(rss) // 1024} MB", file=sys.stderr)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
