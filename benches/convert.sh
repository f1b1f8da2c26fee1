#!/usr/bin/env bash
# Side-by-side conversion benchmark: vdisk against qemu-img on the same data.
#
# Builds a realistic source (default 4 GiB virtual: incompressible data, text, explicit
# zeros, holes, many small extents), then for each direction runs qemu-img and vdisk
# alternately RUNS times, checks each output with `qemu-img compare`, and prints the median
# wall and system times of each tool, the ratio (qemu-img / vdisk: above 1 means vdisk is
# faster) and both tools' peak RSS, on the machine as it is and with one core kept busy.
#
#   benches/convert.sh            # uses target/release/vdisk (built if missing)
#   RUNS=7 SIZE_GIB=8 WORK=/var/tmp/vb benches/convert.sh
#   MODE=loaded ONLY='vpc|vdi' benches/convert.sh   # the VHD and VDI rows, one core busy
#   MODE=quiet ONLY='raw -> qcow2$' benches/convert.sh
#   BUSY_CPU=1 benches/convert.sh  # the loaded runs' spinner pinned to CPU 1
#   ONLY=vhdx benches/convert.sh                # the VHDX rows
#   ONLY=qed SIZE_GIB=1 benches/convert.sh      # the QED rows
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
SIZE_GIB=${SIZE_GIB:-4}
WORK=${WORK:-/tmp/vdisk-bench}
VDISK=${VDISK:-target/release/vdisk}
[ -x "$VDISK" ] || cargo build --release -q -p vdisk-cli
VDISK=$(realpath "$VDISK")
mkdir -p "$WORK"
cd "$WORK"

if [ ! -f src.raw ] || [ "$(stat -c %s src.raw)" != $((SIZE_GIB << 30)) ]; then
  echo "building a ${SIZE_GIB} GiB source in $WORK ..." >&2
  rm -f src.raw
  truncate -s "${SIZE_GIB}G" src.raw
  mib=$((SIZE_GIB * 1024))
  # Incompressible data: 1/4 of the disk in 64 MiB extents spread over it.
  for i in $(seq 0 $((mib / 256 - 1))); do
    dd if=/dev/urandom of=src.raw bs=1M seek=$((i * 256)) count=64 conv=notrunc status=none
  done
  # Text (compressible): 1/8 of the disk.
  python3 - "$mib" <<'PY'
import random, sys
mib = int(sys.argv[1])
words = [w.strip() for w in open('/usr/share/dict/words')] if __import__('os').path.exists('/usr/share/dict/words') else None
random.seed(1)
vocab = words or ["".join(random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(random.randint(2, 9))) for _ in range(5000)]
with open("src.raw", "r+b") as f:
    for i in range(mib // 512):
        f.seek((i * 512 + 96) << 20)
        block = []
        size = 0
        while size < (64 << 20):
            line = " ".join(random.choice(vocab) for _ in range(12)) + "\n"
            block.append(line)
            size += len(line)
        f.write("".join(block).encode()[: 64 << 20])
PY
  # Explicit zeros (allocated but zero): 1/16 of the disk.
  for i in $(seq 0 $((mib / 1024 - 1))); do
    dd if=/dev/zero of=src.raw bs=1M seek=$((i * 1024 + 200)) count=64 conv=notrunc status=none
  done
  # Many small extents: 4 KiB every 256 KiB over 256 MiB.
  python3 - <<'PY'
import os
with open("src.raw", "r+b") as f:
    for i in range(1024):
        f.seek((300 << 20) + i * (256 << 10))
        f.write(os.urandom(4096))
PY
  rm -f src.qcow2 base.qcow2 top.qcow2
fi
[ -f src.qcow2 ] || qemu-img convert -f raw -O qcow2 src.raw src.qcow2
if [ ! -f top.qcow2 ]; then
  qemu-img convert -f raw -O qcow2 src.raw base.qcow2
  qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
  # Data over a quarter of the disk from 1/4 in, explicit zeros from 1/2 in.
  qemu-io -f qcow2 -c "write -P 0x5c $((SIZE_GIB * 256))M $((SIZE_GIB * 64))M" \
    -c "write -z $((SIZE_GIB * 512))M $((SIZE_GIB * 32))M" top.qcow2 >/dev/null
fi
# need FILE: makes the other sources on first use, so ONLY= runs build only what they read.
need() {
  [ -f "$1" ] && return
  case $1 in
    src.vmdk) qemu-img convert -f raw -O vmdk src.raw src.vmdk ;;
    src.vhd) qemu-img convert -f raw -O vpc src.raw src.vhd ;;
    src.vdi) qemu-img convert -f raw -O vdi src.raw src.vdi ;;
    src-stream.vmdk) qemu-img convert -f raw -O vmdk -o subformat=streamOptimized src.raw src-stream.vmdk ;;
    src.vhdx) qemu-img convert -f raw -O vhdx src.raw src.vhdx ;;
    src.qed) qemu-img convert -f raw -O qed src.raw src.qed ;;
  esac
}

