#!/usr/bin/env bash
# docs/configuration.md must list exactly the keys the binary knows.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
diff <(grep '^|' "$ROOT/docs/configuration.md") <("$1" config-keys) \
  || { echo "docs/configuration.md is stale: regenerate the table with 'tollgate config-keys'"; exit 1; }
echo "configuration docs match the binary"
