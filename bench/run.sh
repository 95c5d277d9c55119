#!/usr/bin/env bash
# bucketfs against its peers, on the same machine, the same local S3 server and the same bucket.
#
#   bench/run.sh                    # full run: Garage then SeaweedFS; writes docs/BENCHMARKS.md
#   bench/run.sh --smoke            # tiny sizes, SeaweedFS only, 1 iteration: checks the script works
#   options: --servers "garage seaweedfs"  --clients "raw bucketfs s3fs rclone"  --iterations N
#            --out FILE (default docs/BENCHMARKS.md; --smoke: WORK/BENCHMARKS.md)  --keep (keep WORK)
#   env: BENCH_WORK=DIR (default /tmp/bucketfs-bench.PID), BENCH_NO_BUILD=1 (use binaries as built)
#
# Clients, each on a fresh mount per iteration (so no client keeps caches from the last one):
#   raw       target/*/s3bench: aws-sdk-s3 with nothing in between (the server's physical limit)
#   bucketfs  release build (debug in --smoke), default settings
#   s3fs      Debian's s3fs, flags below (S3FS_OPTS)
#   rclone    Debian's rclone mount, flags below (RCLONE_OPTS)
# Workloads (page cache dropped before each; see docs/BENCHMARKS.md for the definitions):
#   seq_read_1 / seq_read_4   fio rw=read bs=256k ioengine=psync, 1 job / 4 jobs on 4 other files
#   rand_read                 fio rw=randread bs=256k, 1 job, on a file of its own: every block
#                             once, so the whole object is read (a client that downloads whole
#                             objects, as s3fs does in 256 MiB steps, serves it from local disk)
#   rand_read_sparse          the same on another file, stopping after 1/16 of it (256 reads of
#                             a 1 GiB object): what a random reader of a large object costs
#   (each workload reads objects no earlier workload of that mount touched: s3fs keeps the
#   data of closed files, so a re-read would measure its local copy)
#   seq_write                 fio rw=write bs=256k fsync_on_close, timed until the object is in
#                             the bucket with its full size (rclone uploads after close)
#   ttfb_big / ttfb_small     open + read of 1 byte of a 1 GiB file (1 sample per fresh mount) /
#                             of 4 KiB files (3 files) not touched before
#   create_1000               1000 files of 16 KiB, write + close each, timed until all are listed
#   ls_l_10k / walk_10k       `ls -l` of a directory of 10 000 files; readdir+lstat walk of a
#                             tree of 10 000 files (100 directories)
#   authentik                 walk of media/public (2000 icons), then read 200 of them whole
# Peak RSS of every mount daemon is taken per workload (VmHWM, reset before each workload).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

SMOKE=0 KEEP=0 ITER= SERVERS= CLIENTS= OUT=
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --keep) KEEP=1 ;;
    --iterations) ITER=$2; shift ;;
    --servers) SERVERS=$2; shift ;;
    --clients) CLIENTS=$2; shift ;;
    --out) OUT=$2; shift ;;
    *) echo "usage: $0 [--smoke] [--servers S] [--clients C] [--iterations N] [--out FILE] [--keep]" >&2; exit 2 ;;
  esac
  shift
done

if [ "$SMOKE" = 1 ]; then
  PROFILE=debug
  : "${ITER:=1}" "${SERVERS:=seaweedfs}" "${CLIENTS:=raw bucketfs s3fs rclone}"
  BIG_MIB=8 NFLAT=100 NTREE=100 TREE_DIRS=10 NCREATE=20 NREAD=10
  ICONS_APP=30 ICONS_SRC=8 ICONS_BG=2 TTFB_SAMPLES=1 RT_SEQ=5 RT_RAND=2
else
  PROFILE=release
  : "${ITER:=3}" "${SERVERS:=garage seaweedfs}" "${CLIENTS:=raw bucketfs s3fs rclone}"
  BIG_MIB=1024 NFLAT=10000 NTREE=10000 TREE_DIRS=100 NCREATE=1000 NREAD=200
  ICONS_APP=1500 ICONS_SRC=400 ICONS_BG=100 TTFB_SAMPLES=3 RT_SEQ=30 RT_RAND=10
