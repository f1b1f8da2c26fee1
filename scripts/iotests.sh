#!/usr/bin/env bash
# qemu's own iotests with vdisk standing in for qemu-img.
#
# Gets tests/qemu-iotests from Debian's source package of the installed qemu-utils (through apt,
# with a private source list, so the machine's apt setup is not touched), runs each test once with
# the real qemu-img and once with vdisk invoked as `qemu-img` (a symlink: vdisk then speaks as
# qemu-img), and prints how many of the pairs real qemu-img passes vdisk passes too, and which
# fail. qemu-io and qemu-nbd are the real ones in both runs. This machine has no qemu-system or
# qemu-storage-daemon, so a stub stands in for them: tests that need a VM fail with both tools and
# so leave the count.
#
# usage: scripts/iotests.sh [-f FMT[,FMT...]] [-j JOBS] [TEST...]
#   -f   formats (default qcow2,raw)
#   -j   tests run at once (default 2)
#   TEST test names as ./check takes them (default: every test)
# environment:
#   VDISK          the vdisk binary (default target/release/vdisk, built if missing)
#   IOTESTS_CACHE  where the source and the reference results are kept
#                  (default ${XDG_CACHE_HOME:-$HOME/.cache}/vdisk-iotests)
#   IOTESTS_REFRESH=1  run the real qemu-img again instead of reusing its recorded results
#   IOTESTS_TIMEOUT    seconds one test may take (default 600)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

formats=qcow2,raw
jobs=2
while getopts "f:j:" opt; do
  case $opt in
    f) formats=$OPTARG ;;
    j) jobs=$OPTARG ;;
    *) sed -n '/^# usage/,/^set -e/p' "$0" | sed '$d' >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
timeout_s=${IOTESTS_TIMEOUT:-600}

for cmd in qemu-img qemu-io qemu-nbd apt-get dpkg-query python3 timeout; do
  command -v "$cmd" >/dev/null || { echo "iotests: $cmd is needed" >&2; exit 1; }
done

vdisk=${VDISK:-$repo/target/release/vdisk}
if [ -z "${VDISK:-}" ]; then
  cargo build --release -q -p vdisk-cli
fi
[ -x "$vdisk" ] || { echo "iotests: no vdisk binary at $vdisk" >&2; exit 1; }

cache=${IOTESTS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vdisk-iotests}
version=$(dpkg-query -W -f='${Version}' qemu-utils)
upstream=${version#*:}
upstream=${upstream%%-*}         # 1:10.0.2+ds-2+deb13u1~bpo12+1 -> 10.0.2+ds
src=$cache/qemu-$version
iotests=$src/tests/qemu-iotests

# --- the source -----------------------------------------------------------------------------
if [ ! -x "$iotests/check" ]; then
  apt_dir=$cache/apt
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/get"
  # shellcheck disable=SC1091
  codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
  {
    for suite in "$codename" "$codename-updates" "$codename-backports"; do
      echo "deb-src http://deb.debian.org/debian $suite main"
    done
    echo "deb-src http://deb.debian.org/debian-security $codename-security main"
  } >"$apt_dir/sources.list"
  apt_opts=(-q -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Etc::SourceList=$apt_dir/sources.list"
    -o "Dir::Etc::SourceParts=$apt_dir/none" -o "Dir::Cache=$apt_dir/cache" -o "APT::Sandbox::User=root")
  echo "iotests: fetching Debian's qemu $version source"
  apt-get "${apt_opts[@]}" update >/dev/null
  # The upstream tarball holds the tests; the Debian part is not needed, and a mirror may lack
  # the .dsc of a backport, so a failure is judged by whether the tarball arrived.
  (cd "$apt_dir/get" && apt-get "${apt_opts[@]}" source --download-only "qemu=$version" >/dev/null 2>&1) || true
  tarball=$(ls "$apt_dir/get"/qemu_"$upstream".orig.tar.* 2>/dev/null | head -n1 || true)
  [ -n "$tarball" ] || { echo "iotests: apt-get source qemu=$version brought no tarball" >&2; exit 1; }
  rm -rf "$src.tmp" && mkdir -p "$src.tmp"
  tar -xf "$tarball" -C "$src.tmp" --strip-components=1 --wildcards '*/tests/qemu-iotests' '*/python'
  rm -rf "$src" && mv "$src.tmp" "$src"
fi

# --- the run ----------------------------------------------------------------------------------
work=$(mktemp -d /tmp/vdisk-iotests.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin"
cat >"$work/bin/qemu-system" <<'EOF'
#!/bin/sh
# Stands in for qemu-system and qemu-storage-daemon, which this machine lacks: it answers the
# questions ./check and iotests.py ask before a test starts, and refuses to run a VM.
case "$*" in
  "-machine help") echo "pc  Standard PC (default)"; exit 0 ;;
  *"-drive format=help"*)
    echo "Supported formats: blkdebug file luks null-co qcow2 raw"
    echo "Supported formats (read-only): blkdebug file luks null-co qcow2 raw"
    exit 0 ;;
