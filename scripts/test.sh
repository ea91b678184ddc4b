#!/usr/bin/env bash
# Runs every check and test exchange-sync has. Installs what the tests need first:
# a Python venv with pyspnego (the real NTLM acceptor the NTLM tests run against).
# Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
if ! "$venv/bin/python" -c 'import spnego, jwt' 2>/dev/null; then
    echo "== installing test peers into $venv (pyspnego)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/peers/requirements.txt
fi
export EXCHANGE_SYNC_TEST_PYTHON="$PWD/$venv/bin/python"

# --- ops tests (tests/it/ops.rs): begin ---
# kubernetes-validate (offline manifest schemas) and prometheus-client (the reference parser
# of the /metrics format) come from tests/peers/requirements.txt; an older .venv gets them here.
if ! "$venv/bin/python" -c 'import kubernetes_validate, prometheus_client' 2>/dev/null; then
    echo "== installing ops test peers into $venv (kubernetes-validate, prometheus-client)"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/peers/requirements.txt
fi
# --- ops tests: end ---

# --- Azurite (Azure Storage emulator) for tests/it/azure.rs: begin ---
# Installed once into .azurite (pinned 3.35.0, the newest on Node 20); each test starts its own
# on a free loopback port with --disableTelemetry.
EXCHANGE_SYNC_AZURITE="$(tests/peers/azurite.sh)"
export EXCHANGE_SYNC_AZURITE
# --- Azurite: end ---

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== NTLM acceptor self-test (pyspnego)"
"$EXCHANGE_SYNC_TEST_PYTHON" tests/peers/ntlm_proxy.py --self-test > /dev/null

echo "== cargo test"
# Two cores: a few test threads are enough and keep the loopback servers responsive.
cargo test --workspace -- --test-threads=4