fi
NICONS=$((ICONS_APP + ICONS_SRC + ICONS_BG))

WORK=${BENCH_WORK:-/tmp/bucketfs-bench.$$}
mkdir -p "$WORK"; WORK=$(cd "$WORK" && pwd)
[ -n "$OUT" ] || { [ "$SMOKE" = 1 ] && OUT=$WORK/BENCHMARKS.md || OUT=$ROOT/docs/BENCHMARKS.md; }
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
BFS=$ROOT/target/$PROFILE/bucketfs
S3B=$ROOT/target/$PROFILE/s3bench

log() { printf '%s bench: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---- flags of each client (the usual performance flags of each, as their docs recommend) ----
BFS_OPTS=()   # defaults: 64 MiB adaptive read-ahead in 8 MiB parallel GETs, 8 MiB parts x4
S3FS_OPTS=(-o parallel_count=16 -o multipart_size=16 -o multireq_max=20
  -o max_stat_cache_size=100000 -o enable_noobj_cache -o big_writes -o max_write=131072
  -o max_readahead=1048576 -o use_path_request_style)
RCLONE_OPTS=(--vfs-cache-mode writes --vfs-write-back 0s --buffer-size 64M
  --vfs-read-chunk-size 16M --vfs-read-chunk-size-limit off --use-server-modtime
  --s3-chunk-size 16M --s3-upload-concurrency 8 --transfers 8 --s3-no-check-bucket
  --s3-disable-checksum --attr-timeout 1s --max-read-ahead 1M)

# ---- cleanup: every mount, daemon and server this script started ----
declare -a PIDS=() MOUNTS=() SERVER_DIRS=()
cleanup() {
  local rc=$? m p d
  trap - EXIT INT TERM
  stop_watchdog
  [ -n "$MEASURED" ] && kill "$MEASURED" 2>/dev/null || true
  for m in "${MOUNTS[@]-}"; do
    [ -n "$m" ] && mountpoint -q "$m" 2>/dev/null && { fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; }
  done
  for p in "${PIDS[@]-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
  for d in "${SERVER_DIRS[@]-}"; do [ -n "$d" ] && scripts/s3-server.sh stop "$d" >/dev/null 2>&1 || true; done
  if [ "$KEEP" = 0 ] && [ "$rc" = 0 ]; then
    rm -rf "$WORK/srv" "$WORK/cache" "$WORK/mnt"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- helpers ----
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2])-float(sys.argv[1]):.4f}')" "$1" "$(now)"; }

drop_caches() {
  [ "$SMOKE" = 1 ] && return 0   # the smoke run checks the script, not speed; sync is slow on a busy machine
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then echo 3 >/proc/sys/vm/drop_caches; fi
}

# rec CLIENT WORKLOAD JSON: one result line
rec() {
  python3 - "$SERVER" "$1" "$2" "$ITERNO" "$3" >>"$RESULTS" <<'PY'
import json, sys
s, c, w, i, d = sys.argv[1:6]
print(json.dumps({"server": s, "client": c, "workload": w, "iter": int(i), "data": json.loads(d)}))
PY
}

FAILED=0
fail() { # CLIENT WORKLOAD MESSAGE
  log "FAILED: $SERVER $1 $2: $3"
  rec "$1" "$2" "{\"error\": $(python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$3")}"
  FAILED=$((FAILED + 1))
}

fio_json() { python3 "$ROOT/bench/report.py" fio; }

