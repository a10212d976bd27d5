#!/usr/bin/env bash
# Start the local MariaDB and Redis this project needs, each only if it is not answering yet
# (idempotent: run it as often as you like). Used by .ci/run; `make run` points here when a
# service is down. With Docker instead: `docker compose up -d db cache`.
set -euo pipefail

if ! mysqladmin -uroot -h127.0.0.1 ping >/dev/null 2>&1; then
  echo "start_services: starting MariaDB"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
  for _ in $(seq 1 60); do mysqladmin -uroot -h127.0.0.1 ping >/dev/null 2>&1 && break; sleep 1; done
  mysqladmin -uroot -h127.0.0.1 ping >/dev/null 2>&1 \
    || { echo "start_services: MariaDB did not come up on 127.0.0.1:3306" >&2; exit 1; }
fi

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "start_services: starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 1; done
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 \
    || { echo "start_services: Redis did not come up on 127.0.0.1:6379" >&2; exit 1; }
fi
