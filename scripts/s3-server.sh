#!/usr/bin/env bash
# Start/stop a local S3 server for the bucketfs tests.
#
#   s3-server.sh start <seaweedfs|moto|garage> DIR [PORT]   # background; returns when ready
#   s3-server.sh run   <seaweedfs|moto|garage> DIR [PORT]   # foreground; stops the server on
#                                                          # SIGTERM/SIGINT/SIGHUP or when it exits
#   s3-server.sh stop  [SERVER] DIR
#
# The server listens on 127.0.0.1 only (S3 on PORT, or on a free port), keeps its data in
# DIR/data (wiped at start), has the bucket `bucketfs-test`, a read-write key and (seaweedfs,
# garage) a read-only key. When ready, DIR/env holds shell exports:
#   AWS_ENDPOINT_URL AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION BUCKETFS_TEST_BUCKET
#   BUCKETFS_TEST_SERVER [RO_ACCESS_KEY_ID RO_SECRET_ACCESS_KEY] SERVER_PID
# The server's own output goes to DIR/server.log.
set -euo pipefail

DEPS=/opt/bucketfs-deps
BUCKET=bucketfs-test
READY_TIMEOUT=${S3_SERVER_READY_TIMEOUT:-60}

die() { echo "s3-server: $*" >&2; exit 1; }
log() { echo "s3-server: $*" >&2; }

usage() { die "usage: $0 start|run <seaweedfs|moto|garage> DIR [PORT] | stop [SERVER] DIR"; }

randhex() { openssl rand -hex "$1"; }

port_free() { # a TCP port nobody listens on (or is bound to) on 127.0.0.1
  python3 - "$1" <<'PY'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
PY
}

# Ports handed out so far, in a file: pick_port runs in $(...) subshells, where an array
# update would be lost (two picks of one start could return the same port).
PICKED_FILE=/dev/null   # DIR/ports once DIR is known
pick_port() { # random free port below the ephemeral range, not already picked by this script
  local p i
  for i in $(seq 200); do
    p=$(( 20000 + RANDOM % 12000 ))
    grep -qx "$p" "$PICKED_FILE" && continue
    if port_free "$p"; then echo "$p" >>"$PICKED_FILE"; echo "$p"; return 0; fi
  done
  die "no free port found"
}

# curl with SigV4 against the S3 endpoint
s3curl() { # METHOD PATH [curl args...]
  local m=$1 p=$2 code; shift 2
  code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 \
    --aws-sigv4 "aws:amz:${REGION}:s3" -u "${AK}:${SK}" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" \
    -X "$m" "$@" "${ENDPOINT}${p}" 2>/dev/null) || true
  echo "${code:-000}"
}

wait_ready() { # until the bucket answers HeadBucket=200 with the rw key
  local deadline=$(( $(date +%s) + READY_TIMEOUT )) code
  while :; do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      # A port that was free when picked can be taken before the server binds it (by a
      # process that does not take the lock): the caller retries on fresh ports.
      if grep -qE "address already in use|Port allocation failed" "$DIR/server.log" 2>/dev/null; then
        log "$SERVER could not bind a port (address already in use)"
        return 2
      fi
      tail -n 30 "$DIR/server.log" >&2 || true
      die "$SERVER exited during start-up (log: $DIR/server.log)"
    fi
    code=$(s3curl HEAD "/$BUCKET" -I)
    [ "$code" = 200 ] && return 0
    if [ "$(date +%s)" -ge "$deadline" ]; then
      tail -n 30 "$DIR/server.log" >&2 || true
      die "$SERVER not ready after ${READY_TIMEOUT}s (last HeadBucket: $code)"
    fi
    sleep 0.2
  done
}

# Start the server process in the background, its pid in SERVER_PID.
# In run mode it gets PDEATHSIG=KILL so it cannot outlive this script.
launch() {
  if [ "$MODE" = run ]; then
    setpriv --pdeathsig KILL -- "$@" >>"$DIR/server.log" 2>&1 </dev/null 8>&- &
  else
    setsid "$@" >>"$DIR/server.log" 2>&1 </dev/null 8>&- &
  fi
  SERVER_PID=$!
}

