#!/usr/bin/env bash
# Install the Debian packages the test suite needs, each only if it is missing: Chromium (the
# page's browser tests), docker-compose (validates docker-compose.yaml), Redis and MariaDB (the
# services, and private instances for the fault tests), Node.js/npm (the page's JS libraries),
# iproute2 (ss: the server's listen backlog).
# Runs apt-get as root, or through sudo. `make test` calls it; so does CI, through `make test`.
set -euo pipefail

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
{ command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ]; } || need+=(mariadb-server)
command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
command -v ss >/dev/null 2>&1 || need+=(iproute2)
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  apt=(apt-get)
elif command -v sudo >/dev/null 2>&1; then
  apt=(sudo apt-get)
else
  echo "install_test_tools: missing ${need[*]}; install them (apt-get install ${need[*]})" \
       "or run the tests with SKIP_MISSING_TOOLS=1" >&2
  exit 1
fi
echo "install_test_tools: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
"${apt[@]}" update -qq
"${apt[@]}" install -y -qq "${need[@]}" >/dev/null
