#!/usr/bin/env bash
# Installs what the web runtime's tests need: its npm packages (npm ci, from package-lock.json) and Debian's
# chromium for the headless browser tests. Idempotent; .ci/run calls it before the tests.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
command -v npm >/dev/null || { echo "web setup: npm is missing (apt-get install -y npm)" >&2; exit 2; }
if ! cmp -s "$HERE/package-lock.json" "$HERE/node_modules/.phiedge-lock.json" 2>/dev/null; then
    echo "web setup: npm ci in $HERE"
    (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    cp "$HERE/package-lock.json" "$HERE/node_modules/.phiedge-lock.json"
fi
if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then echo "web setup: chromium is missing; apt-get install -y chromium as root" >&2; exit 2; fi
    echo "web setup: installing chromium from Debian"
    apt-get install -y chromium >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y chromium >/dev/null; }
fi
echo "web setup: ready ($(chromium --version 2>/dev/null | head -1); onnxruntime-web $(node -p "require('$HERE/node_modules/onnxruntime-web/package.json').version"))"
