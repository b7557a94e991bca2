#!/usr/bin/env bash
# Make sure PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) answer; start them if they are
# installed here but stopped. The S3 server (nanio) is started by the tests themselves. The pages the
# app serves are tested in Debian's chromium (with chromium-driver): installed here when missing.
set -euo pipefail

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null || python3 - <<'PY'
import socket, sys
s = socket.socket(); s.settimeout(1)
sys.exit(0 if s.connect_ex(("127.0.0.1", 5432)) == 0 else 1)
PY
}
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

wait_until() { local what=$1; shift; for _ in $(seq 1 60); do "$@" && return 0; sleep 0.5; done; echo "$what did not come up" >&2; return 1; }

if ! pg_up; then
  echo "PostgreSQL is not answering on 127.0.0.1:5432; starting it"
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start || true
  fi
  wait_until PostgreSQL pg_up
fi
if ! redis_up; then
  echo "Redis is not answering on 127.0.0.1:6379; starting it"
  if command -v redis-server >/dev/null; then
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log
  fi
  wait_until Redis redis_up
fi
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "chromium or chromedriver is missing; installing Debian's chromium and chromium-driver"
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "install them with: sudo apt-get install chromium chromium-driver" >&2
    exit 1
  fi
fi
echo "services: PostgreSQL and Redis are up; chromium $(chromium --version 2>/dev/null | awk '{print $2}')"
