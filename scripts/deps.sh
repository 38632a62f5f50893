#!/usr/bin/env bash
# Installs what Tollgate needs on Debian 12: scripts/deps.sh [--test]
# As root, missing packages are installed with apt-get; otherwise the exact
# command to run is printed and the script fails.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(cmake ninja-build g++ pkg-config ccache make
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libboost-dev libssl-dev libpqxx-dev prometheus-cpp-dev libyaml-cpp-dev
  nlohmann-json3-dev libsimdjson-dev libgtest-dev libgmock-dev libbenchmark-dev
  postgresql curl openssl ca-certificates)
if [ "${1:-}" = "--test" ]; then
  # deploy_lint: docker-compose validates docker-compose.yml (no engine needed); python3-yaml
  # reads the rendered manifests; binutils' objdump checks the Dockerfile's runtime libraries;
  # gdb prints every thread's stack of a test that hangs (common/test/hang_watchdog.cpp).
  PACKAGES+=(unzip python3 python3-yaml binutils docker-compose gdb)
  command -v node >/dev/null && command -v npm >/dev/null || PACKAGES+=(nodejs npm)
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "deps: missing Debian packages; install them with:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
fi

if [ "${1:-}" = "--test" ]; then
  # node_modules is rebuilt only when the lock file changed.
  stamp=node_modules/.tollgate-lock
  if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
    echo "deps: npm ci"
    npm ci --no-audit --no-fund --loglevel=error
    cp package-lock.json "$stamp"
  fi
fi
