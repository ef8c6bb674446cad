#!/usr/bin/env bash
# Ingest measurement: Postfix's smtp-source against smtp-sink (protocol ceiling), durable-sink
# (the durability floor: group-committed spool, then Maildir, nothing else), a private
# Postfix instance delivering to Maildir, Haraka (discard, and a Maildir queue plugin with fsync)
# and mailflow (durable spool, then Maildir), side by side on loopback. Writes
# bench/results/ingest.md and prints it. See bench/README.md.
#
# Environment:
#   BENCH_COUNT=20000       messages per run (the issue's 20,000; at most 20000)
#   BENCH_SESSIONS="1 5 20 50" smtp-source -s values
#   BENCH_REPEAT=3          runs per server and session count (median, min-max)
#   BENCH_SERVERS="smtp-sink durable-sink postfix haraka haraka-maildir mailflow mailflow-rules mailflow-rules-kv"
#                           (also: mailflow-rules-notrace, the rules with decision traces off)
#   BENCH_TIMEOUT=5400      seconds for the whole measurement; runs past it are skipped
#   MAILFLOW_BIN=path       use this binary instead of building target/release/mailflow
#   DURABLE_SINK_BIN=path   use this durable-sink instead of building bench/loadclient
#   HARAKA_BIN=path         use this haraka instead of installing into bench/.haraka (npm)
#   BENCH_OUT=file.md       report path (default bench/results/ingest.md; the .json goes next to it)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
export PATH="$PATH:/usr/sbin:/sbin"

need_postfix=0
for tool in smtp-source smtp-sink postfix; do
    command -v "$tool" >/dev/null 2>&1 || need_postfix=1
done
if [ "$need_postfix" = 1 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "bench: smtp-source/smtp-sink missing; install Debian's postfix package (as root: see bench/README.md)" >&2
        exit 1
    fi
    echo "bench: installing Debian's postfix package (no system instance is configured or started)" >&2
    # "No configuration": the package installs its programs but no /etc/postfix/main.cf,
    # so no system instance starts and nothing binds port 25.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y postfix >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y postfix >/dev/null
    fi
fi

# Haraka (Node.js) from npm into bench/.haraka (git-ignored), only when missing and wanted.
# A failed install is reported loudly; ingest.py then skips both Haraka servers and notes why.
servers="${BENCH_SERVERS:-smtp-sink durable-sink postfix haraka haraka-maildir mailflow mailflow-rules mailflow-rules-kv}"
haraka_prefix="$here/.haraka"
if [[ " $servers " == *" haraka"* ]] && [ -z "${HARAKA_BIN:-}" ] \
    && [ ! -x "$haraka_prefix/node_modules/.bin/haraka" ]; then
    echo "bench: installing Haraka 3.3.4 into $haraka_prefix (npm)" >&2
    mkdir -p "$haraka_prefix"
    if ! command -v npm >/dev/null 2>&1 \
        || ! npm install --prefix "$haraka_prefix" --no-audit --no-fund --loglevel=error Haraka@3.3.4 \
            >"$haraka_prefix/npm-install.log" 2>&1 \
        || [ ! -x "$haraka_prefix/node_modules/.bin/haraka" ]; then
        {
            echo "bench: ##########################################################################"
            echo "bench: ERROR: installing Haraka failed (npm missing or npm install failed)."
            echo "bench: haraka and haraka-maildir will be SKIPPED (noted in the report)."
            echo "bench: npm's output: $haraka_prefix/npm-install.log"
            tail -n 15 "$haraka_prefix/npm-install.log" 2>/dev/null | sed 's/^/bench:   /'
            echo "bench: ##########################################################################"
        } >&2
    fi
fi

# The durability floor server (std + tokio, not part of the main workspace). A failed build is
# reported loudly; ingest.py then skips durable-sink and says so in the report.
if [[ " $servers " == *" durable-sink "* ]] && [ -z "${DURABLE_SINK_BIN:-}" ]; then
    cargo build --release --quiet --manifest-path "$here/loadclient/Cargo.toml" \
        || echo "bench: ERROR: bench/loadclient did not build: durable-sink will be SKIPPED" >&2
fi

if [ -z "${MAILFLOW_BIN:-}" ]; then
    echo "bench: cargo build --release --bins" >&2
    (cd "$root" && cargo build --release --bins)
    MAILFLOW_BIN="${CARGO_TARGET_DIR:-$root/target}/release/mailflow"
fi
if [ ! -x "$MAILFLOW_BIN" ]; then
    echo "bench: no mailflow binary at $MAILFLOW_BIN" >&2
    exit 1
fi

exec python3 "$here/ingest.py" --mailflow "$MAILFLOW_BIN" --out "${BENCH_OUT:-$here/results/ingest.md}"
