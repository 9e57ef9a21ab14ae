#!/usr/bin/env bash
# strata-img against qemu-img on the same images, in one run: convert (raw->qcow2, qcow2 with a backing
# file -> qcow2, compressed) of a 2 GiB image with mixed data, and `bench` (4 KiB requests at depth 1 and
# 32, reads and writes, on an empty and on a fully allocated qcow2). Prints a markdown table of median
# times and the ratio qemu/strata (> 1.0 means Strata is faster).
#
#   bench/bench_img.sh                  everything (~5-10 min)
#   SIZE_MB=512 REPS=3 bench/bench_img.sh
#   PARTS="convert" bench/bench_img.sh   (convert | bench)
#
# Needs qemu-img and qemu-io; builds strata-img (Release) unless STRATA_IMG points at a binary.
set -euo pipefail
SIZE_MB=${SIZE_MB:-2048}
PARTS=${PARTS:-"convert bench"}
BENCH_COUNT=${BENCH_COUNT:-200000}
source "$(dirname "$0")/lib.sh"
locate_strata_img
W=$(mktemp -d "$WORK/run.XXXXXX")
trap 'rm -rf "$W"' EXIT

mixed_raw() { # a SIZE_MB image: per 4 MiB stripe random data, a pattern, a hole, text-like data
    local f=$1 i
    truncate -s "${SIZE_MB}M" "$f"
    head -c 4M /dev/urandom >"$W/rand.bin"
    { yes "Strata writes the same bytes QEMU does; compressible text for the benchmark." || true; } | head -c 4M >"$W/text.bin"
    for ((i = 0; i < SIZE_MB / 4; i++)); do
        case $((i % 4)) in
            0) dd if="$W/rand.bin" of="$f" bs=4M seek="$i" conv=notrunc status=none ;;
            1) dd if=/dev/zero bs=4M count=1 status=none | tr '\0' '\125' | dd of="$f" bs=4M seek="$i" conv=notrunc status=none ;;
            2) ;;
            3) dd if="$W/text.bin" of="$f" bs=4M seek="$i" conv=notrunc status=none ;;
        esac
    done
}

if [[ " $PARTS " == *" convert "* ]]; then
    mixed_raw "$W/src.raw"
    "$QEMU_IMG" convert -O qcow2 "$W/src.raw" "$W/base.qcow2"
    "$QEMU_IMG" create -q -f qcow2 -b base.qcow2 -F qcow2 "$W/top.qcow2"
    qemu-io -c "write -P 0x77 0 $((SIZE_MB / 4))M" -c "write -P 0x78 $((SIZE_MB / 2))M 64M" "$W/top.qcow2" >/dev/null
    cat "$W"/*.raw "$W"/*.qcow2 >/dev/null
    for spec in "raw->qcow2|-f raw -O qcow2 $W/src.raw" "qcow2+backing->qcow2|-f qcow2 -O qcow2 $W/top.qcow2" \
                "raw->qcow2 -c|-f raw -O qcow2 -c $W/src.raw"; do
        name=${spec%%|*}; args=${spec#*|}
        # shellcheck disable=SC2086
        q=$(time_cmd "rm -f $W/out.qcow2" "$QEMU_IMG" convert $args "$W/out.qcow2")
        # shellcheck disable=SC2086
        s=$(time_cmd "rm -f $W/out.qcow2" "$STRATA_IMG" convert $args "$W/out.qcow2")
        "$QEMU_IMG" compare -q "$W/out.qcow2" "${args##* }" || { echo "strata-img convert output differs ($name)" >&2; exit 1; }
        record "convert $name (${SIZE_MB} MiB)" "$q" "$s"
    done
fi

if [[ " $PARTS " == *" bench "* ]]; then
    # A large prime stride scatters the requests over the disk (qemu-img bench has no random mode).
    step=$((4096 * 7919))
    for depth in 1 32; do
        for mode in write read; do
            for state in empty full; do
                flags=(-c "$BENCH_COUNT" -d "$depth" -s 4096 -S "$step" -t writeback -f qcow2)
                [[ $mode == write ]] && flags+=(-w)
                prep="rm -f $W/b.qcow2; $QEMU_IMG create -q -f qcow2 $W/b.qcow2 ${SIZE_MB}M"
                [[ $state == full ]] && prep+="; $QEMU_IMG convert -O qcow2 -o preallocation=metadata $W/b.qcow2 $W/b2.qcow2 && qemu-io -c 'write -P 1 0 ${SIZE_MB}M' $W/b2.qcow2 >/dev/null && mv $W/b2.qcow2 $W/b.qcow2"
                q=$(time_cmd "$prep" "$QEMU_IMG" bench "${flags[@]}" "$W/b.qcow2")
                s=$(time_cmd "$prep" "$STRATA_IMG" bench "${flags[@]}" "$W/b.qcow2")
                record "bench 4k $mode depth $depth, $state qcow2 ($BENCH_COUNT requests)" "$q" "$s"
            done
        done
    done
fi

print_rows
