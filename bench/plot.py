#!/usr/bin/env python3
"""Plot throughput vs sessions per server from bench/results/ingest*.json (median, min-max bars).
Runs of different invocations are pooled per (server, sessions): compare curves, not single points."""
import glob
import json
import os
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

here = os.path.dirname(os.path.abspath(__file__))
# every results/ingest*.json (e.g. ingest.json for 1 and 20 sessions, ingest-5-50.json)
srcs = sys.argv[1:] or sorted(glob.glob(os.path.join(here, "results", "ingest*.json")))
dst = os.path.join(here, "results", "ingest-throughput.png")
runs, data = [], None
for src in srcs:
    d = json.load(open(src))
    data = data or d
    runs += [r for r in d["runs"] if r.get("msgs_per_s")]
fig, ax = plt.subplots(figsize=(7, 4.5))
for server in dict.fromkeys(r["server"] for r in runs):
    xs, med, lo, hi = [], [], [], []
    for s in sorted({r["sessions"] for r in runs if r["server"] == server}):
        v = [r["msgs_per_s"] for r in runs if r["server"] == server and r["sessions"] == s]
        xs.append(s)
        m = statistics.median(v)
        med.append(m)
        lo.append(m - min(v))
        hi.append(max(v) - m)
    ax.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, label=server)
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("concurrent sessions (smtp-source -s)")
ax.set_ylabel("messages/s (median, min–max)")
m = data["meta"]
ax.set_title(f"SMTP ingest, {m['count']} × 4 KB per run, {m['repeat']} runs ({m.get('cpus')} CPUs)")
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(dst, dpi=110)
print(dst)
