#!/usr/bin/env bash
# Packages a pre-built exchange-sync binary as a container image with Containerfile.prebuilt
# (no registry access needed: FROM scratch, no RUN step), and prints the image size.
#
# Usage: scripts/build-image.sh [BINARY] [TAG]
#   BINARY  default target/static/exchange-sync (from scripts/build-static.sh)
#   TAG     default localhost/exchange-sync:latest
# Environment: CONTAINER_CMD overrides the builder, e.g.
#   CONTAINER_CMD="podman --root /tmp/s --runroot /tmp/r --storage-driver vfs"
# (in an unprivileged container, vfs storage and --isolation=chroot are what works).
set -euo pipefail
cd "$(dirname "$0")/.."

binary="${1:-target/static/exchange-sync}"
tag="${2:-localhost/exchange-sync:latest}"
[ -x "$binary" ] || { echo "no executable $binary: run scripts/build-static.sh first" >&2; exit 1; }
if [ -z "${CONTAINER_CMD:-}" ]; then
    if command -v podman >/dev/null; then CONTAINER_CMD=podman
    elif command -v buildah >/dev/null; then CONTAINER_CMD=buildah
    else echo "neither podman nor buildah is installed (apt-get install podman buildah crun)" >&2; exit 1
    fi
fi
case "$(ldd "$binary" 2>&1 || true)" in
    *"not a dynamic executable"*|*"statically linked"*) ;;
    *) echo "warning: $binary is dynamically linked; the image has no libc, so it will not run there" >&2 ;;
esac
bundle="${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}"
[ -f "$bundle" ] || { echo "no CA bundle at $bundle (apt-get install ca-certificates)" >&2; exit 1; }

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$binary" "$context/exchange-sync"
cp "$bundle" "$context/ca-certificates.crt"
mkdir -p "$context/rootfs/etc" "$context/rootfs/mnt" "$context/data"
echo 'exchange-sync:x:65534:65534:exchange-sync:/nonexistent:/sbin/nologin' > "$context/rootfs/etc/passwd"
echo 'exchange-sync:x:65534:' > "$context/rootfs/etc/group"
chmod 0755 "$context/data"
chmod 0644 "$context/rootfs/etc/passwd" "$context/rootfs/etc/group" "$context/ca-certificates.crt"

# shellcheck disable=SC2086  # CONTAINER_CMD may carry options
case "$CONTAINER_CMD" in
    *buildah*) $CONTAINER_CMD bud --isolation=chroot -f Containerfile.prebuilt -t "$tag" "$context" ;;
    *) $CONTAINER_CMD build --isolation=chroot -f Containerfile.prebuilt -t "$tag" "$context" ;;
esac
# shellcheck disable=SC2086
size=$($CONTAINER_CMD image inspect --format '{{.Size}}' "$tag" 2>/dev/null || echo "?")
echo "built $tag: $size bytes"