# MODE=quiet: the machine as it is. MODE=loaded: a second process keeps one core busy for
# the loaded runs (`sh -c 'while :; do :; done'`, pinned to CPU $BUSY_CPU when that is set),
# as a shared build machine would; both tools meet the same spinner. MODE=both (the
# default) runs each row quiet, then loaded. BUSY=1 is the old spelling of MODE=loaded.
MODE=${MODE:-both}
[ "${BUSY:-0}" = 1 ] && MODE=loaded
busy_pid=
start_busy() {
  if [ -n "${BUSY_CPU:-}" ]; then
    taskset -c "$BUSY_CPU" sh -c 'while :; do :; done' &
  else
    sh -c 'while :; do :; done' &
  fi
  busy_pid=$!
}
stop_busy() {
  if [ -n "$busy_pid" ]; then kill "$busy_pid" 2>/dev/null || true; wait "$busy_pid" 2>/dev/null || true; fi
  busy_pid=
}
trap 'stop_busy' EXIT

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# run TOOL ARGS...: prints "wall_s sys_s user_s peak_kib". Every run starts from the same
# page cache: earlier outputs synced and dropped, the source (and its backing files) cached.
# Without this the times were bimodal, 0.3 s or 1.3 s for the same raw -> raw conversion by
# either tool, the difference all kernel time; a run right after a large file was deleted
# was fast.
run() {
  sync
  echo 1 > /proc/sys/vm/drop_caches 2>/dev/null || echo "convert.sh: cannot drop the page cache; times will be noisy" >&2
  cat src.raw src.qcow2 > /dev/null
  [ "$SRC" != top.qcow2 ] || cat base.qcow2 top.qcow2 > /dev/null
  cat "$SRC" > /dev/null
  /usr/bin/time -o time.out -f "%e %S %U %M" "$@" >/dev/null 2>&1
  cat time.out
}

# pass NAME SRC SRCFMT OUTFMT [EXTRA...]: RUNS alternating runs of each tool; sets the
# medians mq mv (wall), sq sv (system time) and the peaks rq rv (RSS, KiB).
pass() {
  local name=$1 src=$2 sfmt=$3 ofmt=$4; shift 4
  local q=() v=() qs=() vs=() qr=() vr=() i=0 tq sq uq mq tv sv uv mv
  SRC=$src
  for _ in $(seq "$RUNS"); do
    rm -f out.q out.v
    # Alternate which tool goes first, so neither always meets a warmer page cache.
    if [ $((i % 2)) = 0 ]; then
      read -r tq sq uq mq < <(run qemu-img convert -f "$sfmt" -O "$ofmt" "$@" "$src" out.q)
      read -r tv sv uv mv < <(run "$VDISK" convert -f "$sfmt" -O "$ofmt" "$@" "$src" out.v)
    else
      read -r tv sv uv mv < <(run "$VDISK" convert -f "$sfmt" -O "$ofmt" "$@" "$src" out.v)
      read -r tq sq uq mq < <(run qemu-img convert -f "$sfmt" -O "$ofmt" "$@" "$src" out.q)
    fi
    i=$((i + 1))
    if ! qemu-img compare -q -f "$ofmt" -F "$ofmt" out.q out.v; then
      echo "$name: outputs differ" >&2; exit 1
    fi
    if { [ "$ofmt" = qcow2 ] || [ "$ofmt" = vhdx ]; } && ! qemu-img check -q -f "$ofmt" out.v; then
      echo "$name: qemu-img check failed" >&2; exit 1
    fi
    q+=("$tq"); v+=("$tv"); qs+=("$sq"); vs+=("$sv"); qr+=("$mq"); vr+=("$mv")
  done
  rm -f out.q out.v
  P_MQ=$(printf '%s\n' "${q[@]}" | median)
  P_MV=$(printf '%s\n' "${v[@]}" | median)
  P_SQ=$(printf '%s\n' "${qs[@]}" | median)
  P_SV=$(printf '%s\n' "${vs[@]}" | median)
  P_RQ=$(printf '%s\n' "${qr[@]}" | sort -n | tail -1)
  P_RV=$(printf '%s\n' "${vr[@]}" | sort -n | tail -1)
}

