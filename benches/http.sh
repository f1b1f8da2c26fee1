#!/usr/bin/env bash
# Side-by-side HTTP source benchmark: `vdisk convert` against `qemu-img convert` (qemu's curl
# block driver, Debian's qemu-block-extra) of the same URLs served by nginx on loopback.
#
# Builds SIZE_MIB (default 256) of incompressible data and three images of it: a qcow2, the
# same compressed (a cloud image's shape: small sequential reads) and raw. Each case runs
# qemu-img and vdisk alternately RUNS times, checks the output against the data, and prints
# the median wall time, the ratio (qemu-img / vdisk: above 1 means vdisk is faster) and the
# requests each tool sent (from nginx's log).
#
#   benches/http.sh                  # uses target/release/vdisk (built if missing)
#   RUNS=7 SIZE_MIB=1024 benches/http.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
RUNS=${RUNS:-5}
SIZE_MIB=${SIZE_MIB:-256}
WORK=${WORK:-/tmp/vdisk-http-bench}
VDISK=${VDISK:-target/release/vdisk}
[ -x "$VDISK" ] || cargo build --release -q -p vdisk-cli
VDISK=$(realpath "$VDISK")
mkdir -p "$WORK/www" "$WORK/tmp"
cd "$WORK"

if [ ! -f src.raw ] || [ "$(stat -c %s src.raw)" != $((SIZE_MIB << 20)) ]; then
  # base64 of random bytes: incompressible enough to be real data, compressible enough
  # (3/4) that `-c` keeps every cluster compressed.
  head -c $((SIZE_MIB * 3 << 18)) /dev/urandom | base64 -w0 | head -c $((SIZE_MIB << 20)) > src.raw
  qemu-img convert -f raw -O qcow2 src.raw www/plain.qcow2
  qemu-img convert -c -f raw -O qcow2 src.raw www/compressed.qcow2
  cp src.raw www/disk.raw
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > nginx.conf <<CONF
daemon off;
worker_processes 2;
user root root;
pid $WORK/nginx.pid;
error_log $WORK/error.log;
events { worker_connections 256; }
http {
  log_format conn '\$connection \$status \$request';
  access_log $WORK/access.log conn;
  client_body_temp_path $WORK/tmp; proxy_temp_path $WORK/tmp; fastcgi_temp_path $WORK/tmp;
  uwsgi_temp_path $WORK/tmp; scgi_temp_path $WORK/tmp;
  server { listen 127.0.0.1:$port; root $WORK/www; }
}
CONF
nginx -e "$WORK/error.log" -c "$WORK/nginx.conf" &
nginx_pid=$!
trap 'kill $nginx_pid 2>/dev/null; wait $nginx_pid 2>/dev/null; true' EXIT
for _ in $(seq 500); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.01; done

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

run_case() { # name url
  local q=() v=() qr=0 vr=0
  for _ in $(seq "$RUNS"); do
    for tool in qemu vdisk; do
      rm -f out.raw
      : > access.log
      start=$(date +%s.%N)
      if [ "$tool" = qemu ]; then
        # readahead=0: with its default (256 KiB) qemu 10's curl driver fetched the whole
        # file and then never finished (stuck at the last request, > 5 min) against nginx.
        # LIMIT bounds qemu-img: its curl driver reads a compressed image one cluster per
        # request with no cache, several minutes for 256 MiB.
        rc=0
        timeout "${LIMIT:-60}" qemu-img convert -O raw \
          "json:{\"file.driver\":\"http\",\"file.url\":\"$2\",\"file.readahead\":\"0\"}" out.raw || rc=$?
        if [ "$rc" = 124 ]; then
          printf '| %-24s | >%7s | (qemu-img stopped after LIMIT=%s s) |\n' "$1" "${LIMIT:-60}" "${LIMIT:-60}"
          return
        fi
        [ "$rc" = 0 ] || { echo "qemu-img: rc $rc" >&2; exit 1; }
      else
        "$VDISK" convert -O raw "$2" out.raw 2>&1 | grep -v "warning: the format" >&2 || true; [ -s out.raw ] || exit 1
      fi
      end=$(date +%s.%N)
      cmp -s out.raw src.raw || { echo "$tool: $1: wrong bytes" >&2; exit 1; }
      n=$(grep -c ' 206 ' access.log || true)
      t=$(echo "$end - $start" | bc)
      if [ "$tool" = qemu ]; then q+=("$t"); qr=$n; else v+=("$t"); vr=$n; fi
    done
  done
  qm=$(printf '%s\n' "${q[@]}" | median)
  vm=$(printf '%s\n' "${v[@]}" | median)
  printf '| %-24s | %8.3f | %8.3f | %5.2f | %6s | %6s |\n' "$1" "$qm" "$vm" \
    "$(echo "$qm / $vm" | bc -l)" "$qr" "$vr"
}

echo "| convert -O raw, ${SIZE_MIB} MiB over HTTP | qemu-img s | vdisk s | ratio | qemu reqs | vdisk reqs |"
echo "|---|---:|---:|---:|---:|---:|"
run_case "qcow2" "http://127.0.0.1:$port/plain.qcow2"
run_case "compressed qcow2" "http://127.0.0.1:$port/compressed.qcow2"
run_case "raw" "http://127.0.0.1:$port/disk.raw"
