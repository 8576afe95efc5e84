#!/usr/bin/env bash
# Makes sure the local PostgreSQL, MariaDB, Redis and NATS (JetStream) the tests default to are answering; starts
# them when they are installed here but stopped. Does nothing for a DATABASE_URL / MYSQL_URL /
# REDIS_URL that points elsewhere. A fresh machine gets MariaDB with
# `apt-get install mariadb-server` (root over TCP without a password, database `test`:
# `mysql -uroot -e "CREATE DATABASE IF NOT EXISTS test"`). Bounded in time; exits non-zero with a message when a server stays down.
set -u

pg_local() { [[ "${DATABASE_URL:-}" == *"@127.0.0.1"* || "${DATABASE_URL:-}" == *"@localhost"* ]]; }
mysql_local() { [[ "${MYSQL_URL:-}" == *"@127.0.0.1"* || "${MYSQL_URL:-}" == *"@localhost"* ]]; }
nats_local() { [[ "${NATS_URL:-}" == *"//127.0.0.1"* || "${NATS_URL:-}" == *"//localhost"* ]]; }
nats_up() { (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; }
redis_local() { [[ "${REDIS_URL:-}" == *"//127.0.0.1"* || "${REDIS_URL:-}" == *"//localhost"* ]]; }

wait_for() { # name, seconds, command...
  local name=$1 seconds=$2; shift 2
  for _ in $(seq 1 $((seconds * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "services: $name did not answer within ${seconds}s" >&2
  return 1
}

status=0
if [ -n "${DATABASE_URL:-}" ] && pg_local && command -v pg_isready >/dev/null; then
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    if [ -d /etc/postgresql ] && command -v pg_ctlcluster >/dev/null; then
      echo "services: starting PostgreSQL"
      pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
    fi
    wait_for PostgreSQL 30 pg_isready -q -h 127.0.0.1 -p 5432 || status=1
  fi
fi
if [ -n "${MYSQL_URL:-}" ] && mysql_local && command -v mysqladmin >/dev/null; then
  if ! mysqladmin -h 127.0.0.1 -uroot ping >/dev/null 2>&1; then
    if [ -x /usr/sbin/mariadbd ]; then
      echo "services: starting MariaDB"
      mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
      start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql || true
    fi
    wait_for MariaDB 30 mysqladmin -h 127.0.0.1 -uroot ping || status=1
  fi
fi
if [ -n "${REDIS_URL:-}" ] && redis_local && command -v redis-cli >/dev/null; then
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    if command -v redis-server >/dev/null; then
      echo "services: starting Redis"
      mkdir -p /var/lib/redis /var/log/redis
      redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
    fi
    wait_for Redis 30 redis-cli -h 127.0.0.1 -p 6379 ping || status=1
  fi
fi
if [ -n "${NATS_URL:-}" ] && nats_local && ! nats_up; then
  if [ -x /usr/sbin/nats-server ]; then
    echo "services: starting NATS with JetStream"
    mkdir -p /var/lib/nats-server
    nohup /usr/sbin/nats-server -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server \
      -l /var/log/nats-server.log >/dev/null 2>&1 &
  fi
  wait_for NATS 30 nats_up || status=1
fi
exit $status
