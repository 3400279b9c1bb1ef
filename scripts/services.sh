#!/usr/bin/env bash
# Finds Redis, Postgres and RabbitMQ for flashgate, or starts them. Source it, then call
# `flashgate_services`: it exports REDIS_URL, FLASHGATE_AMQP_URL and FLASHGATE_PG_SERVER (a
# Postgres URL without a database name) and sets DATABASE_URL when the caller had none.
#
# A REDIS_URL, DATABASE_URL or FLASHGATE_AMQP_URL the caller set is never changed: its server is
# checked (for Postgres only the server, since the database may not exist yet: `flashgate
# migrate` creates it), and if it does not answer the function fails and says so.
#
# Where it looks, in order:
#   1. REDIS_URL / DATABASE_URL / FLASHGATE_AMQP_URL, when set (and nothing else for that service);
#   2. the default local ports (127.0.0.1:6379, 127.0.0.1:5432 as user postgres, 127.0.0.1:5672
#      as RabbitMQ's guest);
#   3. `docker compose` (redis, postgres and rabbitmq services of docker-compose.yml) if a Docker
#      engine answers;
#   4. private redis-server, postgres and rabbitmq-server processes on their own ports and data
#      directories under $FLASHGATE_STATE_DIR (default /tmp/flashgate-services), installing the
#      Debian packages first when they are missing and we are root.
# FLASHGATE_PRIVATE_SERVICES=1 skips 1–3 (to test step 4 on a machine that has services).

FLASHGATE_STATE_DIR=${FLASHGATE_STATE_DIR:-/tmp/flashgate-services}
FLASHGATE_PRIVATE_REDIS_PORT=${FLASHGATE_PRIVATE_REDIS_PORT:-16379}
FLASHGATE_PRIVATE_PG_PORT=${FLASHGATE_PRIVATE_PG_PORT:-15432}
# RabbitMQ's inter-node port is this plus 20000, so it must stay below 45536.
FLASHGATE_PRIVATE_AMQP_PORT=${FLASHGATE_PRIVATE_AMQP_PORT:-15673}

_fg_log() { printf '[services] %s\n' "$*" >&2; }

