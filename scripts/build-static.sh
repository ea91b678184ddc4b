#!/usr/bin/env bash
# Builds a fully static x86_64 exchange-sync into target/static/exchange-sync, then prints
# its size and ldd's verdict (and fails if it is not static).
#
# Prefers musl with vendored OpenSSL: a scratch image has no libc, and musl resolves host
# names without NSS plugins. Falls back to glibc with +crt-static and Debian's libssl.a when
# the musl target cannot be installed (offline rustup), as measured in
# shared/reference/crates.md §5. Takes minutes on two cores; not part of scripts/test.sh.
#
# Usage: scripts/build-static.sh [auto|musl|glibc]     (default auto: musl when possible)
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-auto}"
case "$mode" in auto|musl|glibc) ;; *) echo "usage: $0 [auto|musl|glibc]" >&2; exit 2 ;; esac
musl=x86_64-unknown-linux-musl
gnu=x86_64-unknown-linux-gnu

as_root_apt() {
    # Installs Debian packages when we may (root, apt-get present); quiet otherwise.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
            || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
    fi
}

musl_ready() {
    rustup target list --installed 2>/dev/null | grep -qx "$musl" && command -v musl-gcc >/dev/null
}

if [ "$mode" != glibc ] && ! musl_ready; then
    rustup target list --installed 2>/dev/null | grep -qx "$musl" || rustup target add "$musl" || true
    command -v musl-gcc >/dev/null || as_root_apt musl-tools || true
fi

started=$(date +%s)
if [ "$mode" = musl ] || { [ "$mode" = auto ] && musl_ready; }; then
    musl_ready || { echo "the $musl target or musl-gcc (musl-tools) is missing" >&2; exit 1; }
    flavour="musl, vendored OpenSSL"
    echo "== cargo build --release --target $musl --features vendored"
    cargo build --release --locked --target "$musl" --features vendored --bin exchange-sync
    built="target/$musl/release/exchange-sync"
else
    [ -f /usr/lib/x86_64-linux-gnu/libssl.a ] || as_root_apt libssl-dev
    flavour="glibc +crt-static, Debian libssl.a"
    echo "== cargo build --release --target $gnu with +crt-static and OPENSSL_STATIC=1"
    # --target keeps +crt-static away from build scripts and proc-macros.
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" OPENSSL_STATIC=1 \
        cargo build --release --locked --target "$gnu" --bin exchange-sync
    built="target/$gnu/release/exchange-sync"
fi

mkdir -p target/static
out=target/static/exchange-sync
cp "$built" "$out"
strip "$out" 2>/dev/null || true
verdict=$(ldd "$out" 2>&1 || true)
size=$(stat -c %s "$out")
echo "== $out ($flavour) built in $(( $(date +%s) - started )) s"
echo "size: $size bytes ($(( size / 1024 / 1024 )) MiB)"
echo "ldd:  $verdict"
case "$verdict" in
    *"not a dynamic executable"*|*"statically linked"*) ;;
    *) echo "error: $out is not static" >&2; exit 1 ;;
esac
"$out" --help >/dev/null
echo "ok: $out runs"
