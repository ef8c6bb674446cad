#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: installs what it needs, builds, runs
# the Rust unit tests and the integration tests against the real binary with real clients.
#   bash test.sh            # everything
#   bash test.sh -k relay   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")"

need_apt=()
command -v swaks >/dev/null || need_apt+=(swaks)
command -v openssl >/dev/null || need_apt+=(openssl)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "== installing: ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! python3 -c "import pytest" 2>/dev/null; then
    echo "== installing pytest"
    python3 -m pip install -q pytest
fi

echo "== cargo build"
cargo build --locked --bins
echo "== cargo test"
cargo test --locked --workspace -q
echo "== integration tests"
python3 -m pytest -q -p no:cacheprovider tests/integration "$@"
