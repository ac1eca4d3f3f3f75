#!/usr/bin/env bash
# Re-vendor axe-core for the browser tests (never served to users) from the npm
# registry: scripts/vendor-axe.sh 4.14.1
set -euo pipefail
axe=${1:?axe-core version}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cd "$work"
npm pack --silent "axe-core@$axe" >/dev/null
tar xzf "axe-core-$axe.tgz"
mkdir -p "$root/tests/browser/vendor/axe-core-$axe"
cp package/axe.min.js package/LICENSE package/LICENSE-3RD-PARTY.txt "$root/tests/browser/vendor/axe-core-$axe/"
echo "integrity:"; npm view "axe-core@$axe" dist.integrity
