#!/usr/bin/env bash
# Re-vendor htmx and Pico CSS from the npm registry: scripts/vendor-assets.sh 2.0.11 2.1.1
set -euo pipefail
htmx=${1:?htmx version}; pico=${2:?pico version}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cd "$work"
npm pack --silent "htmx.org@$htmx" "@picocss/pico@$pico" >/dev/null
mkdir htmx pico
tar xzf "htmx.org-$htmx.tgz" -C htmx
tar xzf "picocss-pico-$pico.tgz" -C pico
mkdir -p "$root/static/vendor/htmx-$htmx" "$root/static/vendor/pico-$pico"
cp htmx/package/dist/htmx.min.js htmx/package/LICENSE "$root/static/vendor/htmx-$htmx/"
cp pico/package/css/pico.min.css pico/package/LICENSE.md "$root/static/vendor/pico-$pico/"
echo "integrity:"; npm view "htmx.org@$htmx" dist.integrity; npm view "@picocss/pico@$pico" dist.integrity
