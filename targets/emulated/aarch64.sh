#!/usr/bin/env bash
# An emulated aarch64 TVM RPC device on this x86-64 machine: qemu user-mode emulation, an aarch64
# Python with the TVM runtime, its RPC server on loopback. Debian and PyPI packages only.
#
#   targets/emulated/aarch64.sh setup                 # once: qemu, arm64 sysroot, TVM wheels (root)
#   targets/emulated/aarch64.sh start [--port 9091] [--tracker HOST:PORT --key KEY]
#   targets/emulated/aarch64.sh stop                  # the server started by "start"
#   targets/emulated/aarch64.sh serve [...]           # as start, in the foreground
#   targets/emulated/aarch64.sh status | python ARGS  # is it up? | run the emulated Python
#
# Then, on the host:
#   sepconv compile mobilenet_v2:0.35@96 --target aarch64-linux-gnu -o build/mbv2-arm
#   python -c 'from sepconv.compiler.runtime import time_artifact as t;
#              print(t("build/mbv2-arm", "rpc://127.0.0.1:9091", runs=5))'
#   sepconv tune mobilenet_v2:0.35@96 --target aarch64-linux-gnu --device rpc://127.0.0.1:9091
#
# Timings under emulation are NOT ARM performance (qemu translates every instruction): the device
# is for correctness and for exercising the RPC/tracker path, not for benchmark numbers.
#
# Files live in $SEPCONV_AARCH64_CACHE (default ~/.cache/sepconv/aarch64): sysroot/ (the arm64
# .debs unpacked), site-packages/ (the aarch64 wheels unpacked), run/ (pid and log of "start").
# About 520 MB. Setup needs root (apt-get, binfmt_misc) and network access to Debian and PyPI.
set -euo pipefail

CACHE="${SEPCONV_AARCH64_CACHE:-$HOME/.cache/sepconv/aarch64}"
SYSROOT="$CACHE/sysroot"
SITE="$CACHE/site-packages"
RUN="$CACHE/run"
STAMP="$CACHE/.ready-v1"
PY="$SYSROOT/usr/bin/python3.11"
QEMU=/usr/bin/qemu-aarch64-static

TVM_WHEELS=(
  apache-tvm==0.27.0.post1
  apache-tvm-ffi==0.1.14.post1  # 0.1.15.x segfaults in TIR JSON serialisation (FACTS.md)
  numpy ml_dtypes typing_extensions psutil cloudpickle
)
DEBS=(
  python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 zlib1g libexpat1 libssl3
  libffi8 libstdc++6 libgcc-s1 libbz2-1.0 liblzma5 libsqlite3-0 libncursesw6 libtinfo6
  libreadline8 libuuid1 libcrypt1 libdb5.3 libgdbm6 libnsl2 libtirpc3
)
# The standard qemu-aarch64 binfmt_misc entry; "F" opens the interpreter now, so it works in
# chroots and for any process started later (TVM's RPC server re-executes sys.executable).
BINFMT=':qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:'"$QEMU"':F'

log() { echo "[aarch64.sh] $*" >&2; }
die() { log "error: $*"; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "'$*' needs root (run setup as root or install sudo)"; fi
}

register_binfmt() {
  local dir=/proc/sys/fs/binfmt_misc
  if [ ! -e "$dir/register" ]; then
    as_root mount -t binfmt_misc binfmt_misc "$dir" \
      || die "cannot mount binfmt_misc at $dir (a container without CAP_SYS_ADMIN?)"
  fi
  if [ -e "$dir/qemu-aarch64" ]; then
    grep -q enabled "$dir/qemu-aarch64" || die "binfmt entry qemu-aarch64 exists but is disabled"
    return
  fi
  echo "$BINFMT" | as_root tee "$dir/register" >/dev/null \
    || die "cannot register qemu-aarch64 with binfmt_misc"
  log "registered qemu-aarch64 with binfmt_misc"
}