# host and port of a redis:// or postgres:// URL (user, password, path and query stripped)
_fg_host_port() {
  local rest=${1#*://}
  rest=${rest##*@}
  rest=${rest%%/*}
  rest=${rest%%\?*}
  local host=${rest%:*} port=${rest##*:}
  [ "$host" = "$rest" ] && port=$2
  printf '%s %s\n' "${host:-127.0.0.1}" "$port"
}

_fg_redis_ok() {
  local url=${1%%,*} # the first node of a cluster seed list
  if command -v redis-cli >/dev/null 2>&1; then
    [ "$(timeout 3 redis-cli -u "$url" ping 2>/dev/null)" = "PONG" ]
  else
    local hp; read -r -a hp <<<"$(_fg_host_port "$url" 6379)"
    timeout 3 bash -c 'exec 3<>/dev/tcp/$0/$1 && printf "PING\r\n" >&3 && read -r -t 2 line <&3 && [[ $line == +PONG* ]]' "${hp[0]}" "${hp[1]}" 2>/dev/null
  fi
}

_fg_pg_ok() {
  local url=${1%%,*} # the first node of a cluster seed list
  if command -v psql >/dev/null 2>&1; then
    timeout 5 psql "$url" -Atqc 'SELECT 1' >/dev/null 2>&1
  else
    local hp; read -r -a hp <<<"$(_fg_host_port "$url" 5432)"
    timeout 3 bash -c 'exec 3<>/dev/tcp/$0/$1' "${hp[0]}" "${hp[1]}" 2>/dev/null
  fi
}

# Whether the server of a Postgres URL accepts connections (its database may not exist yet).
_fg_pg_server_ok() {
  local hp; read -r -a hp <<<"$(_fg_host_port "$1" 5432)"
  timeout 3 bash -c 'exec 3<>/dev/tcp/$0/$1' "${hp[0]}" "${hp[1]}" 2>/dev/null
}

# Whether something takes TCP connections at an amqp:// URL's host and port.
_fg_amqp_ok() {
  local hp; read -r -a hp <<<"$(_fg_host_port "$1" 5672)"
  timeout 3 bash -c 'exec 3<>/dev/tcp/$0/$1' "${hp[0]}" "${hp[1]}" 2>/dev/null
}

_fg_wait() { # _fg_wait <what> <check-fn> <url>
  local i
  for i in $(seq 1 60); do
    "$2" "$3" && return 0
    sleep 0.5
  done
  _fg_log "$1 did not come up at $3"
  return 1
}

_fg_apt_install() {
  if [ "$(id -u)" != 0 ]; then
    _fg_log "missing $*; install them (apt-get install $*) or set REDIS_URL/DATABASE_URL"
    return 1
  fi
  _fg_log "installing $* with apt-get"
  # A package's own service is not what these scripts use (they start theirs on private ports),
  # and its start fails the install where its port is taken (a broker already answering on
  # 5672, say): invoke-rc.d is told to start nothing while apt runs.
  local policy=/usr/sbin/policy-rc.d placed=0 status=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && placed=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2 || status=$?
  [ "$placed" = 1 ] && rm -f "$policy"
  return "$status"
}

_fg_pg_bin() { # newest Postgres server binary of that name
  command -v "$1" 2>/dev/null && return 0
  ls /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -1 | grep . 
}

_fg_start_private_redis() {
  local url="redis://127.0.0.1:${FLASHGATE_PRIVATE_REDIS_PORT}"
  _fg_redis_ok "$url" && { echo "$url"; return 0; }
  command -v redis-server >/dev/null 2>&1 || _fg_apt_install redis-server redis-tools || return 1
  mkdir -p "$FLASHGATE_STATE_DIR/redis"
  _fg_log "starting a private redis-server on port $FLASHGATE_PRIVATE_REDIS_PORT"
  redis-server --port "$FLASHGATE_PRIVATE_REDIS_PORT" --bind 127.0.0.1 --daemonize yes \
    --dir "$FLASHGATE_STATE_DIR/redis" --save "" --appendonly no \
    --pidfile "$FLASHGATE_STATE_DIR/redis/redis.pid" --logfile "$FLASHGATE_STATE_DIR/redis/redis.log" >&2 || return 1
  _fg_wait redis _fg_redis_ok "$url" && echo "$url"
}

_fg_start_private_postgres() {
  local server="postgres://postgres@127.0.0.1:${FLASHGATE_PRIVATE_PG_PORT}"
  _fg_pg_ok "$server/postgres" && { echo "$server"; return 0; }
  _fg_pg_bin initdb >/dev/null || _fg_apt_install postgresql || return 1
  local initdb pg_ctl data="$FLASHGATE_STATE_DIR/postgres" run=()
  initdb=$(_fg_pg_bin initdb) && pg_ctl=$(_fg_pg_bin pg_ctl) || { _fg_log "no initdb/pg_ctl found"; return 1; }
  mkdir -p "$data"
  if [ "$(id -u)" = 0 ]; then
    # Postgres refuses to run as root: run it as the postgres user (created if missing).
    id postgres >/dev/null 2>&1 || useradd --system --home-dir "$data" postgres
    chown -R postgres "$FLASHGATE_STATE_DIR/postgres"
    chmod 755 "$FLASHGATE_STATE_DIR"
    run=(runuser -u postgres --)
  fi
  if [ ! -f "$data/PG_VERSION" ]; then
    _fg_log "initialising a private Postgres cluster in $data"
    "${run[@]}" "$initdb" -D "$data" -U postgres --auth=trust >/dev/null || return 1
  fi
  _fg_log "starting a private postgres on port $FLASHGATE_PRIVATE_PG_PORT"
  "${run[@]}" "$pg_ctl" -D "$data" -l "$data/postgres.log" -w \
    -o "-p $FLASHGATE_PRIVATE_PG_PORT -c listen_addresses=127.0.0.1 -k $data -c max_connections=300" start >/dev/null || return 1
  _fg_wait postgres _fg_pg_ok "$server/postgres" && echo "$server"
}

# Debian's rabbitmq-server, installed when missing. The test suite needs it even where the broker
# it uses runs elsewhere: the broker fault test runs a node of its own, which it kills and starts.
_fg_rabbitmq_server=/usr/lib/rabbitmq/bin/rabbitmq-server
flashgate_rabbitmq_server() {
  [ -x "$_fg_rabbitmq_server" ] || _fg_apt_install rabbitmq-server || return 1
  [ -x "$_fg_rabbitmq_server" ] || { _fg_log "no $_fg_rabbitmq_server after installing rabbitmq-server"; return 1; }
}

# RabbitMQ on its own port and folders, as the current user (no systemd needed). Installs
# Debian's rabbitmq-server first when it is missing.
_fg_start_private_rabbitmq() {
  local url="amqp://guest:guest@127.0.0.1:${FLASHGATE_PRIVATE_AMQP_PORT}/%2f"
  _fg_amqp_ok "$url" && { echo "$url"; return 0; }
  flashgate_rabbitmq_server || return 1
  local server=$_fg_rabbitmq_server
  local dir="$FLASHGATE_STATE_DIR/rabbitmq"
  mkdir -p "$dir"
  [ -f "$dir/enabled_plugins" ] || echo '[].' >"$dir/enabled_plugins"
  _fg_log "starting a private rabbitmq-server on port $FLASHGATE_PRIVATE_AMQP_PORT"
  RABBITMQ_NODENAME="flashgate${FLASHGATE_PRIVATE_AMQP_PORT}@localhost" \
    RABBITMQ_NODE_PORT="$FLASHGATE_PRIVATE_AMQP_PORT" \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" RABBITMQ_CONFIG_FILE="$dir/rabbitmq" \
    RABBITMQ_PID_FILE="$dir/rabbitmq.pid" \
    setsid nohup "$server" >"$dir/rabbitmq.out" 2>&1 </dev/null &
  # The broker takes a few seconds to boot; AMQP connections are refused until it has.
  local i
  for i in $(seq 1 120); do
    _fg_amqp_ok "$url" && { sleep 1; echo "$url"; return 0; }
    sleep 0.5
  done
  _fg_log "rabbitmq did not come up at $url (see $dir/rabbitmq.out)"
  return 1
}

_fg_docker_up() { # services to start: redis, postgres, rabbitmq
  command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1 || return 1
  local top; top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  _fg_log "starting $* with docker compose"
  # docker-compose.stores.yml publishes them on this machine's loopback, where the tests look.
  (cd "$top" && docker compose -f docker-compose.yml -f docker-compose.stores.yml up -d --wait "$@" >&2) || return 1
  case " $* " in *" redis "*) _fg_wait redis _fg_redis_ok "redis://127.0.0.1:6379" || return 1 ;; esac
  case " $* " in *" postgres "*) _fg_wait postgres _fg_pg_ok "postgres://postgres@127.0.0.1:5432/postgres" || return 1 ;; esac
  case " $* " in *" rabbitmq "*) _fg_wait rabbitmq _fg_amqp_ok "amqp://127.0.0.1:5672" || return 1 ;; esac
}

flashgate_services() {
  local redis="" pg="" amqp=""
  if [ "${FLASHGATE_PRIVATE_SERVICES:-0}" != 1 ]; then
    if [ -n "${FLASHGATE_AMQP_URL:-}" ]; then
      _fg_amqp_ok "$FLASHGATE_AMQP_URL" || { _fg_log "FLASHGATE_AMQP_URL is set but no broker answers there; unset it to let this script find or start one"; return 1; }
      amqp=$FLASHGATE_AMQP_URL
    fi
    if [ -n "${REDIS_URL:-}" ]; then
      _fg_redis_ok "$REDIS_URL" || { _fg_log "REDIS_URL is set but Redis does not answer there; unset it to let this script find or start one"; return 1; }
      redis=$REDIS_URL
    fi
    if [ -n "${DATABASE_URL:-}" ]; then
      _fg_pg_server_ok "$DATABASE_URL" || { _fg_log "DATABASE_URL is set but its Postgres server does not answer; unset it to let this script find or start one"; return 1; }
      pg=keep
    fi
    [ -z "$redis" ] && _fg_redis_ok "redis://127.0.0.1:6379" && redis="redis://127.0.0.1:6379"
    [ -z "$pg" ] && _fg_pg_ok "postgres://postgres@127.0.0.1:5432/postgres" && pg="postgres://postgres@127.0.0.1:5432"
    [ -z "$amqp" ] && _fg_amqp_ok "amqp://127.0.0.1:5672" && amqp="amqp://guest:guest@127.0.0.1:5672/%2f"
    local missing=()
    [ -z "$redis" ] && missing+=(redis)
    [ -z "$pg" ] && missing+=(postgres)
    [ -z "$amqp" ] && missing+=(rabbitmq)
    if [ ${#missing[@]} -gt 0 ] && _fg_docker_up "${missing[@]}"; then
      redis=${redis:-redis://127.0.0.1:6379}
      pg=${pg:-postgres://postgres@127.0.0.1:5432}
      amqp=${amqp:-amqp://guest:guest@127.0.0.1:5672/%2f}
    fi
  else
    unset DATABASE_URL FLASHGATE_AMQP_URL
  fi
  [ -z "$redis" ] && { redis=$(_fg_start_private_redis) || return 1; }
  [ -z "$pg" ] && { pg=$(_fg_start_private_postgres) || return 1; }
  [ -z "$amqp" ] && { amqp=$(_fg_start_private_rabbitmq) || return 1; }
  export REDIS_URL=$redis
  export FLASHGATE_AMQP_URL=$amqp
  if [ "$pg" = keep ]; then
    FLASHGATE_PG_SERVER=${DATABASE_URL%/*}
  else
    FLASHGATE_PG_SERVER=$pg
    export DATABASE_URL="$pg/postgres"
  fi
  export FLASHGATE_PG_SERVER
  _fg_log "redis: $REDIS_URL"
  _fg_log "postgres: ${DATABASE_URL%%\?*}"
  _fg_log "rabbitmq: ${FLASHGATE_AMQP_URL#*@}"
}

# Deletes every key of the namespace $1 from $REDIS_URL: on each server of the list (every master
# of a cluster seed list), one DEL per key, since a DEL of keys from several slots is refused on a
# cluster even within one node. Each key is sent double-quoted, its \ and " escaped: redis-cli
# splits an unquoted line at spaces and refuses one with an unbalanced quote, and keys carry what
# requests carried (Schemathesis's admin ids left keys such as `...:admin:NA0,'-...` behind).
# Fails when redis-cli is missing.
flashgate_delete_namespace() {
  command -v redis-cli >/dev/null 2>&1 || return 1
  local server
  for server in ${REDIS_URL//,/ }; do
    redis-cli -u "$server" --scan --pattern "$1:*" |
      sed 's/\\/\\\\/g; s/"/\\"/g; s/^/DEL "/; s/$/"/' | redis-cli -u "$server" >/dev/null
  done
}

# A local Redis Cluster of three masters, for the cluster pass of the tests and for trying
# cluster mode: the same redis-server binary with `--cluster-enabled yes`, formed with
# `redis-cli --cluster create`. Reuses one that is already up. Exports FLASHGATE_CLUSTER_URL, the
# comma-separated seed list REDIS_URL takes with FLASHGATE_REDIS_CLUSTER=true. The nodes keep
# nothing on disk but their nodes.conf under $FLASHGATE_STATE_DIR/cluster.
FLASHGATE_CLUSTER_BASE_PORT=${FLASHGATE_CLUSTER_BASE_PORT:-37001}

_fg_cluster_ok() { # cluster_state:ok as seen by the first node
  [ "$(timeout 3 redis-cli -p "$FLASHGATE_CLUSTER_BASE_PORT" cluster info 2>/dev/null | tr -d '\r' | grep '^cluster_state:')" = "cluster_state:ok" ]
}

flashgate_cluster() {
  local ports=() urls=() port i
  for i in 0 1 2; do ports+=($((FLASHGATE_CLUSTER_BASE_PORT + i))); done
  for port in "${ports[@]}"; do urls+=("redis://127.0.0.1:$port"); done
  if ! _fg_cluster_ok; then
    command -v redis-server >/dev/null 2>&1 || _fg_apt_install redis-server redis-tools || return 1
    for port in "${ports[@]}"; do
      _fg_redis_ok "redis://127.0.0.1:$port" && continue
      local dir="$FLASHGATE_STATE_DIR/cluster/$port"
      # A node that was never part of a formed cluster starts afresh.
      rm -rf "$dir" && mkdir -p "$dir"
      _fg_log "starting cluster node on port $port"
      redis-server --port "$port" --bind 127.0.0.1 --daemonize yes --dir "$dir" \
        --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
        --save "" --appendonly no --maxmemory-policy noeviction \
        --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >&2 || return 1
      _fg_wait "cluster node" _fg_redis_ok "redis://127.0.0.1:$port" || return 1
    done
    _fg_log "forming a cluster of three masters on ports ${ports[*]}"
    local hosts=(); for port in "${ports[@]}"; do hosts+=("127.0.0.1:$port"); done
    redis-cli --cluster create "${hosts[@]}" --cluster-replicas 0 --cluster-yes >/dev/null || return 1
    for i in $(seq 1 60); do _fg_cluster_ok && break; sleep 0.5; done
    _fg_cluster_ok || { _fg_log "the cluster did not reach cluster_state:ok"; return 1; }
  fi
  FLASHGATE_CLUSTER_URL=$(IFS=,; echo "${urls[*]}")
  export FLASHGATE_CLUSTER_URL
  _fg_log "redis cluster: $FLASHGATE_CLUSTER_URL"
}
