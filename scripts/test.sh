#!/usr/bin/env bash
# The one test command: deps, build, unit tests, then the integration tests once per S3 server
# (seaweedfs, moto, garage). Exit non-zero on any failure.
#
#   scripts/test.sh                  # everything
#   BUCKETFS_SKIP_GARAGE=1 scripts/test.sh
#   BUCKETFS_TEST_SERVERS="moto" scripts/test.sh -- case10   # servers / test filter
#   BUCKETFS_TEST_THREADS=4          # parallel tests per server run (default 4)
#   BUCKETFS_TEST_TIMEOUT=1200       # seconds per server run
#   BUCKETFS_SKIP_HEAVY=1            # skip the peak-memory run (4 x 1 GiB writers, ~5 min)
#   BUCKETFS_SKIP_PJDFSTEST=1        # skip the pjdfstest CI subset (PJD_CI_MIN_RATE=N: threshold)
set -uo pipefail
cd "$(dirname "$0")/.."

SERVERS=${BUCKETFS_TEST_SERVERS:-seaweedfs moto garage}
THREADS=${BUCKETFS_TEST_THREADS:-4}
TIMEOUT=${BUCKETFS_TEST_TIMEOUT:-1200}
FILTER=()
if [ "${1:-}" = "--" ]; then shift; FILTER=("$@"); fi

banner() { printf '\n==== %s ====\n' "$*"; }
declare -a SUMMARY=()
SKIP_LOG=$(mktemp /tmp/bucketfs-test-skips.XXXXXX)
export BUCKETFS_TEST_SKIP_LOG=$SKIP_LOG
fail=0
t_all=$(date +%s)

banner "install-deps"
t0=$(date +%s)
if ! scripts/install-deps.sh; then echo "install-deps.sh failed" >&2; exit 1; fi
SUMMARY+=("install-deps: ok ($(( $(date +%s) - t0 )) s)")

banner "cargo build --all-targets"
t0=$(date +%s)
if ! cargo build --all-targets; then echo "build failed" >&2; exit 1; fi
SUMMARY+=("build: ok ($(( $(date +%s) - t0 )) s)")

banner "cargo fmt --check, cargo clippy -D warnings"
t0=$(date +%s)
if cargo fmt --all -- --check && cargo clippy --all-targets -- -D warnings; then
  SUMMARY+=("fmt + clippy: ok ($(( $(date +%s) - t0 )) s)")
else
  SUMMARY+=("fmt + clippy: FAILED"); fail=1
fi

banner "unit tests"
t0=$(date +%s)
unit_args=(--bins)
[ -f src/lib.rs ] && unit_args+=(--lib)
if cargo test "${unit_args[@]}"; then
  SUMMARY+=("unit tests: ok ($(( $(date +%s) - t0 )) s)")
else
  SUMMARY+=("unit tests: FAILED"); fail=1
fi

# The benchmark script on tiny sizes (SeaweedFS, every client once): that it works, not speed.
banner "benchmark smoke (bench/run.sh --smoke)"
t0=$(date +%s)
if BENCH_NO_BUILD=1 timeout -k 10 600 bench/run.sh --smoke; then
  SUMMARY+=("benchmark smoke: ok ($(( $(date +%s) - t0 )) s)")
else
  SUMMARY+=("benchmark smoke: FAILED"); fail=1
fi

# The reference-model property test once more, over each real server (fewer cases).
for s in $SERVERS; do
  if [ "$s" = garage ] && [ "${BUCKETFS_SKIP_GARAGE:-0}" = 1 ]; then continue; fi
  banner "model test on $s"
  t0=$(date +%s)
  mdir=$(mktemp -d /tmp/bucketfs-model-XXXXXX)
  if scripts/s3-server.sh start "$s" "$mdir" >"$mdir/start.log" 2>&1 &&
     ( set -a; . "$mdir/env"; set +a; BUCKETFS_MODEL_S3=1 cargo test --lib on_a_real_server ); then
    SUMMARY+=("model test on $s: ok ($(( $(date +%s) - t0 )) s)")
  else
    cat "$mdir/start.log" >&2 || true
    SUMMARY+=("model test on $s: FAILED"); fail=1
  fi
  scripts/s3-server.sh stop "$s" "$mdir" >/dev/null 2>&1 || true
  rm -rf "$mdir"
done

# Lazy-unmount any FUSE mount a killed test binary left behind (only the harness's own dirs).
sweep_mounts() {
  local left="" m
  # Only dead ones (daemon gone: ENOTCONN): a concurrent run's live mounts are not ours.
  for m in $(awk '$3 ~ /^fuse/ && $2 ~ /\/bucketfs-test-/ {print $2}' /proc/mounts); do
    stat "$(printf '%b' "$m")" >/dev/null 2>&1 || left="$left $m"
  done
  if [ -n "$left" ]; then
    echo "WARNING: FUSE mounts left behind, unmounting: $left" >&2
    for m in $left; do fusermount3 -u -z "$(printf '%b' "$m")" || true; done
    return 1
  fi
  return 0
}

