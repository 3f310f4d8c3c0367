#!/usr/bin/env bash
# The README's test command: installs what the tests need, then runs every test.
#   scripts/test.sh [cargo test args...]
# - redis-server and redis-cli (Debian's redis-server package): embed-store's Redis
#   Cluster tests start real servers on loopback ports and never skip. Installed with
#   apt-get when missing (as root, or through sudo).
# Everything else a test needs (certificates, fixtures) is made by the test itself or
# committed. CPU only: GPU tests are feature-gated or #[ignore]d.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-server)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "== installing ${need_apt[*]} (apt-get)"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y -q "${need_apt[@]}" \
        || { $SUDO apt-get update -q && $SUDO apt-get install -y -q "${need_apt[@]}"; }
fi

exec cargo test --workspace "$@"
