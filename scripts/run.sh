#!/usr/bin/env bash
# The main job on a fresh machine: build bucketfs, start a local SeaweedFS S3 server with a
# bucket, and mount that bucket (authentik's /data layout) — then leave it running.
#
#   scripts/run.sh [MOUNTPOINT]     # default /tmp/bucketfs/data
#   scripts/run.sh stop             # unmount (pending uploads finish first) and stop the server
#
# State lives in /tmp/bucketfs: server data, env (endpoint and keys), logs.
set -euo pipefail
cd "$(dirname "$0")/.."
STATE=${BUCKETFS_STATE:-/tmp/bucketfs}
log() { echo "run: $*"; }

if [ "${1:-}" = stop ]; then
  if [ -f "$STATE/mountpoint" ]; then
    mp=$(cat "$STATE/mountpoint")
    if grep -q " $mp fuse" /proc/mounts; then
      fusermount3 -u "$mp" && log "unmounted $mp"
    fi
    if [ -f "$STATE/bucketfs.pid" ]; then
      pid=$(cat "$STATE/bucketfs.pid")
      while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    fi
  fi
  scripts/s3-server.sh stop seaweedfs "$STATE/server" || true
  rm -f "$STATE/mountpoint" "$STATE/bucketfs.pid"
  exit 0
fi

MNT=${1:-$STATE/data}
mkdir -p "$STATE" "$MNT"
if grep -q " $MNT fuse" /proc/mounts; then
  log "$MNT is already mounted; stop it first with: scripts/run.sh stop"
  exit 1
fi

BUCKETFS_SKIP_GARAGE=1 scripts/install-deps.sh
log "building bucketfs (release)"
cargo build --release --quiet
scripts/s3-server.sh start seaweedfs "$STATE/server"
# shellcheck disable=SC1091
source "$STATE/server/env"

log "mounting s3://$BUCKETFS_TEST_BUCKET at $MNT"
nohup target/release/bucketfs mount "$BUCKETFS_TEST_BUCKET" "$MNT" \
  --endpoint "$AWS_ENDPOINT_URL" --region "$AWS_REGION" --force-path-style \
  --uid "${BUCKETFS_UID:-1000}" --gid "${BUCKETFS_GID:-1000}" --allow-other \
  >"$STATE/bucketfs.log" 2>&1 &
echo $! >"$STATE/bucketfs.pid"
echo "$MNT" >"$STATE/mountpoint"
for _ in $(seq 100); do
  grep -q " $MNT fuse" /proc/mounts && break
  if ! kill -0 "$(cat "$STATE/bucketfs.pid")" 2>/dev/null; then
    cat "$STATE/bucketfs.log" >&2; exit 1
  fi
  sleep 0.1
done
grep -q " $MNT fuse" /proc/mounts || { cat "$STATE/bucketfs.log" >&2; exit 1; }

# authentik's layout: the file backend writes /data/media/public/... and /data/reports/public/...
# (as authentik's uid, so the service user owns what it will write into)
as_svc() { setpriv --reuid "${BUCKETFS_UID:-1000}" --regid "${BUCKETFS_GID:-1000}" --clear-groups -- "$@"; }
as_svc mkdir -p "$MNT/media/public/application-icons" "$MNT/reports/public"
as_svc sh -c "printf '<svg xmlns=\"http://www.w3.org/2000/svg\"/>' >'$MNT/media/public/application-icons/example.svg'"
cat <<TXT

bucketfs is up.
  mount point : $MNT   (bucket $BUCKETFS_TEST_BUCKET on SeaweedFS at $AWS_ENDPOINT_URL)
  try         : ls -lR $MNT; cat $MNT/media/public/application-icons/example.svg
  the bucket  : source $STATE/server/env && aws --endpoint-url \$AWS_ENDPOINT_URL s3 ls --recursive s3://\$BUCKETFS_TEST_BUCKET
  logs        : $STATE/bucketfs.log
  stop        : scripts/run.sh stop      (unmounts, then stops the S3 server)
TXT