setup() {
  local t0=$SECONDS
  if [ -f "$STAMP" ] && [ -x "$QEMU" ]; then
    register_binfmt
    log "already set up in $CACHE"
    return
  fi
  command -v apt-get >/dev/null || die "setup needs a Debian/Ubuntu system (apt-get)"
  log "installing qemu-user-static and the aarch64 cross compiler (apt)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    qemu-user-static gcc-aarch64-linux-gnu unzip >/dev/null
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    as_root dpkg --add-architecture arm64
  fi
  as_root apt-get update -qq
  mkdir -p "$CACHE/debs" "$SYSROOT" "$SITE" "$CACHE/wheels"
  log "downloading ${#DEBS[@]} arm64 packages into $CACHE/debs"
  (cd "$CACHE/debs" && apt-get download -qq "${DEBS[@]/%/:arm64}")
  for deb in "$CACHE"/debs/*.deb; do dpkg -x "$deb" "$SYSROOT"; done
  log "downloading aarch64 wheels (TVM runtime) into $CACHE/wheels"
  python3 -m pip download -q --no-deps --only-binary=:all: \
    --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 \
    --platform manylinux_2_17_aarch64 --python-version 3.11 --implementation cp \
    -d "$CACHE/wheels" "${TVM_WHEELS[@]}"
  for whl in "$CACHE"/wheels/*.whl; do unzip -qo "$whl" -d "$SITE"; done
  register_binfmt
  log "checking the emulated Python imports TVM (takes ~15 s under emulation)"
  run_python -c 'import tvm, platform; print("aarch64 TVM", tvm.__version__, platform.machine())'
  touch "$STAMP"
  log "set up in $((SECONDS - t0)) s; $(du -sh "$CACHE" | cut -f1) in $CACHE"
}

run_python() {
  [ -x "$PY" ] || die "not set up: run '$0 setup' first"
  QEMU_LD_PREFIX="$SYSROOT" PYTHONPATH="$SITE" PYTHONNOUSERSITE=1 "$PY" "$@"
}

server_args() {
  HOST=127.0.0.1 PORT=9091 PORT_END=""
  ARGS=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --host) HOST="$2"; shift 2 ;;
      --port) PORT="$2"; shift 2 ;;
      --port-end) PORT_END="$2"; shift 2 ;;
      --tracker|--key|--custom-addr) ARGS+=("$1" "$2"); shift 2 ;;
      *) die "unknown option $1 (use --host, --port, --port-end, --tracker, --key)" ;;
    esac
  done
  ARGS+=(--host "$HOST" --port "$PORT" --port-end "${PORT_END:-$((PORT + 1))}")
}

serve() {
  [ -f "$STAMP" ] || die "not set up: run '$0 setup' first"
  register_binfmt
  server_args "$@"
  log "starting the aarch64 TVM RPC server on $HOST:$PORT (emulated; ~15 s to import TVM)"
  exec env QEMU_LD_PREFIX="$SYSROOT" PYTHONPATH="$SITE" PYTHONNOUSERSITE=1 \
    "$PY" -m tvm.exec.rpc_server "${ARGS[@]}"
}

start() {
  [ -f "$STAMP" ] || die "not set up: run '$0 setup' first"
  register_binfmt
  server_args "$@"
  mkdir -p "$RUN"
  if [ -f "$RUN/server.pid" ] && kill -0 "$(cat "$RUN/server.pid")" 2>/dev/null; then
    die "a server is already running (pid $(cat "$RUN/server.pid")); '$0 stop' first"
  fi
  QEMU_LD_PREFIX="$SYSROOT" PYTHONPATH="$SITE" PYTHONNOUSERSITE=1 \
    nohup "$PY" -m tvm.exec.rpc_server "${ARGS[@]}" >"$RUN/server.log" 2>&1 &
  echo $! >"$RUN/server.pid"
  local i
  for i in $(seq 1 240); do
    if grep -q "bind to" "$RUN/server.log" 2>/dev/null; then
      log "aarch64 RPC server up after ${i}s: $(grep -o 'bind to [^ ]*' "$RUN/server.log" | tail -1)"
      return
    fi
    kill -0 "$(cat "$RUN/server.pid")" 2>/dev/null || { cat "$RUN/server.log" >&2; die "server exited"; }
    sleep 1
  done
  die "the server did not come up in 240 s; see $RUN/server.log"
}

stop() {
  if [ -f "$RUN/server.pid" ]; then
    local pid
    pid="$(cat "$RUN/server.pid")"
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      # its session workers are children: end them with it
      pkill -TERM -P "$pid" 2>/dev/null || true
      log "stopped pid $pid"
    fi
    rm -f "$RUN/server.pid"
  fi
}

status() {
  if [ -f "$STAMP" ]; then log "set up in $CACHE"; else log "not set up"; fi
  if [ -f "$RUN/server.pid" ] && kill -0 "$(cat "$RUN/server.pid")" 2>/dev/null; then
    log "server running, pid $(cat "$RUN/server.pid"): $(grep -o 'bind to [^ ]*' "$RUN/server.log" | tail -1)"
  else
    log "no server running"
    return 1
  fi
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  setup) setup ;;
  serve) serve "$@" ;;
  start) start "$@" ;;
  stop) stop ;;
  status) status ;;
  python) run_python "$@" ;;
  env) echo "QEMU_LD_PREFIX=$SYSROOT PYTHONPATH=$SITE $PY" ;;
  *) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
