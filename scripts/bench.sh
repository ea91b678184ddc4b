#!/usr/bin/env bash
# Benchmark: builds the release binaries, starts the fake Exchange (loopback, NTLM) per scenario,
# runs `exchange-sync --once` (or the daemon) into a temporary local sink and, for scenarios (a)
# and (b), the exchangelib reference job (scripts/bench/exchangelib_job.py) against the same
# fake; prints wall time, emails/s, MB/s, CPU s per 1,000 emails, peak RSS, the ratio to the
# ceiling of the request plan, the fake's own CPU, and a pass/fail line per target.
#
# Usage: scripts/bench.sh [--quick] [--scenario abcdef] [--repeat N] [--json FILE]
#                         [--fetches N] [--uploads N] [--no-exchangelib] [--no-build]
#   --quick       smaller sizes (about 1.5 minutes; the full run takes about 5)
#   --scenario    letters of the scenarios to run (default: all), e.g. --scenario ab
#   --repeat      runs per scenario, median reported (default 2)
#   --json FILE   also write every measurement as JSON
# Other flags go to scripts/bench/run.py (see its --help). See BENCHMARKS.md for the results.
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
args=()
for arg in "$@"; do
    case "$arg" in
        --no-build) build=0 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) args+=("$arg") ;;
    esac
done

if [ "$build" = 1 ]; then
    echo "== building (release)" >&2
    cargo build --release --quiet -p exchange-sync -p fake-exchange
fi

# The reference job's environment: exchangelib 5.6.0 from PyPI, in a venv of its own.
venv=.bench-venv
if ! "$venv/bin/python" -c 'import exchangelib, sys; sys.exit(exchangelib.__version__ != "5.6.0")' 2>/dev/null; then
    echo "== creating $venv with exchangelib 5.6.0" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check exchangelib==5.6.0
fi

echo "== load before: $(cut -d' ' -f1-3 /proc/loadavg) (2 cores; other builds make numbers noisy)" >&2
status=0
python3 scripts/bench/run.py --python "$venv/bin/python" "${args[@]}" || status=$?
echo "== load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
exit "$status"
