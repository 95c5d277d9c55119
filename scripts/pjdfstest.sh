#!/usr/bin/env bash
# POSIX conformance: run pjdfstest (the Rust port, crates.io `pjdfstest`) on a bucketfs mount.
#
#   scripts/pjdfstest.sh                    # the whole suite
#   scripts/pjdfstest.sh chmod open rename  # only these directories (test groups)
#
# Installs pjdfstest once into /opt/bucketfs-deps/pjdfstest, builds bucketfs, starts a local
# S3 server (scripts/s3-server.sh, SeaweedFS unless PJD_SERVER=moto|garage), mounts the bucket
# as root with --allow-other (pjdfstest switches users), runs the suite in it, prints pass /
# fail / skip counts per directory and the overall pass rate (passed / (passed + failed)), then
# unmounts and stops the server, also on failure or Ctrl-C.
#
# Environment:
#   PJD_MIN_RATE=N      exit 1 if the pass rate is below N percent (default: report only)
#   PJD_SERVER=NAME     seaweedfs (default) | moto | garage
#   PJD_NAPTIME=S       pjdfstest's sleep between timestamp checks; must exceed the timestamp
#                       granularity (bucketfs stores whole seconds in x-amz-meta-mtime): 1.01
#   PJD_KEEP=1          keep the work dir (output, daemon log) for inspection
#   BUCKETFS_BIN=PATH   use this bucketfs binary instead of building one
# Exit: 0 when the rate is at least PJD_MIN_RATE (or none is set), 1 otherwise, 2 on a setup error.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

DEPS=/opt/bucketfs-deps
PJD_ROOT=$DEPS/pjdfstest
PJD=$PJD_ROOT/bin/pjdfstest
PJD_VERSION=0.2.2
SERVER=${PJD_SERVER:-seaweedfs}
NAPTIME=${PJD_NAPTIME:-1.01}
MIN_RATE=${PJD_MIN_RATE:-}
log() { echo "pjdfstest.sh: $*" >&2; }
die() { log "$*"; exit 2; }

# --- pjdfstest, once -----------------------------------------------------------
if [ -x "$PJD" ] && "$PJD" --version 2>/dev/null | grep -q "$PJD_VERSION"; then
  log "pjdfstest $PJD_VERSION already installed ($PJD)"
else
  log "installing pjdfstest $PJD_VERSION into $PJD_ROOT (about 5 min on 2 cores)"
  mkdir -p "$DEPS"
  CARGO_TARGET_DIR=$DEPS/pjdfstest-target \
    cargo install pjdfstest@"$PJD_VERSION" --locked --root "$PJD_ROOT" >&2 \
    || die "cargo install pjdfstest failed"
fi

# --- bucketfs ------------------------------------------------------------------
if [ -n "${BUCKETFS_BIN:-}" ]; then
  BIN=$BUCKETFS_BIN
else
  cargo build --quiet --bin bucketfs >&2 || die "cargo build failed"
  BIN=${CARGO_TARGET_DIR:-$REPO/target}/debug/bucketfs
fi
[ -x "$BIN" ] || die "no bucketfs binary at $BIN"

