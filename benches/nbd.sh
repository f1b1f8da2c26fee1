#!/usr/bin/env bash
# Side-by-side NBD serving benchmark: vdisk nbd against qemu-nbd on the same qcow2.
#
# Builds a qcow2 (default 1 GiB virtual: half random data, the rest holes), then for each
# case runs qemu-nbd and vdisk nbd alternately RUNS times and prints the median wall time of
# nbdcopy and the ratio (qemu-nbd / vdisk: above 1 means vdisk is faster). Cases: export to
# null: and raw file into the export, with 1 and 4 connections. BUSY=1 keeps one core busy
# with a second process during the runs.
#
# Then vdisk as the client: `vdisk convert` and `qemu-img convert` of a mostly-sparse raw
# export (qemu-nbd serving SIZE_MIB with 2 MiB of random data every 32 MiB) into a qcow2,
# ratio qemu-img / vdisk the same way (and of the half-data src.raw when it exists).
#
#   benches/nbd.sh                    # uses target/release/vdisk (built if missing)
#   RUNS=7 SIZE_MIB=4096 BUSY=1 benches/nbd.sh
#   CLIENT_ONLY=1 benches/nbd.sh     # only the client table
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
SIZE_MIB=${SIZE_MIB:-1024}
WORK=${WORK:-/tmp/vdisk-nbd-bench}
VDISK=${VDISK:-target/release/vdisk}
[ -x "$VDISK" ] || cargo build --release -q -p vdisk-cli
VDISK=$(realpath "$VDISK")
mkdir -p "$WORK"
cd "$WORK"

if [ "${CLIENT_ONLY:-0}" != 1 ] && { [ ! -f src.raw ] || [ "$(stat -c %s src.raw)" != $((SIZE_MIB << 20)) ]; }; then
  rm -f src.raw
  truncate -s "${SIZE_MIB}M" src.raw
  for i in $(seq 0 $((SIZE_MIB / 32 - 1))); do
    dd if=/dev/urandom of=src.raw bs=1M seek=$((i * 32)) count=16 conv=notrunc status=none
  done
  qemu-img convert -f raw -O qcow2 src.raw src.qcow2
fi

busy_pid=
if [ "${BUSY:-0}" = 1 ]; then
  (while :; do :; done) &
  busy_pid=$!
fi
trap '[ -n "$busy_pid" ] && kill $busy_pid 2>/dev/null; true' EXIT

serve() { # tool sock image
  if [ "$1" = qemu ]; then
    qemu-nbd -t -e 8 -f qcow2 -k "$2" "$3" &
  else
    "$VDISK" nbd -t -e 8 -f qcow2 -k "$2" "$3" &
  fi
  server=$!
  for _ in $(seq 500); do [ -S "$2" ] && break; sleep 0.01; done
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

run_case() { # name conns direction
  local name=$1 conns=$2 dir=$3 q=() v=()
  for _ in $(seq "$RUNS"); do
    for tool in qemu vdisk; do
      cp --sparse=always src.qcow2 t.qcow2
      rm -f "$WORK/s.sock"
      serve "$tool" "$WORK/s.sock" t.qcow2
      uri="nbd+unix:///?socket=$WORK/s.sock"
      start=$(date +%s.%N)
      if [ "$dir" = out ]; then
        nbdcopy --connections="$conns" "$uri" null:
      else
        nbdcopy --connections="$conns" src.raw "$uri"
      fi
      end=$(date +%s.%N)
      kill "$server"; wait "$server" 2>/dev/null || true
      t=$(echo "$end - $start" | bc)
      if [ "$tool" = qemu ]; then q+=("$t"); else v+=("$t"); fi
    done
  done
  qm=$(printf '%s\n' "${q[@]}" | median)
  vm=$(printf '%s\n' "${v[@]}" | median)
  printf '| %-28s | %8.3f | %8.3f | %5.2f |\n' "$name" "$qm" "$vm" "$(echo "$qm / $vm" | bc -l)"
}

if [ "${CLIENT_ONLY:-0}" != 1 ]; then
  echo "| nbdcopy, ${SIZE_MIB} MiB qcow2$([ -n "$busy_pid" ] && echo ', 1 core busy') | qemu-nbd s | vdisk s | ratio |"
  echo "|---|---:|---:|---:|"
  run_case "export -> null:, 1 conn" 1 out
  run_case "export -> null:, 4 conns" 4 out
  run_case "raw -> export, 1 conn" 1 in
  run_case "raw -> export, 4 conns" 4 in
fi

if [ ! -f sparse.raw ] || [ "$(stat -c %s sparse.raw)" != $((SIZE_MIB << 20)) ]; then
  rm -f sparse.raw
  truncate -s "${SIZE_MIB}M" sparse.raw
  for i in $(seq 0 $((SIZE_MIB / 32 - 1))); do
    dd if=/dev/urandom of=sparse.raw bs=1M seek=$((i * 32 + 5)) count=2 conv=notrunc status=none
  done
fi

client_case() { # name file
  local q=() v=()
  rm -f "$WORK/c.sock"
  qemu-nbd -t -r -e 8 -f raw -k "$WORK/c.sock" "$2" &
  server=$!
  for _ in $(seq 500); do [ -S "$WORK/c.sock" ] && break; sleep 0.01; done
  uri="nbd+unix:///?socket=$WORK/c.sock"
  for _ in $(seq "$RUNS"); do
    for tool in qemu vdisk; do
      rm -f out.qcow2
      start=$(date +%s.%N)
      if [ "$tool" = qemu ]; then
        qemu-img convert -f raw -O qcow2 "$uri" out.qcow2
      else
        "$VDISK" convert -f raw -O qcow2 "$uri" out.qcow2
      fi
      end=$(date +%s.%N)
      t=$(echo "$end - $start" | bc)
      if [ "$tool" = qemu ]; then q+=("$t"); else v+=("$t"); fi
    done
  done
  kill "$server"; wait "$server" 2>/dev/null || true
  qm=$(printf '%s\n' "${q[@]}" | median)
  vm=$(printf '%s\n' "${v[@]}" | median)
  printf '| %-28s | %8.3f | %8.3f | %5.2f |\n' "$1" "$qm" "$vm" "$(echo "$qm / $vm" | bc -l)"
}

echo
echo "| client: convert export -> qcow2, ${SIZE_MIB} MiB$([ -n "$busy_pid" ] && echo ', 1 core busy') | qemu-img s | vdisk s | ratio |"
echo "|---|---:|---:|---:|"
client_case "mostly-sparse raw export" sparse.raw
if [ -f src.raw ]; then client_case "half-data raw export" src.raw; fi