# measure COMMAND...: runs it (a function or a program) with a watchdog of WATCHDOG s;
# stdout in WORK/out.txt, stderr in WORK/err.txt; fails if it fails or prints no JSON object
WATCHDOG=900 MEASURED= WD=
measure() {
  local rc=0
  "$@" >"$WORK/out.txt" 2>"$WORK/err.txt" &
  MEASURED=$!
  watchdog "$MEASURED" "$WORK/err.txt" >/dev/null &
  WD=$!
  wait "$MEASURED" || rc=$?
  stop_watchdog; MEASURED=
  [ "$rc" = 0 ] && grep -q '^{' "$WORK/out.txt"
}
# watchdog PID ERRFILE: SIGTERM to PID after WATCHDOG s; stopped with SIGTERM, it ends its
# sleep and exits without killing anything
watchdog() {
  local s=
  trap '[ -n "$s" ] && kill "$s" 2>/dev/null; exit 0' TERM
  sleep "$WATCHDOG" & s=$!
  wait "$s"
  kill -TERM "$1" 2>/dev/null
  echo "watchdog: killed after $WATCHDOG s" >>"$2"
}
stop_watchdog() {
  [ -n "$WD" ] || return 0
  kill -TERM "$WD" 2>/dev/null || true; wait "$WD" 2>/dev/null || true; WD=
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# S3 request counts of the bucketfs daemon (Prometheus endpoint), as JSON {operation: n}
METRICS_PORT=
s3req() {
  [ -n "$METRICS_PORT" ] || { echo '{}'; return; }
  curl -s --max-time 5 "http://127.0.0.1:$METRICS_PORT/metrics" | python3 -c '
import json, re, sys
d = {}
for l in sys.stdin:
    m = re.match(r"bucketfs_s3_requests_total\{operation=\"(\w+)\",outcome=\"(\w+)\"\} (\d+)", l)
    if m: d[m[1]] = d.get(m[1], 0) + int(m[3])
print(json.dumps(d))' 2>/dev/null || echo '{}'
}

# ---- the dataset (same objects for every client) ----
fill() {
  log "$SERVER: filling the bucket (8 x $BIG_MIB MiB, $NFLAT + $NTREE + $NICONS small objects)"
  local i t0; t0=$(now)
  for i in f0 f1 f2 f3 f4 r0 r1 t0; do "$S3B" fill-big "big/$i" "$BIG_MIB" >/dev/null; done
  "$S3B" fill-small ttfb/s 8 4096 >/dev/null
  "$S3B" fill-small flat/ "$NFLAT" 1024 >/dev/null
  "$S3B" fill-small tree/ "$NTREE" 1024 --dirs "$TREE_DIRS" >/dev/null
  "$S3B" fill-small media/public/application-icons/ "$ICONS_APP" 4096 --ext svg --vary >/dev/null
  "$S3B" fill-small media/public/source-icons/ "$ICONS_SRC" 8192 --ext png --vary >/dev/null
  "$S3B" fill-small media/public/flow-backgrounds/ "$ICONS_BG" 102400 --ext jpg --vary >/dev/null
  log "$SERVER: filled in $(elapsed "$t0") s"
}

# ---- mounts ----
mount_client() { # CLIENT MOUNTPOINT -> DAEMON_PID
  local c=$1 m=$2 i
  mkdir -p "$m"
  METRICS_PORT=
  case "$c" in
    bucketfs)
      local extra=()
      if "$BFS" mount --help 2>/dev/null | grep -q -- --metrics-addr; then
        METRICS_PORT=$(free_port); extra+=(--metrics-addr "127.0.0.1:$METRICS_PORT")
      fi
      mkdir -p "$WORK/cache/bucketfs"
      "$BFS" mount "$BUCKETFS_TEST_BUCKET" "$m" --endpoint "$AWS_ENDPOINT_URL" \
        --region "$AWS_REGION" --force-path-style --cache-dir "$WORK/cache/bucketfs" \
        --log-level warn "${BFS_OPTS[@]}" "${extra[@]}" \
        </dev/null >>"$WORK/bucketfs.log" 2>&1 &
      ;;
    s3fs)
      printf '%s:%s\n' "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >"$WORK/s3fs.pw"
      chmod 600 "$WORK/s3fs.pw"
      s3fs "$BUCKETFS_TEST_BUCKET" "$m" -f -o url="$AWS_ENDPOINT_URL" -o endpoint="$AWS_REGION" \
        -o passwd_file="$WORK/s3fs.pw" "${S3FS_OPTS[@]}" \
        </dev/null >>"$WORK/s3fs.log" 2>&1 &
      ;;
    rclone)
      mkdir -p "$WORK/cache/rclone"
      env -u AWS_CA_BUNDLE RCLONE_CONFIG_B_TYPE=s3 RCLONE_CONFIG_B_PROVIDER=Other \
        RCLONE_CONFIG_B_ENDPOINT="$AWS_ENDPOINT_URL" RCLONE_CONFIG_B_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" \
        RCLONE_CONFIG_B_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" RCLONE_CONFIG_B_REGION="$AWS_REGION" \
        RCLONE_CONFIG_B_FORCE_PATH_STYLE=true \
        rclone mount "b:$BUCKETFS_TEST_BUCKET" "$m" --cache-dir "$WORK/cache/rclone" "${RCLONE_OPTS[@]}" \
        </dev/null >>"$WORK/rclone.log" 2>&1 &
      ;;
  esac
  DAEMON_PID=$!
  PIDS+=("$DAEMON_PID"); MOUNTS+=("$m")
  for i in $(seq 300); do
    if mountpoint -q "$m" && stat "$m" >/dev/null 2>&1; then return 0; fi
    kill -0 "$DAEMON_PID" 2>/dev/null || { log "$c exited during mount (see $WORK/$c.log)"; return 1; }
    sleep 0.1
  done
  log "$c did not mount in 30 s"; return 1
}