# cell Q V QSYS VSYS: "qemu-img s | vdisk s | ratio | sys qemu-img/vdisk" (ratio: qemu-img /
# vdisk, above 1 means vdisk is faster).
cell() {
  printf '%6.2f | %6.2f | %5.2fx | %4.2f / %4.2f' "$1" "$2" "$(echo "$1 / $2" | bc -l)" "$3" "$4"
}

# bench NAME SRC SRCFMT OUTFMT [EXTRA...]
bench() {
  local name=$1
  # ONLY=regex runs a subset, e.g. ONLY='-c' or ONLY='raw -> qcow2'.
  if [ -n "${ONLY:-}" ] && ! grep -Eq -- "$ONLY" <<<"$name"; then return; fi
  need "$2"
  local quiet='   - |    - |    - |         -' loaded='   - |    - |    - |         -' rq=0 rv=0
  if [ "$MODE" != loaded ]; then
    pass "$@"
    quiet=$(cell "$P_MQ" "$P_MV" "$P_SQ" "$P_SV"); rq=$P_RQ; rv=$P_RV
  fi
  if [ "$MODE" != quiet ]; then
    start_busy
    pass "$@"
    stop_busy
    loaded=$(cell "$P_MQ" "$P_MV" "$P_SQ" "$P_SV")
    [ "$P_RQ" -gt "$rq" ] && rq=$P_RQ
    [ "$P_RV" -gt "$rv" ] && rv=$P_RV
  fi
  printf '| %-24s | %s | %s | %5.1f | %5.1f |\n' "$name" "$quiet" "$loaded" \
    "$(echo "$rv / 1024" | bc -l)" "$(echo "$rq / 1024" | bc -l)"
}

echo
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min)"
echo "source: ${SIZE_GIB} GiB virtual, $(du -h --apparent-size src.raw | cut -f1) apparent, $(du -h src.raw | cut -f1) allocated; $RUNS alternating runs each, medians; $(nproc) cores; mode $MODE$([ "$MODE" != quiet ] && echo ", loaded = 1 core kept busy${BUSY_CPU:+ (pinned to CPU $BUSY_CPU)}")"
echo
echo "| conversion               | quiet: qemu-img s | vdisk s | ratio | sys s q / v | loaded: qemu-img s | vdisk s | ratio | sys s q / v | vdisk RSS MiB | qemu-img RSS MiB |"
echo "|--------------------------|------:|------:|------:|----------:|------:|------:|------:|----------:|------:|------:|"
bench "qcow2 -> raw" src.qcow2 qcow2 raw
bench "qcow2 chain -> raw" top.qcow2 qcow2 raw
bench "raw -> raw" src.raw raw raw
bench "raw -> qcow2" src.raw raw qcow2
bench "qcow2 -> qcow2" src.qcow2 qcow2 qcow2
bench "qcow2 chain -> qcow2" top.qcow2 qcow2 qcow2
bench "raw -> qcow2 -c (zlib)" src.raw raw qcow2 -c -o compression_type=zlib
bench "raw -> qcow2 -c (zstd)" src.raw raw qcow2 -c -o compression_type=zstd
bench "vmdk -> qcow2" src.vmdk vmdk qcow2
bench "vmdk stream -> qcow2" src-stream.vmdk vmdk qcow2
bench "raw -> vmdk stream" src.raw raw vmdk -o subformat=streamOptimized
bench "vpc -> qcow2" src.vhd vpc qcow2
bench "raw -> vpc" src.raw raw vpc
bench "qcow2 -> vpc fixed" src.qcow2 qcow2 vpc -o subformat=fixed
bench "vdi -> qcow2" src.vdi vdi qcow2
bench "raw -> vdi" src.raw raw vdi
bench "qcow2 -> vhdx" src.qcow2 qcow2 vhdx
bench "vhdx -> qcow2" src.vhdx vhdx qcow2
bench "qed -> qcow2" src.qed qed qcow2
bench "raw -> qed" src.raw raw qed
echo
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min)"
