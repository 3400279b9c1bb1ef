# Sourced by loadtest.sh, shortcut-race.sh and browser-test.sh: private gates for one run.
#
#   flashgate_private_run NAME    build (FLASHGATE_PROFILE=release|debug, default release), then
#                                 export a private database, Redis namespace and random secrets
#                                 for this run; everything is removed on exit
#   flashgate_free_port           print a free local TCP port
#   flashgate_start_gate PORT     start `flashgate serve` on 127.0.0.1:PORT (extra settings from
#                                 the environment); waits until that process answers, else
#                                 prints its log and exits 2. Sets FLASHGATE_GATE_PID.
#
# FLASHGATE_GATE_BIN runs another build's `flashgate` as the gates (to compare builds);
# migrations and the tools come from this checkout.

flashgate_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

flashgate_private_run() {
  local name=$1
  local profile=${FLASHGATE_PROFILE:-release}
  if [ "$profile" = release ]; then
    cargo build --release --locked -p flashgate -p flashgate-loadtest
  else
    cargo build --locked -p flashgate -p flashgate-loadtest
  fi
  FLASHGATE_BIN_DIR=$PWD/target/$profile
  _fg_run_id="${name}_$$_$RANDOM"
  _fg_gates=()
  export DATABASE_URL="$FLASHGATE_PG_SERVER/flashgate_$_fg_run_id"
  export FLASHGATE_REDIS_NAMESPACE="$name-$_fg_run_id"
  export FLASHGATE_JWT_SECRET="$name-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
  export FLASHGATE_ADMIN_TOKEN="admin-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
  export RUST_LOG=${RUST_LOG:-warn}
  trap _fg_private_cleanup EXIT
  "$FLASHGATE_BIN_DIR/flashgate" migrate >/dev/null
}

flashgate_start_gate() {
  local port=$1
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is taken; choose a free one" >&2
    exit 2
  fi
  local log="target/gate-$_fg_run_id-$port.log"
  FLASHGATE_LISTEN="127.0.0.1:$port" "${FLASHGATE_GATE_BIN:-$FLASHGATE_BIN_DIR/flashgate}" serve 2>"$log" &
  FLASHGATE_GATE_PID=$!
  _fg_gates+=("$FLASHGATE_GATE_PID")
  # This gate, not anything else on the port: it must still run once the port answers.
  for _ in $(seq 1 200); do
    kill -0 "$FLASHGATE_GATE_PID" 2>/dev/null || break
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && kill -0 "$FLASHGATE_GATE_PID" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "the gate on port $port did not start:" >&2
  cat "$log" >&2
  exit 2
}

flashgate_stop_gates() {
  local pid
  for pid in "${_fg_gates[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; done
  _fg_gates=()
}

_fg_private_cleanup() {
  flashgate_stop_gates
  flashgate_delete_namespace "$FLASHGATE_REDIS_NAMESPACE" || true
  if command -v psql >/dev/null 2>&1; then
    psql "$FLASHGATE_PG_SERVER/postgres" -qc "DROP DATABASE IF EXISTS flashgate_$_fg_run_id WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  rm -f target/gate-"$_fg_run_id"-*.log
}