unmount_client() { # MOUNTPOINT PID
  local m=$1 pid=$2 i
  fusermount3 -u "$m" 2>/dev/null || umount "$m" 2>/dev/null || fusermount3 -u -z "$m" 2>/dev/null || true
  for i in $(seq 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then log "daemon $pid still running after unmount; killing"; kill -9 "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
}

# ---- workloads on a mount ----
# run_mount_workload CLIENT NAME FUNCTION: page cache dropped, RSS peak reset, S3 requests counted
run_mount_workload() {
  local c=$1 w=$2 f=$3 out before after rss
  drop_caches
  "$S3B" rss "$DAEMON_PID" --reset >/dev/null 2>&1 || true
  before=$(s3req)
  if measure "$f"; then
    out=$(cat "$WORK/out.txt")
    rss=$("$S3B" rss "$DAEMON_PID" 2>/dev/null || echo '{}')
    after=$(s3req)
    rec "$c" "$w" "$(python3 - "$out" "$rss" "$before" "$after" <<'PY'
import json, sys
d = json.loads(sys.argv[1]); d.update(json.loads(sys.argv[2]))
b, a = json.loads(sys.argv[3]), json.loads(sys.argv[4])
if a:
    d["s3req"] = {k: v - b.get(k, 0) for k, v in a.items() if v - b.get(k, 0)}
print(json.dumps(d))
PY
)"
    log "$SERVER $c $w: $out"
  else
    fail "$c" "$w" "$(tail -c 400 "$WORK/err.txt" | tr '\n' ' ')"
  fi
}

