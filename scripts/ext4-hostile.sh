#!/bin/bash
# Runs every damaged ext4 image of DIR (default ../shared/ext4-hostile: e2fsprogs' tests/*/image*)
# through `vdisk write`, `mkdir`, `copy-in` and `rm`, and prints one verdict per image: "ok" when
# each command either refused or left `e2fsck -fn` reporting nothing it did not report before
# (problem lines compared with numbers normalised; when the journal needs recovery the "before"
# is taken after a journal-only replay, which the writer also performs), or left the image's
# bytes as they were; "WORSE" with the new lines otherwise.
# Usage: scripts/ext4-hostile.sh [--quick] [VDISK [DIR]]   (exit 1 when any image got worse)
# --quick runs fourteen images covering issue 19's damage classes (about 2 minutes with a
# release build); without it every image of DIR runs (about 12 minutes in release, 40 in debug).
QUICK="f_bitmaps f_miss_blk_bmap f_badtable f_uninit_disable f_zero_group f_illitable_flexbg
  f_end-bitmap f_dup f_bad_bbitmap f_bad_ibitmap f_illibitmap i_bitmaps f_uninit_bad_free_inodes
  j_recover_csum2_32bit"
quick=0; if [ "$1" = --quick ]; then quick=1; shift; fi
V=${1:-target/debug/vdisk}; DIR=${2:-/work/shared/ext4-hostile}
worse=0
norm() { grep -v -e "^$1: " -e '^e2fsck ' -e '^Pass ' -e '^$' -e 'WARNING' -e '^\*\*\*' \
  -e '^/lib' -e '^e2fsck(' -e '^Signal' | sed -E 's/[0-9]+/N/g' | sort -u; }
for D in "$DIR"/*/; do
  n=$(basename "$D")
  [ $quick = 1 ] && ! grep -qw -- "$n" <<< "$QUICK" && continue
  T=$(mktemp -d)
  if [ -f "$D/image.gz" ]; then gzip -dc "$D/image.gz" > "$T/img"
  elif [ -f "$D/image.bz2" ]; then bzip2 -dc "$D/image.bz2" > "$T/img"
  elif [ -f "$D/image" ]; then cp "$D/image" "$T/img"; else rm -rf "$T"; continue; fi
  chmod u+w "$T/img"; cp "$T/img" "$T/fs"; sum0=$(md5sum < "$T/img")
  # e2fsck -y fixes more than the journal even with journal_only (descriptors, uninit flags):
  # replay only what needs it.
  if timeout 60 dumpe2fs -h "$T/fs" 2>/dev/null | grep -q '^Filesystem features:.*needs_recovery'; then
    timeout 60 e2fsck -E journal_only -y "$T/fs" >/dev/null 2>&1
  fi
  timeout 60 e2fsck -fn "$T/fs" 2>&1 | norm "$T/fs" > "$T/before"
  head -c 3000 /dev/urandom > "$T/data"; mkdir -p "$T/tree/sub"; echo hello > "$T/tree/a"
  seq 1 100 > "$T/tree/sub/b"
  res=""
  for cmd in "write /newfile --from $T/data" "mkdir /newdir" "copy-in $T/tree /newdir" "rm /newfile"; do
    set -- $cmd; c=$1; shift
    timeout 60 "$V" "$c" -a "$T/img" --format raw -m /dev/sda "$@" > "$T/out" 2>&1
    rc=$?; res="$res $c:$rc"
    [ $rc -ne 0 ] && [ "$(wc -l < "$T/out")" -ne 1 ] && res="$res(not-one-line)"
  done
  if grep -q 'copy-in:0' <<< "$res"; then
    got=$(timeout 60 "$V" cat -a "$T/img" --format raw -m /dev/sda /newdir/tree/sub/b 2>/dev/null | md5sum)
    [ "$got" = "$(md5sum < "$T/tree/sub/b")" ] || res="$res readback-FAILED"
  fi
  cp "$T/img" "$T/fs"; timeout 60 e2fsck -fn "$T/fs" 2>&1 | norm "$T/fs" > "$T/after"
  new=$(comm -13 "$T/before" "$T/after")
  if [ "$(md5sum < "$T/img")" = "$sum0" ]; then echo "ok $n$res (unchanged)"
  elif [ -n "$new" ] || grep -q FAILED <<< "$res"; then
    worse=1; echo "WORSE $n$res"; echo "$new" | head -8 | sed 's/^/    /'
  else echo "ok $n$res"; fi
  rm -rf "$T"
done
exit $worse
