#!/usr/bin/env bash
# Demo: starts the bundled fake Exchange (EWS with NTLM) on loopback and syncs it into
# ./demo-data with the local-files sink, then prints a summary.
# Usage: scripts/demo.sh [--mailboxes N] [--emails-per-mailbox N]
set -euo pipefail
cd "$(dirname "$0")/.."

mailboxes=3
emails=400
while [ $# -gt 0 ]; do
    case "$1" in
        --mailboxes) mailboxes=$2; shift 2 ;;
        --emails-per-mailbox) emails=$2; shift 2 ;;
        *) echo "usage: $0 [--mailboxes N] [--emails-per-mailbox N]" >&2; exit 2 ;;
    esac
done

echo "== building (release)"
cargo build --release --quiet -p exchange-sync -p fake-exchange

work=$(mktemp -d)
fake_pid=
cleanup() {
    [ -n "$fake_pid" ] && kill "$fake_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "== starting the fake Exchange ($mailboxes mailboxes x $emails emails, NTLM required)"
mkfifo "$work/fake.out"
target/release/fake-exchange --mailboxes "$mailboxes" --emails-per-mailbox "$emails" \
    --ntlm-user 'DEMO\svc-sync:demo-password' > "$work/fake.out" &
fake_pid=$!
url= ; addresses=()
while read -r line; do
    case "$line" in
        "listening on "*) url=${line#listening on } ;;
        "mailbox "*) addresses+=("${line#mailbox }") ;;
        ready) break ;;
    esac
done < "$work/fake.out"
# Keep draining the fake's output so it never blocks on a full pipe.
cat "$work/fake.out" > /dev/null &
echo "   $url"

config="$work/config.json"
{
    printf '{\n  "ews_endpoint": "%s",\n  "auth_type": "ntlm",\n' "$url"
    printf '  "auth_user": "DEMO\\\\svc-sync",\n  "auth_password": "demo-password",\n'
    printf '  "poll_message_sleep": 0,\n  "mailboxes": {\n'
    for i in "${!addresses[@]}"; do
        sep=","; [ "$i" -eq $((${#addresses[@]} - 1)) ] && sep=""
        printf '    "%s": {"bucket": {"owner": "demo", "name": "emails"}, "start_from": "bucket"}%s\n' \
            "${addresses[$i]}" "$sep"
    done
    printf '  }\n}\n'
} > "$config"

rm -rf demo-data
echo "== exchange-sync --once --local-files-prefix ./demo-data"
start=$(date +%s%N)
REINFER_EWS_CONFIG="$config" target/release/exchange-sync --once --debug-level 0 \
    --local-files-prefix ./demo-data
end=$(date +%s%N)

echo "== summary"
files=$(find demo-data/data -name '*.jsonl' | wc -l)
docs=$(find demo-data/data -name '*.jsonl' -exec cat {} + | wc -l)
elapsed_ms=$(( (end - start) / 1000000 ))
printf '   %d emails in %d JSONL files under demo-data/data/demo/emails/ (%d.%03d s)\n' \
    "$docs" "$files" $((elapsed_ms / 1000)) $((elapsed_ms % 1000))
for dir in demo-data/data/demo/emails/*/; do
    n=$(find "$dir" -name '*.jsonl' -exec cat {} + | wc -l)
    printf '   %-28s %6d emails\n' "$(basename "$dir")" "$n"
done
echo "   state: $(find demo-data/state -name '*.json' | wc -l) mailbox state files under demo-data/state/"
echo "   run it again: it resumes from the saved state and copies nothing twice."
