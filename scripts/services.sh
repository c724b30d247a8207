#!/usr/bin/env bash
# The servers the backend tests talk to, on this machine:
#   redis  Redis on 127.0.0.1:6379 (no persistence: test data only)
#   nats   NATS with JetStream on 127.0.0.1:4222
#   rabbitmq  RabbitMQ on 127.0.0.1:5672 (guest/guest)
#
#   bash scripts/services.sh            # all three
#   bash scripts/services.sh redis      # only the ones named
#
# Safe to run any number of times: a service that already answers on its port is left
# alone. A missing server binary is installed with apt-get only when running as root on a
# Debian-like system; otherwise the line says what to install. One line per service says
# what was found or done; the exit status is 1 when a requested service is still down
# (2 for a service name this script does not know).
#
# A server started here writes its log and pid file to $TASKFLOW_SERVICES_DIR (default
# $TMPDIR/taskflow-services). TASKFLOW_REDIS_PORT / TASKFLOW_NATS_PORT /
# TASKFLOW_RABBITMQ_PORT choose other ports. RabbitMQ (an Erlang node) may take up to
# TASKFLOW_RABBITMQ_WAIT seconds (default 120) to answer after it starts.
set -uo pipefail

HOST=127.0.0.1
STATE="${TASKFLOW_SERVICES_DIR:-${TMPDIR:-/tmp}/taskflow-services}"
WAIT_SECONDS="${TASKFLOW_SERVICES_WAIT:-20}"

answers() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

wait_for() {
  local port=$1 tries=$((${2:-$WAIT_SECONDS} * 10))
  while ((tries-- > 0)); do
    answers "$port" && return 0
    sleep 0.1
  done
  return 1
}

find_binary() {
  # Debian puts nats-server in /usr/sbin, which is not on a normal user's PATH.
  command -v "$1" 2>/dev/null || { [ -x "/usr/sbin/$1" ] && echo "/usr/sbin/$1"; }
}

APT_UPDATED=""
apt_install() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || return 1
  if [ -z "$APT_UPDATED" ]; then
    apt-get update -qq >/dev/null 2>&1 || return 1
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null 2>&1
}

# ensure NAME PORT BINARY PACKAGE START_FUNCTION [WAIT_SECONDS]
ensure() {
  local name=$1 port=$2 binary=$3 package=$4 start=$5 wait=${6:-$WAIT_SECONDS} path
  if answers "$port"; then
    echo "$name $HOST:$port: already running"
    return 0
  fi
  path=$(find_binary "$binary")
  if [ -z "$path" ]; then
    if ! apt_install "$package"; then
      echo "$name $HOST:$port: FAILED: not running and $binary is not installed" \
        "(install the Debian package '$package' or run this script as root)"
      return 1
    fi
    path=$(find_binary "$binary")
  fi
  mkdir -p "$STATE/$name"
  if ! "$start" "$path" "$port" >>"$STATE/$name.log" 2>&1; then
    echo "$name $HOST:$port: FAILED: $binary did not start (see $STATE/$name.log)"
    return 1
  fi
  if ! wait_for "$port" "$wait"; then
    echo "$name $HOST:$port: FAILED: started but not answering after ${wait}s" \
      "(see $STATE/$name.log)"
    return 1
  fi
  echo "$name $HOST:$port: started ($path, log $STATE/$name.log)"
}

start_redis() {
  "$1" --daemonize yes --bind "$HOST" --port "$2" --save "" --appendonly no \
    --dir "$STATE/redis" --logfile "$STATE/redis.log" --pidfile "$STATE/redis.pid"
}

start_nats() {
  # nats-server has no daemon mode: detach it from this shell so it outlives the script.
  nohup setsid "$1" -a "$HOST" -p "$2" -js -sd "$STATE/nats" -P "$STATE/nats.pid" \
    </dev/null >>"$STATE/nats.log" 2>&1 &
}

start_rabbitmq() {
  # rabbitmq-server -detached returns at once; the node answers some seconds later.
  RABBITMQ_NODE_IP_ADDRESS="$HOST" RABBITMQ_NODE_PORT="$2" "$1" -detached
}

services=("$@")
[ ${#services[@]} -gt 0 ] || services=(redis nats rabbitmq)
mkdir -p "$STATE"
status=0
for service in "${services[@]}"; do
  case "$service" in
    redis) ensure redis "${TASKFLOW_REDIS_PORT:-6379}" redis-server redis-server start_redis || status=1 ;;
    nats) ensure nats "${TASKFLOW_NATS_PORT:-4222}" nats-server nats-server start_nats || status=1 ;;
    rabbitmq) ensure rabbitmq "${TASKFLOW_RABBITMQ_PORT:-5672}" rabbitmq-server rabbitmq-server \
      start_rabbitmq "${TASKFLOW_RABBITMQ_WAIT:-120}" || status=1 ;;
    *)
      echo "services.sh: unknown service '$service' (known: redis nats rabbitmq)" >&2
      status=2
      ;;
  esac
done
exit "$status"
