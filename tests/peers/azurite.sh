#!/usr/bin/env bash
# Installs Azurite (the Azure Storage emulator the Azure sink tests run against) into
# .azurite/ once, and prints the path of its azurite-blob launcher.
# Pinned to 3.35.0: newer releases need Node >= 21, and the machines have Node 20.
# Usage: tests/peers/azurite.sh            (install if needed, print the launcher path)
set -euo pipefail
cd "$(dirname "$0")/../.."

version=3.35.0
prefix=.azurite
launcher="$PWD/$prefix/node_modules/.bin/azurite-blob"
installed=$(node -p "require('./$prefix/node_modules/azurite/package.json').version" 2>/dev/null || true)
if [ "$installed" != "$version" ]; then
    if ! command -v npm > /dev/null; then
        echo "azurite.sh: npm is missing; install Node.js 20 (apt-get install nodejs npm)" >&2
        exit 1
    fi
    echo "== installing Azurite $version into $prefix" >&2
    npm install --prefix "$prefix" --no-save --no-audit --no-fund --loglevel=error \
        "azurite@$version" > /dev/null
fi
echo "$launcher"