FIO_COMMON=(--ioengine=psync --bs=256k --output-format=json --group_reporting)
w_seq_read_1() {
  fio --name=r --readonly --rw=read --filename="$M/big/f0" --size="${BIG_MIB}m" --runtime="$RT_SEQ" "${FIO_COMMON[@]}" | fio_json
}
w_seq_read_4() {
  local a=() i
  for i in 1 2 3 4; do a+=(--name="r$i" --filename="$M/big/f$i"); done
  fio --readonly --rw=read --size="${BIG_MIB}m" --runtime="$RT_SEQ" "${FIO_COMMON[@]}" "${a[@]}" | fio_json
}
w_rand_read() {
  fio --name=rr --readonly --rw=randread --filename="$M/big/r0" --size="${BIG_MIB}m" --runtime="$RT_RAND" "${FIO_COMMON[@]}" | fio_json
}
w_rand_read_sparse() {
  fio --name=rr --readonly --rw=randread --filename="$M/big/r1" --size="${BIG_MIB}m" \
    --io_size="$((BIG_MIB * 64))k" --runtime="$RT_RAND" "${FIO_COMMON[@]}" | fio_json
}
w_seq_write() {
  local d=w/$CLIENT-$ITERNO t0 f
  mkdir -p "$M/$d"
  t0=$(now)
  f=$(fio --name=w --rw=write --filename="$M/$d/f" --size="${BIG_MIB}m" --fsync_on_close=1 \
    --end_fsync=1 --refill_buffers=1 --fallocate=none --fadvise_hint=0 --create_on_open=1 "${FIO_COMMON[@]}" | fio_json) || return 1
  local fio_s; fio_s=$(elapsed "$t0")
  "$S3B" wait-size "$d/f" $((BIG_MIB * 1048576)) --timeout 600 >/dev/null || return 1
  python3 - "$(elapsed "$t0")" "$fio_s" "$BIG_MIB" "$f" <<'PY'
import json, sys
s, fs, mib = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
print(json.dumps({"secs": s, "mibps": mib / s, "close_returned_s": fs, "fio_mibps": json.loads(sys.argv[4])["mibps"]}))
PY
}
w_ttfb() { # FILES...: median of samples, page cache dropped before each
  local f x s=()
  for f in "$@"; do
    drop_caches
    x=$("$S3B" fs-ttfb "$M/$f") || return 1
    s+=("$x")
  done
  python3 -c '
import json, statistics, sys
v = [json.loads(a)["ttfb_s"] for a in sys.argv[1:]]
print(json.dumps({"ttfb_ms": statistics.median(v) * 1e3, "samples_ms": [round(x * 1e3, 3) for x in v]}))' "${s[@]}"
}
w_ttfb_big() { w_ttfb big/t0; }
w_ttfb_small() { local a=() i; for i in $(seq 0 $((TTFB_SAMPLES - 1))); do a+=("$(printf 'ttfb/sf%05d.bin' "$i")"); done; w_ttfb "${a[@]}"; }
w_create() {
  local d=c/$CLIENT-$ITERNO t0 out
  mkdir -p "$M/$d"
  t0=$(now)
  out=$("$S3B" fs-create "$M/$d" "$NCREATE" 16384) || return 1
  "$S3B" wait-count "$d/" "$NCREATE" --timeout 600 >/dev/null || return 1
  python3 - "$(elapsed "$t0")" "$NCREATE" "$out" <<'PY'
import json, sys
s, n = float(sys.argv[1]), int(sys.argv[2])
print(json.dumps({"secs": s, "ops": n / s, "close_returned_s": json.loads(sys.argv[3])["secs"]}))
PY
}
w_ls() {
  local t0 n; t0=$(now)
  n=$(ls -l "$M/flat" | wc -l) || return 1
  [ "$n" -ge "$NFLAT" ] || { echo "ls -l listed $n lines, want $NFLAT" >&2; return 1; }
  echo "{\"secs\": $(elapsed "$t0"), \"lines\": $n}"
}
w_walk() {
  local out; out=$("$S3B" fs-walk "$M/tree") || return 1
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); assert d["files"] >= int(sys.argv[2]), d; print(json.dumps(d))' "$out" "$NTREE"
}
w_authentik() { "$S3B" fs-authentik "$M/media/public" "$NREAD"; }

run_mount_client() {
  local c=$1
  M=$WORK/mnt/$c
  if ! mount_client "$c" "$M"; then fail "$c" mount "could not mount"; return; fi
  # cold listings first, on the fresh mount
  run_mount_workload "$c" ls_l_10k w_ls
  run_mount_workload "$c" walk_10k w_walk
  run_mount_workload "$c" authentik w_authentik
  run_mount_workload "$c" ttfb_small w_ttfb_small
  run_mount_workload "$c" ttfb_big w_ttfb_big
  run_mount_workload "$c" seq_read_1 w_seq_read_1
  run_mount_workload "$c" seq_read_4 w_seq_read_4
  run_mount_workload "$c" rand_read w_rand_read
  run_mount_workload "$c" rand_read_sparse w_rand_read_sparse
  run_mount_workload "$c" seq_write w_seq_write
  run_mount_workload "$c" create_1000 w_create
  unmount_client "$M" "$DAEMON_PID"
}

