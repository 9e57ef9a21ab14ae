#!/usr/bin/env bash
# Cost of dirty-bitmap tracking on the write path and of bitmap store/load, strata-img against qemu-img on the
# same images: `bench -w` (4 KiB writes, depth 16) on a preallocated 1 GiB qcow2 without and with an enabled
# 4 KiB-granularity bitmap, and `bitmap --clear` (one load + store) of a fully dirty 512-byte-granularity bitmap.
# Prints a markdown table of median times and the ratio qemu/strata (> 1.0 means Strata is faster).
#
#   bench/bench_bitmap.sh
#   REPS=5 BENCH_COUNT=400000 bench/bench_bitmap.sh
#
# Needs qemu-img and qemu-io; builds strata-img (Release) unless STRATA_IMG points at a binary.
set -euo pipefail
BENCH_COUNT=${BENCH_COUNT:-200000}
source "$(dirname "$0")/lib.sh"
locate_strata_img build
W=$(mktemp -d "$WORK/bitmap.XXXXXX")
trap 'rm -rf "$W"' EXIT

"$QEMU_IMG" create -q -f qcow2 -o preallocation=metadata "$W/plain.qcow2" 1G
cp "$W/plain.qcow2" "$W/tracked.qcow2"
"$QEMU_IMG" bitmap --add -g 4k "$W/tracked.qcow2" b
"$QEMU_IMG" create -q -f qcow2 "$W/dirty.qcow2" 64G
"$QEMU_IMG" bitmap --add -g 64k "$W/dirty.qcow2" b
zargs=(); for g in $(seq 0 63); do zargs+=(-c "write -z ${g}G 1G"); done
qemu-io "${zargs[@]}" "$W/dirty.qcow2" >/dev/null

for img in plain tracked; do
    q=$(time_cmd "cp $W/$img.qcow2 $W/x.qcow2" "$QEMU_IMG" bench -w -t none -c "$BENCH_COUNT" -s 4k -S 4096 -d 16 "$W/x.qcow2")
    s=$(time_cmd "cp $W/$img.qcow2 $W/x.qcow2" "$STRATA_IMG" bench -w -t none -c "$BENCH_COUNT" -s 4k -S 4096 -d 16 "$W/x.qcow2")
    rows+=("| bench -w 4k d16, $img | $q | $s | $(ratio "$q" "$s") |")
done
q=$(time_cmd "cp $W/dirty.qcow2 $W/y.qcow2" "$QEMU_IMG" bitmap --clear "$W/y.qcow2" b)
s=$(time_cmd "cp $W/dirty.qcow2 $W/y.qcow2" "$STRATA_IMG" bitmap --clear "$W/y.qcow2" b)
rows+=("| bitmap --clear, 1M-bit dirty bitmap | $q | $s | $(ratio "$q" "$s") |")
# Process start-up alone (the load and store above are a few ms of it).
q=$(time_cmd ":" "$QEMU_IMG" info "$W/dirty.qcow2")
s=$(time_cmd ":" "$STRATA_IMG" info "$W/dirty.qcow2")
rows+=("| info (start-up baseline) | $q | $s | $(ratio "$q" "$s") |")

echo "| case | qemu-img s | strata-img s | qemu/strata |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
