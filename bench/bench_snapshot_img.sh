#!/usr/bin/env bash
# strata-img against qemu-img on internal snapshots, in one run: on a fully written qcow2 (4 GiB by default,
# 64 KiB clusters), the time of `snapshot -c`, `snapshot -a` and `snapshot -d`. Each tool works on its own copy
# of the same image; the figures are medians over REPS runs (create, apply, delete per run, in that order).
# Prints a markdown table and the ratio qemu/strata (> 1.0 means Strata is faster).
#
#   bench/bench_snapshot_img.sh
#   SIZE_MB=1024 REPS=5 bench/bench_snapshot_img.sh
#   KEEP_TIMES=1 ... also prints every run's figures
#
# Needs qemu-img and qemu-io; builds strata-img (Release) unless STRATA_IMG points at a binary.
set -euo pipefail
SIZE_MB=${SIZE_MB:-4096}
source "$(dirname "$0")/lib.sh"
locate_strata_img
W=$(mktemp -d "$WORK/snap.XXXXXX")
trap 'rm -rf "$W"' EXIT

"$QEMU_IMG" create -q -f qcow2 "$W/full.qcow2" "${SIZE_MB}M"
# qemu-io takes at most 2 GiB per request: write in 256 MiB pieces.
writes=()
for ((m = 0; m < SIZE_MB; m += 256)); do
    writes+=(-c "write -P 0x5a ${m}M $((SIZE_MB - m < 256 ? SIZE_MB - m : 256))M")
done
qemu-io "${writes[@]}" "$W/full.qcow2" >/dev/null
cp "$W/full.qcow2" "$W/q.qcow2"
cp "$W/full.qcow2" "$W/s.qcow2"
rm "$W/full.qcow2"

# Nothing else may still be writing back the copies: the first flush of each tool would pay for it.
sync
declare -A t
for tool in qemu strata; do for op in create apply delete; do : >"$W/$tool.$op"; done; done
# The tools take turns within each run, so that both see the same load on a busy machine.
for r in $(seq "$REPS"); do
    for tool in qemu strata; do
        img=$W/${tool:0:1}.qcow2
        bin=$QEMU_IMG
        [[ $tool == strata ]] && bin=$STRATA_IMG
        # A write between create and apply gives apply something to drop (two clusters).
        seconds "$bin" snapshot -q -c "bench$r" "$img" >>"$W/$tool.create"
        qemu-io -c "write -P 1 0 64k" -c "write -P 1 $((SIZE_MB / 2))M 64k" "$img" >/dev/null
        seconds "$bin" snapshot -q -a "bench$r" "$img" >>"$W/$tool.apply"
        seconds "$bin" snapshot -q -d "bench$r" "$img" >>"$W/$tool.delete"
    done
done
for tool in qemu strata; do for op in create apply delete; do t[$tool.$op]=$(median <"$W/$tool.$op"); done; done
[[ -n ${KEEP_TIMES:-} ]] && for f in "$W"/{qemu,strata}.*; do echo "$(basename "$f"): $(tr '\n' ' ' <"$f")"; done
"$QEMU_IMG" check -q "$W/s.qcow2" || { echo "qemu-img check failed on strata-img's image" >&2; exit 1; }
cmp -s <("$QEMU_IMG" map --output=json "$W/q.qcow2") <("$QEMU_IMG" map --output=json "$W/s.qcow2") \
    || echo "note: the two images map differently" >&2

echo
echo "| snapshot on a full ${SIZE_MB} MiB qcow2 | qemu-img (s) | strata-img (s) | ratio qemu/strata |"
echo "|---|---|---|---|"
for op in create apply delete; do
    q=${t[qemu.$op]} s=${t[strata.$op]}
    printf '| snapshot %s | %.3f | %.3f | %s |\n' "$op" "$q" "$s" "$(ratio "$q" "$s")"
done