start_seaweedfs() {
  local weed=$DEPS/venv/bin/weed
  [ -x "$weed" ] || weed=$(command -v weed || true)
  [ -n "$weed" ] && [ -x "$weed" ] || die "weed not found (run scripts/install-deps.sh)"
  REGION=us-east-1
  AK=AK$(randhex 9); SK=$(randhex 20)
  RO_AK=RO$(randhex 9); RO_SK=$(randhex 20)
  cat >"$DIR/s3.json" <<JSON
{"identities":[
 {"name":"rw","credentials":[{"accessKey":"$AK","secretKey":"$SK"}],"actions":["Admin","Read","Write","List","Tagging"]},
 {"name":"ro","credentials":[{"accessKey":"$RO_AK","secretKey":"$RO_SK"}],"actions":["Read","List"]}]}
JSON
  chmod 600 "$DIR/s3.json"
  local s3=${PORT:-$(pick_port)} master filer volume
  master=$(pick_port); filer=$(pick_port); volume=$(pick_port)
  ENDPOINT=http://127.0.0.1:$s3
  launch "$weed" mini -dir="$DIR/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -s3.port="$s3" -s3.port.grpc="$(pick_port)" \
    -master.port="$master" -master.port.grpc="$(pick_port)" \
    -volume.port="$volume" -volume.port.grpc="$(pick_port)" \
    -filer.port="$filer" -filer.port.grpc="$(pick_port)" \
    -filer.localSocket="$DIR/filer.sock" -s3.localSocket="$DIR/s3.sock" \
    -s3.port.iceberg=0 -s3.port.lance=0 -volume.preStopSeconds=0 \
    -admin.port="$(pick_port)" -admin.port.grpc="$(pick_port)" \
    -admin.ui=false -webdav=false -master.telemetry=false \
    -s3.config="$DIR/s3.json" -bucket="$BUCKET"
}

start_moto() {
  local moto=${MOTO_SERVER:-}
  # the pinned one from install-deps.sh first (the image's moto 5.2.1 breaks multipart uploads)
  [ -n "$moto" ] || { [ -x "$DEPS/venv/bin/moto_server" ] && moto=$DEPS/venv/bin/moto_server; } || true
  [ -n "$moto" ] || moto=$(command -v moto_server || true)
  [ -x "$moto" ] || die "moto_server not found (run scripts/install-deps.sh)"
  REGION=us-east-1
  # moto does not check credentials at all (any key, any signature is accepted)
  AK=AK$(randhex 9); SK=$(randhex 20)
  local s3=${PORT:-$(pick_port)}
  ENDPOINT=http://127.0.0.1:$s3
  # TMPDIR: moto spills objects above ~5 MiB to temp files; keep them in DIR
  mkdir -p "$DIR/data"
  TMPDIR="$DIR/data" launch "$moto" -H 127.0.0.1 -p "$s3"
  # the bucket is created by the client
  local deadline=$(( $(date +%s) + READY_TIMEOUT )) code
  while :; do
    kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 30 "$DIR/server.log" >&2; die "moto exited during start-up"; }
    code=$(s3curl PUT "/$BUCKET")
    [ "$code" = 200 ] && break
    [ "$(date +%s)" -lt "$deadline" ] || die "moto not ready after ${READY_TIMEOUT}s (CreateBucket: $code)"
    sleep 0.2
  done
}

start_garage() {
  local garage=$DEPS/garage/bin/garage
  [ -x "$garage" ] || garage=$(command -v garage || true)
  [ -n "$garage" ] && [ -x "$garage" ] || die "garage not found (run scripts/install-deps.sh without BUCKETFS_SKIP_GARAGE)"
  REGION=garage
  AK=GK$(randhex 12); SK=$(randhex 32)
  RO_AK=GK$(randhex 12); RO_SK=$(randhex 32)
  local s3=${PORT:-$(pick_port)} rpc
  rpc=$(pick_port)
  ENDPOINT=http://127.0.0.1:$s3
  mkdir -p "$DIR/data/meta" "$DIR/data/blocks"
  cat >"$DIR/garage.toml" <<TOML
metadata_dir = "$DIR/data/meta"
data_dir = "$DIR/data/blocks"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(randhex 32)"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"
TOML
  chmod 600 "$DIR/garage.toml"
  GARAGE_DEFAULT_ACCESS_KEY=$AK GARAGE_DEFAULT_SECRET_KEY=$SK GARAGE_DEFAULT_BUCKET=$BUCKET \
    RUST_LOG=${GARAGE_LOG:-garage=warn} \
    launch "$garage" -c "$DIR/garage.toml" server --single-node --default-bucket
  wait_ready || return $?
  # read-only key
  "$garage" -c "$DIR/garage.toml" key import --yes -n ro-key "$RO_AK" "$RO_SK" >>"$DIR/server.log" 2>&1 \
    || die "garage key import failed (log: $DIR/server.log)"
  "$garage" -c "$DIR/garage.toml" bucket allow --read "$BUCKET" --key ro-key >>"$DIR/server.log" 2>&1 \
    || die "garage bucket allow failed (log: $DIR/server.log)"
}