for s in $SERVERS; do
  if [ "$s" = garage ] && [ "${BUCKETFS_SKIP_GARAGE:-0}" = 1 ]; then
    banner "GARAGE SKIPPED (BUCKETFS_SKIP_GARAGE=1): integration tests did NOT run on Garage"
    SUMMARY+=("integration on garage: SKIPPED (BUCKETFS_SKIP_GARAGE=1)")
    continue
  fi
  banner "integration tests on $s"
  t0=$(date +%s)
  # timeout signals the whole process group: the test binary dies, its S3 server and bucketfs
  # daemons follow through PDEATHSIG.
  BUCKETFS_TEST_SERVER=$s timeout -k 30 "$TIMEOUT" \
    cargo test --no-fail-fast --test '*' -- --test-threads="$THREADS" "${FILTER[@]}"
  rc=$?
  if ! sweep_mounts; then rc=${rc/#0/1}; fi
  if [ "$rc" = 0 ]; then
    SUMMARY+=("integration on $s: ok ($(( $(date +%s) - t0 )) s)")
  else
    [ "$rc" = 124 ] && note=" (timed out after ${TIMEOUT}s)" || note=""
    SUMMARY+=("integration on $s: FAILED rc=$rc$note ($(( $(date +%s) - t0 )) s)"); fail=1
  fi
done

# --- issue 3: peak memory (four 1 GiB writers, one server) and the pjdfstest CI subset ---
# Both are skipped when a test filter is given; BUCKETFS_SKIP_HEAVY=1 / BUCKETFS_SKIP_PJDFSTEST=1
# skip them too. The full pjdfstest run: scripts/pjdfstest.sh (no arguments).
if [ ${#FILTER[@]} -eq 0 ] && [ "${BUCKETFS_SKIP_HEAVY:-0}" != 1 ]; then
  banner "peak memory: four 1 GiB writers at once, --max-memory 256 (seaweedfs, BUCKETFS_HEAVY=1)"
  t0=$(date +%s)
  heavy_log=$(mktemp /tmp/bucketfs-test-heavy.XXXXXX)
  BUCKETFS_HEAVY=1 BUCKETFS_TEST_SERVER=seaweedfs timeout -k 30 1200 \
    cargo test --test durability -- --exact heavy_peak_memory_four_1gib_writers --nocapture 2>&1 | tee "$heavy_log"
  rc=${PIPESTATUS[0]}
  if ! sweep_mounts; then rc=${rc/#0/1}; fi
  peak=$(grep -o 'VmHWM [0-9.]* MiB' "$heavy_log" | head -1)
  rm -f "$heavy_log"
  if [ "$rc" = 0 ]; then
    SUMMARY+=("peak memory: ok, ${peak:-?} ($(( $(date +%s) - t0 )) s)")
  else
    SUMMARY+=("peak memory: FAILED rc=$rc ${peak:-} ($(( $(date +%s) - t0 )) s)"); fail=1
  fi
fi
# The directories that fit in ~75 s (open is left out: open::interact_2gb uploads 2 GiB of zeros).
# Threshold: below the subset's measured rate (85.9% on 2026-12-04 on all three servers, after
# special files, key-length checks and times; the rest are hard links and >1024-byte keys, see
# docs/SEMANTICS.md), with a margin for noise; raise it as conformance improves.
PJD_CI_DIRS="chmod chown ftruncate truncate mkdir rmdir symlink rename unlink link utimensat mkfifo mknod"
PJD_CI_MIN_RATE=${PJD_CI_MIN_RATE:-80}
if [ ${#FILTER[@]} -eq 0 ] && [ "${BUCKETFS_SKIP_PJDFSTEST:-0}" != 1 ]; then
  banner "pjdfstest CI subset on seaweedfs (fails below ${PJD_CI_MIN_RATE}%)"
  t0=$(date +%s)
  pjd_log=$(mktemp /tmp/bucketfs-test-pjd.XXXXXX)
  # shellcheck disable=SC2086
  PJD_MIN_RATE=$PJD_CI_MIN_RATE timeout -k 30 900 scripts/pjdfstest.sh $PJD_CI_DIRS 2>&1 | tee "$pjd_log"
  rc=${PIPESTATUS[0]}
  rate=$(grep -o 'PASS RATE: [0-9.]*%' "$pjd_log" | tail -1 | cut -d' ' -f3)
  rm -f "$pjd_log"
  if [ "$rc" = 0 ]; then
    SUMMARY+=("pjdfstest CI subset: ok, pass rate ${rate:-?} (threshold ${PJD_CI_MIN_RATE}%) ($(( $(date +%s) - t0 )) s)")
  else
    SUMMARY+=("pjdfstest CI subset: FAILED rc=$rc, pass rate ${rate:-?} (threshold ${PJD_CI_MIN_RATE}%)"); fail=1
  fi
fi

banner "summary ($(( $(date +%s) - t_all )) s)"
printf '  %s\n' "${SUMMARY[@]}"
if [ -s "$SKIP_LOG" ]; then
  echo "  skipped on a server that deviates from AWS:"
  sed 's/^/    /' "$SKIP_LOG"
fi
rm -f "$SKIP_LOG"
exit $fail
