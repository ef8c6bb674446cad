#!/usr/bin/env python3
"""Verification on receipt: what SPF, DKIM, DMARC, ARC and iprev checks cost (issue 22).

mailflow (the binary under test) ingests one DKIM-signed 4 KB message (RSA-2048, relaxed,
signed by dkimpy) over and over from BENCH_AUTH_SESSIONS (20) sessions, with `[auth] verify`
on (a local authoritative DNS server, dnslib, holding the sender's SPF, DKIM and DMARC
records; the cache warmed by BENCH_AUTH_WARMUP messages first) and off. The two variants run
interleaved, BENCH_REPEAT (5) times each, a fresh instance per run; the client is the Rust load
client (bench/loadclient, one connection per session, many messages per connection) with
LOADCLIENT_MESSAGE. msgs/s = COUNT / the client's wall seconds. Writes bench/results/auth.md
and .json.

    python3 bench/auth.py target/release/mailflow
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
from ingest import CLK_TCK, log  # noqa: E402
from extra import LOADCLIENT, MF, env_int, fmt_range, loadavg, write_result  # noqa: E402


def main():
    binary = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.environ["MAILFLOW_BIN"]
    sessions = env_int("BENCH_AUTH_SESSIONS", 20)
    count = env_int("BENCH_AUTH_COUNT", 20000)
    warmup = env_int("BENCH_AUTH_WARMUP", 200)
    repeat = env_int("BENCH_REPEAT", 5)
    if not os.access(LOADCLIENT, os.X_OK):
        sys.exit(f"auth: {LOADCLIENT} is missing: cargo build --release --manifest-path bench/loadclient/Cargo.toml")
    from authdns import AuthDNS, RsaKey, sign, txt  # dnslib, dkimpy (installed by test.sh)

    root = tempfile.mkdtemp(prefix="mailflow-auth.")
    from pathlib import Path

    key = RsaKey(Path(root), "bench")
    dns = AuthDNS({
        ("bench.test", "TXT"): [txt("v=spf1 ip4:127.0.0.0/8 -all")],
        ("mf._domainkey.bench.test", "TXT"): [txt(key.record)],
        ("_dmarc.bench.test", "TXT"): [txt("v=DMARC1; p=reject")],
    })
    head = ("From: <sender@bench.test>\r\nTo: <rcpt@bench.test>\r\nSubject: signed\r\n"
            "Date: Mon, 07 Dec 2026 10:00:00 +0000\r\nMessage-ID: <bench@bench.test>\r\n\r\n")
    body = ("x" * 76 + "\r\n") * ((4096 - len(head) - 600) // 78)
    msg = sign((head + body).encode(), key, "bench.test", "mf")
    message_file = os.path.join(root, "signed.eml")
    with open(message_file, "wb") as f:
        f.write(msg)
    variants = {
        "verify on": f'[auth]\nverify = true\ndns_server = "{dns.address}"\n',
        "verify off": "[auth]\nverify = false\n",
    }
    runs = []
    try:
        for rep in range(repeat):
            for name, extra in variants.items():
                server = MF(root, binary, name=f"{name.replace(' ', '-')}-{rep}", extra=extra)
                server.start()
                try:
                    warm = client(server.port, sessions, warmup, message_file)
                    queries, ticks = len(dns.queries), server.cpu_ticks()
                    result = client(server.port, sessions, count, message_file)
                    queries = len(dns.queries) - queries
                    cpu_ms = (server.cpu_ticks() - ticks) * 1000 / CLK_TCK / count
                    box = os.path.join(server.maildir_root, "rcpt@bench.test", "new")
                    header_ok = checked_header(box, name)
                finally:
                    server.stop()
                r = {"variant": name, "rep": rep, "msgs_s": count / result["wall_s"], "wall_s": result["wall_s"],
                     "cpu_ms_per_msg": cpu_ms,
                     "errors": result["n_errors"] + warm["n_errors"], "header": header_ok, "dns_queries": queries,
                     "loadavg": loadavg()}
                log(f"auth: {r}")
                runs.append(r)
    finally:
        dns.close()
        shutil.rmtree(root, ignore_errors=True)
    lines = [
        f"{sessions} sessions send one DKIM-signed 4 KB message (RSA-2048) over and over, {count} messages "
        f"per run after {warmup} to warm the cache; local DNS (dnslib); {repeat} runs per variant, "
        "interleaved, a fresh instance each. Median (min–max).", "",
        "| variant | msgs/s | vs off | server CPU ms/msg | errors | DNS queries per measured run | header as expected |",
        "|---|---|---|---|---|---|---|"]
    medians = {}
    for name in variants:
        rates = [r["msgs_s"] for r in runs if r["variant"] == name]
        medians[name] = statistics.median(rates)
    for name in variants:
        rows = [r for r in runs if r["variant"] == name]
        ratio = medians[name] / medians["verify off"]
        cpu = fmt_range([r["cpu_ms_per_msg"] for r in rows], "{:.3f}")
        lines.append(f"| {name} | {fmt_range([r['msgs_s'] for r in rows])} | {ratio:.2f}× | {cpu} | "
                     f"{sum(r['errors'] for r in rows)} | {max(r['dns_queries'] for r in rows)} | "
                     f"{'yes' if all(r['header'] for r in rows) else 'NO'} |")
    cpu = {n: statistics.median(r["cpu_ms_per_msg"] for r in runs if r["variant"] == n) for n in variants}
    lines += ["", f"CPU cost of verification: {cpu['verify on'] - cpu['verify off']:.3f} ms per message "
              f"({100 * (cpu['verify on'] / cpu['verify off'] - 1):.0f} % more server CPU per message); on a busy "
              "machine the CPU figure is steadier than msgs/s."]
    lines += ["", f"Machine load average during the runs: {runs[0]['loadavg']} … {runs[-1]['loadavg']}.",
              "", f"Cost of verification: {100 * (1 - medians['verify on'] / medians['verify off']):.1f} % of "
              "throughput (issue 22 target: at most 15 %)."]
    write_result("auth", "Verification on receipt (SPF, DKIM, DMARC, ARC, iprev)", lines,
                 {"runs": runs, "sessions": sessions, "count": count})


def client(port, sessions, count, message_file):
    env = dict(os.environ, LOADCLIENT_MESSAGE=message_file)
    r = subprocess.run([LOADCLIENT, str(port), str(sessions), str(count), "4096", "300"],
                       capture_output=True, text=True, env=env, timeout=400)
    if r.returncode != 0:
        raise RuntimeError(f"loadclient rc={r.returncode}: {r.stderr[-300:]}")
    return json.loads(r.stdout)


def checked_header(box, variant):
    """One delivered message carries the expected Authentication-Results (or none when off)."""
    for _ in range(100):
        names = os.listdir(box) if os.path.isdir(box) else []
        if names:
            text = open(os.path.join(box, names[0]), "rb").read(4096)
            has = b"dkim=pass header.d=bench.test" in text and b"dmarc=pass" in text
            return has if variant == "verify on" else b"Authentication-Results" not in text
        import time
        time.sleep(0.1)
    return False


if __name__ == "__main__":
    main()