# ---- the raw client: the same workloads straight on S3 ----
raw() { # WORKLOAD COMMAND...
  local w=$1 out; shift
  drop_caches
  if measure "$@"; then
    out=$(cat "$WORK/out.txt"); rec raw "$w" "$out"; log "$SERVER raw $w: $out"
  else
    fail raw "$w" "$(tail -c 400 "$WORK/err.txt" | tr '\n' ' ')"
  fi
}
raw_ttfb() { # KEYS...
  local k x s=()
  for k in "$@"; do x=$("$S3B" ttfb "$k") || return 1; s+=("$x"); done
  python3 -c '
import json, statistics, sys
v = [json.loads(a)["ttfb_s"] for a in sys.argv[1:]]
print(json.dumps({"ttfb_ms": statistics.median(v) * 1e3, "samples_ms": [round(x * 1e3, 3) for x in v]}))' "${s[@]}"
}
run_raw() {
  local i small=()
  for i in $(seq 0 $((TTFB_SAMPLES - 1))); do small+=("$(printf 'ttfb/sf%05d.bin' "$i")"); done
  raw ls_l_10k "$S3B" list flat/
  raw walk_10k "$S3B" walk tree/
  raw authentik "$S3B" authentik media/public/ "$NREAD"
  raw ttfb_small raw_ttfb "${small[@]}"
  raw ttfb_big raw_ttfb big/t0
  raw seq_read_1 "$S3B" seq-read big/f0 --runtime "$RT_SEQ"
  raw seq_read_4 "$S3B" seq-read big/f1 big/f2 big/f3 big/f4 --conc 4 --runtime "$RT_SEQ"
  raw rand_read "$S3B" rand-read big/r0 --runtime "$RT_RAND"
  # one ranged GET per read whatever the share of the object read: the same rate
  raw rand_read_sparse "$S3B" rand-read big/r1 --runtime "$RT_RAND"
  raw seq_write "$S3B" seq-write "w/raw-$ITERNO/f" "$BIG_MIB"
  raw create_1000 "$S3B" put-many "c/raw-$ITERNO/" "$NCREATE" 16384
}

# ---- main ----
for t in fio python3 curl; do command -v "$t" >/dev/null || die "$t is missing (scripts/install-deps.sh)"; done
if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
  log "building bucketfs and s3bench ($PROFILE)"
  if [ "$PROFILE" = release ]; then cargo build --release --bin bucketfs --bin s3bench >&2
  else cargo build --bin bucketfs --bin s3bench >&2; fi
fi
[ -x "$BFS" ] && [ -x "$S3B" ] || die "missing $BFS or $S3B"
declare -a RUN_CLIENTS=()
for c in $CLIENTS; do
  case "$c" in
    raw|bucketfs) RUN_CLIENTS+=("$c") ;;
    s3fs|rclone) if command -v "$c" >/dev/null; then RUN_CLIENTS+=("$c"); else log "WARNING: $c not installed, skipped"; fi ;;
    *) die "unknown client $c" ;;
  esac
done

BENCH_FLAGS_BUCKETFS="--force-path-style --cache-dir DIR ${BFS_OPTS[*]}" BENCH_FLAGS_S3FS="${S3FS_OPTS[*]}" \
  BENCH_FLAGS_RCLONE="--cache-dir DIR ${RCLONE_OPTS[*]}" \
  python3 "$ROOT/bench/report.py" meta "$BFS" "$PROFILE" "$ITER" "$SMOKE" >"$WORK/meta.json"
T_START=$(date +%s)
for SERVER in $SERVERS; do
  SRV=$WORK/srv/$SERVER
  SERVER_DIRS+=("$SRV")
  log "starting $SERVER"
  scripts/s3-server.sh start "$SERVER" "$SRV" >&2
  # shellcheck disable=SC1091
  source "$SRV/env"
  ITERNO=0
  fill
  for ITERNO in $(seq 1 "$ITER"); do
    for CLIENT in "${RUN_CLIENTS[@]}"; do
      rec "$CLIENT" load "{\"loadavg\": \"$(cut -d' ' -f1-3 /proc/loadavg)\"}"
      log "== $SERVER iteration $ITERNO/$ITER: $CLIENT (load $(cut -d' ' -f1-3 /proc/loadavg))"
      if [ "$CLIENT" = raw ]; then run_raw; else run_mount_client "$CLIENT"; fi
    done
  done
  scripts/s3-server.sh stop "$SERVER" "$SRV" >&2
  rm -rf "$SRV/data"
  # after each server, so a long run that is stopped still leaves its tables
  python3 "$ROOT/bench/report.py" report "$RESULTS" "$WORK/meta.json" "$(( $(date +%s) - T_START ))" "$OUT"
done
log "wrote $OUT ($FAILED failed measurements; raw results in $RESULTS)"
if [ "$FAILED" -gt 0 ]; then exit 1; fi