# --- work dir, server, mount ---------------------------------------------------
W=$(mktemp -d /tmp/bucketfs-pjdfstest.XXXXXX)
# mktemp makes it 0700: the dummy users pjdfstest switches to must be able to reach the mount.
chmod 755 "$W"
MNT=$W/mnt
FS_PID=
cleanup() {
  trap - EXIT INT TERM HUP
  if grep -qs " $MNT fuse" /proc/mounts; then
    fusermount3 -u "$MNT" 2>/dev/null || { sleep 1; fusermount3 -u "$MNT" 2>/dev/null; } \
      || fusermount3 -u -z "$MNT" 2>/dev/null || true
  fi
  if [ -n "$FS_PID" ]; then
    for _ in $(seq 100); do kill -0 "$FS_PID" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$FS_PID" 2>/dev/null && kill -KILL "$FS_PID" 2>/dev/null
    wait "$FS_PID" 2>/dev/null
  fi
  scripts/s3-server.sh stop "$W/s3" >/dev/null 2>&1 || true
  if [ "${PJD_KEEP:-0}" = 1 ]; then
    log "kept $W"
  elif ! grep -qs " $W/" /proc/mounts; then
    rm -rf "$W"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

scripts/s3-server.sh start "$SERVER" "$W/s3" >"$W/s3-start.log" 2>&1 \
  || { cat "$W/s3-start.log" >&2; die "could not start $SERVER"; }
# shellcheck disable=SC1091
. "$W/s3/env"
mkdir -p "$MNT" "$W/secondary"
PREFIX=pjd-$(date +%s)-$RANDOM
AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true \
  "$BIN" mount "$BUCKETFS_TEST_BUCKET:$PREFIX" "$MNT" \
  --endpoint "$AWS_ENDPOINT_URL" --region "$AWS_REGION" --force-path-style \
  --allow-other --log-level "${PJD_LOG:-warn}" >"$W/bucketfs.log" 2>&1 &
FS_PID=$!
for _ in $(seq 150); do
  grep -qs " $MNT fuse" /proc/mounts && break
  kill -0 "$FS_PID" 2>/dev/null || { cat "$W/bucketfs.log" >&2; die "bucketfs exited before mounting"; }
  sleep 0.2
done
grep -qs " $MNT fuse" /proc/mounts || die "bucketfs did not mount $MNT"

# --- run -----------------------------------------------------------------------
# Features: utimensat with UTIME_NOW, and rename updates the ctime (bucketfs stores it in
# x-amz-meta-ctime; directories in memory).
# Dummy users: existing unprivileged accounts (nobody:nogroup, daemon:daemon), so the script
# creates no users on the machine.
cat >"$W/pjdfstest.toml" <<TOML
[features]
utimensat = {}
utime_now = {}
rename_ctime = {}

[settings]
naptime = $NAPTIME
allow_remount = false

[dummy_auth]
entries = [["nobody", "nogroup"], ["daemon", "daemon"]]
TOML

PATTERNS=()
for d in "$@"; do PATTERNS+=("pjdfstest::tests::$d::"); done
log "running pjdfstest in $MNT (${*:-all directories}; naptime $NAPTIME s, server $SERVER)"
t0=$(date +%s)
(cd "$MNT" && NO_COLOR=1 CLICOLOR=0 "$PJD" -c "$W/pjdfstest.toml" -p "$MNT" -s "$W/secondary" \
  "${PATTERNS[@]}") >"$W/out.txt" 2>&1
pjd_rc=$?
elapsed=$(( $(date +%s) - t0 ))
if ! kill -0 "$FS_PID" 2>/dev/null; then
  log "bucketfs died during the run; last log lines:"; tail -n 30 "$W/bucketfs.log" >&2
fi

# --- report --------------------------------------------------------------------
python3 - "$W/out.txt" "$elapsed" "$pjd_rc" "${MIN_RATE:-}" <<'PY'
import re, sys, collections
out, elapsed, rc, min_rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
text = re.sub(r"\x1b\[[0-9;]*m", "", open(out, errors="replace").read())
per = collections.OrderedDict()
status_re = re.compile(r"^(\S+)\s+(ok|FAILED|skipped|failed as expected|passed unexpectedly)\s*$")
for line in text.splitlines():
    m = status_re.match(line)
    if not m:
        continue
    name, st = m.groups()
    d = name.split("::")[0]
    c = per.setdefault(d, collections.Counter())
    key = {"ok": "pass", "failed as expected": "pass", "FAILED": "fail",
           "passed unexpectedly": "fail", "skipped": "skip"}[st]
    c[key] += 1
tot = collections.Counter()
print(f"\npjdfstest on bucketfs: per directory (test cases)")
print(f"  {'directory':<18} {'pass':>5} {'fail':>5} {'skip':>5} {'rate':>7}")
for d, c in per.items():
    tot.update(c)
    run = c["pass"] + c["fail"]
    rate = f"{100.0 * c['pass'] / run:.1f}%" if run else "-"
    print(f"  {d:<18} {c['pass']:>5} {c['fail']:>5} {c['skip']:>5} {rate:>7}")
run = tot["pass"] + tot["fail"]
rate = 100.0 * tot["pass"] / run if run else 0.0
print(f"  {'TOTAL':<18} {tot['pass']:>5} {tot['fail']:>5} {tot['skip']:>5} {rate:>6.1f}%")
summary = [l for l in text.splitlines() if l.startswith("Summary")]
if summary:
    print("  pjdfstest: " + summary[-1])
elif rc != 0:
    print("  pjdfstest ended without a summary (exit %d); last output:" % rc)
    print("\n".join("    " + l for l in text.splitlines()[-15:]))
# Failures by kind: hard links (an object has one key: link(2) is EPERM, and every test that
# makes a second link to check nlink or ctime fails with it), paths past S3's 1024-byte key
# (pjdfstest builds a PATH_MAX path; bucketfs refuses such a create with ENAMETOOLONG), and
# everything else (with pjdfstest's message).
hard = re.compile(r"^link::|multiply_linked|^unlink::(update_ctime_success|unchanged_ctime_failed)::"
                  r"|^rename::preserve_metadata::")
kinds = collections.OrderedDict((("hard links", []), ("paths past S3's key limit", []), ("other", [])))
lines = text.splitlines()
for i, line in enumerate(lines):
    m = status_re.match(line)
    if not m or m.group(2) not in ("FAILED", "passed unexpectedly"):
        continue
    name = m.group(1)
    msg = lines[i + 1].strip() if i + 1 < len(lines) else ""
    if name.endswith("::enametoolong_path"):
        kinds["paths past S3's key limit"].append(name)
    elif hard.search(name):
        kinds["hard links"].append(name)
    else:
        kinds["other"].append(f"{name}: {msg[:100]}")
for k, v in kinds.items():
    if not v:
        continue
    print(f"  failed, {k} ({len(v)}):")
    if k == "other":
        print("\n".join("    " + x for x in v))
    else:
        print("    " + ", ".join(v))
print(f"PJDFSTEST PASS RATE: {rate:.1f}% ({tot['pass']}/{run}, {tot['skip']} skipped) in {elapsed} s")
if run == 0:
    sys.exit(1)
if min_rate and rate < float(min_rate):
    print(f"PJDFSTEST: pass rate {rate:.1f}% is below the threshold {min_rate}%")
    sys.exit(1)
PY