esac
echo "no qemu-system on this machine" >&2
exit 1
EOF
chmod +x "$work/bin/qemu-system"
ln -s "$vdisk" "$work/bin/qemu-img"

if [ $# -gt 0 ]; then
  tests=("$@")
else
  mapfile -t tests < <(cd "$iotests" && ls | grep -E '^[0-9]{3}$'; cd "$iotests" && ls tests | grep -v '\.out$')
fi

# run_one TOOL FMT TEST: prints "pass|fail|skip FMT TEST"; keeps the output diff of a failure.
run_one() {
  local tool=$1 fmt=$2 t=$3 img line status
  if [ "$tool" = vdisk ]; then img=$work/bin/qemu-img; else img=$(command -v qemu-img); fi
  local name=${t//\//_}
  local dir=$work/$tool/$name
  mkdir -p "$dir" "$work/sock/$tool-$name"
  line=$(cd "$iotests" && env QEMU_PROG="$work/bin/qemu-system" QSD_PROG="$work/bin/qemu-system" \
    QEMU_IMG_PROG="$img" QEMU_IO_PROG="$(command -v qemu-io)" QEMU_NBD_PROG="$(command -v qemu-nbd)" \
    TEST_DIR="$dir" SOCK_DIR="$work/sock/$tool-$name" \
    timeout -k 10 "$timeout_s" python3 ./check -tap "-$fmt" "$t" 2>&1 | grep -E '^(not )?ok ' | tail -n1) || true
  case $line in
    "ok "*"# SKIP"*) status=skip ;;
    "ok "*) status=pass ;;
    *) status=fail ;;
  esac
  if [ "$status" = fail ] && [ "$tool" = vdisk ]; then
    local bad
    bad=$(find "$dir" -name '*.out.bad' | head -n1)
    if [ -n "$bad" ]; then
      local ref base=$iotests/$t
      [ -f "$base.out" ] || base=$iotests/tests/$t
      ref=$base.out
      [ -f "$base.$fmt.out" ] && ref=$base.$fmt.out
      diff -u "$ref" "$bad" >"$work/diff-$fmt-$name" 2>&1 || true
    else
      echo "timed out or crashed: $line" >"$work/diff-$fmt-$name"
    fi
    mkdir -p "$cache/diffs"
    cp "$work/diff-$fmt-$name" "$cache/diffs/$fmt-$name.diff"
  fi
  [ "$status" = fail ] || rm -f "$cache/diffs/$fmt-$name.diff"
  rm -rf "$dir"
  echo "$status $fmt $t"
}
export -f run_one
export work iotests timeout_s cache

total_ref=0
total_ours=0
failed=()
for fmt in ${formats//,/ }; do
  ref=$cache/reference-$version-$fmt.txt
  touch "$ref"
  todo=()
  for t in "${tests[@]}"; do
    if [ -n "${IOTESTS_REFRESH:-}" ] || ! grep -q " $fmt $t\$" "$ref"; then todo+=("$t"); fi
  done
  if ((${#todo[@]})); then
    echo "iotests: real qemu-img, $fmt: ${#todo[@]} tests"
    printf '%s\n' "${todo[@]}" | xargs -P "$jobs" -I{} bash -c 'run_one qemu-img '"$fmt"' "$1"' _ {} >"$ref.new"
    # The newest result of each test wins.
    cat "$ref" "$ref.new" | awk '{ v[$2 " " $3] = $0 } END { for (k in v) print v[k] }' | sort -k3 >"$ref.tmp"
    mv "$ref.tmp" "$ref" && rm -f "$ref.new"
  fi
  passing=()
  for t in "${tests[@]}"; do
    if grep -q "^pass $fmt $t\$" "$ref"; then passing+=("$t"); fi
  done
  ((${#passing[@]})) || continue
  echo "iotests: vdisk as qemu-img, $fmt: ${#passing[@]} tests"
  results=$(printf '%s\n' "${passing[@]}" | xargs -P "$jobs" -I{} bash -c 'run_one vdisk '"$fmt"' "$1"' _ {})
  total_ref=$((total_ref + ${#passing[@]}))
  total_ours=$((total_ours + $(grep -c '^pass ' <<<"$results" || true)))
  while read -r status f t; do
    [ "$status" = pass ] || failed+=("$f $t")
  done <<<"$results"
done

echo
if ((${#failed[@]})); then
  echo "iotests: failing with vdisk (diffs in $cache/diffs):"
  printf '  %s\n' "${failed[@]}" | sort
fi
echo "iotests: vdisk passes $total_ours of $total_ref test/format pairs that real qemu-img passes"
[ "$total_ours" = "$total_ref" ]