write_env() {
  local tmp=$DIR/env.tmp
  {
    echo "export BUCKETFS_TEST_SERVER=$SERVER"
    echo "export AWS_ENDPOINT_URL=$ENDPOINT"
    echo "export AWS_ACCESS_KEY_ID=$AK"
    echo "export AWS_SECRET_ACCESS_KEY=$SK"
    echo "export AWS_REGION=$REGION"
    echo "export BUCKETFS_TEST_BUCKET=$BUCKET"
    if [ -n "${RO_AK:-}" ]; then
      echo "export RO_ACCESS_KEY_ID=$RO_AK"
      echo "export RO_SECRET_ACCESS_KEY=$RO_SK"
    fi
    echo "export SERVER_PID=$SERVER_PID"
  } >"$tmp"
  chmod 600 "$tmp"
  mv "$tmp" "$DIR/env"   # atomic: readers see all of it or nothing
  echo "$SERVER_PID" >"$DIR/pid"
}

stop_pid() { # PID: SIGTERM, wait up to 15 s, then SIGKILL
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 150); do
    kill -0 "$pid" 2>/dev/null || return 0
    # a zombie child of ours counts as gone once reaped
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  log "pid $pid did not exit"
  return 1
}

cmd=${1:-}; shift || true
case "$cmd" in
  start|run)
    MODE=$cmd
    SERVER=${1:-}; DIR=${2:-}; PORT=${3:-}
    [ -n "$SERVER" ] && [ -n "$DIR" ] || usage
    mkdir -p "$DIR"; DIR=$(cd "$DIR" && pwd)
    if [ -f "$DIR/pid" ] && kill -0 "$(cat "$DIR/pid")" 2>/dev/null; then
      die "a server is already running for $DIR (pid $(cat "$DIR/pid"))"
    fi
    rm -rf "$DIR/data" "$DIR/env" "$DIR/pid" "$DIR/server.log" "$DIR"/*.sock
    PICKED_FILE=$DIR/ports; : >"$PICKED_FILE"
    # Hold a machine-wide lock while picking ports and until the server listens on them,
    # so that servers started concurrently never pick the same port.
    exec 8>/tmp/bucketfs-s3-server-ports.lock
    flock 8
    SERVER_PID=
    STARTED=0
    cleanup() {
      trap - EXIT TERM INT HUP
      if [ -n "${SERVER_PID:-}" ]; then stop_pid "$SERVER_PID" || true; fi
      rm -f "$DIR/env" "$DIR/pid"
    }
    # start mode: kill the server if start-up fails; run mode: always stop it on the way out
    trap '[ "$MODE" = run ] || [ "$STARTED" = 0 ] && cleanup' EXIT
    trap 'cleanup; exit 0' TERM INT HUP
    for attempt in 1 2 3 4; do
      rc=0
      case "$SERVER" in
        seaweedfs) start_seaweedfs; wait_ready || rc=$? ;;
        moto) start_moto ;;
        garage) start_garage || rc=$? ;;
        *) usage ;;
      esac
      [ "$rc" = 0 ] && break
      [ "$rc" = 2 ] && [ -z "$PORT" ] && [ "$attempt" -lt 4 ] || die "$SERVER did not start (log: $DIR/server.log)"
      log "retrying on other ports (attempt $(( attempt + 1 )) of 4)"
      wait "$SERVER_PID" 2>/dev/null || true
      SERVER_PID=
      mv "$DIR/server.log" "$DIR/server.log.$attempt" 2>/dev/null || true
      rm -rf "$DIR/data"
    done
    exec 8>&-
    write_env
    STARTED=1
    [ "$MODE" = run ] || trap - TERM INT HUP
    log "$SERVER ready at $ENDPOINT (pid $SERVER_PID, env in $DIR/env)"
    if [ "$MODE" = run ]; then
      # wait returns early when a trapped signal arrives
      set +e
      while kill -0 "$SERVER_PID" 2>/dev/null; do wait "$SERVER_PID"; done
      log "$SERVER (pid $SERVER_PID) exited"
      exit 1
    fi
    ;;
  stop)
    if [ $# -ge 2 ]; then DIR=$2; else DIR=${1:-}; fi
    [ -n "$DIR" ] || usage
    pid=
    [ -f "$DIR/pid" ] && pid=$(cat "$DIR/pid")
    [ -z "$pid" ] && [ -f "$DIR/env" ] && pid=$(sed -n 's/^export SERVER_PID=//p' "$DIR/env")
    [ -n "$pid" ] || { log "no server recorded in $DIR"; exit 0; }
    stop_pid "$pid"
    rm -f "$DIR/env" "$DIR/pid"
    log "stopped pid $pid"
    ;;
  *) usage ;;
esac
