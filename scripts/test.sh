#!/usr/bin/env bash
# Runs every test: unit, PostgreSQL-backed, cross-process, end-to-end (openai
# SDK), proto and deployment lint. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh --test
scripts/build.sh
cd "${BUILD_DIR:-build}"
ctest -j"${JOBS:-2}" --output-on-failure --timeout 600 "$@"
