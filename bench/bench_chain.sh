#!/usr/bin/env bash
# strata-img against qemu-img on the same chains, in one run: `commit` of a written overlay into its base, and a
# safe `rebase` of an overlay onto a different backing file (every range the overlay does not hold is compared
# between the old and the new backing file). Prints a markdown table of median times and the ratio qemu/strata
# (> 1.0 means Strata is faster). Each run works on fresh copies made before the clock starts.
#
#   bench/bench_chain.sh                       1 GiB overlay, 3 runs
#   SIZE_MB=256 REPS=1 bench/bench_chain.sh
#
# Needs qemu-img and qemu-io; publishes strata-img with NativeAOT (falls back to a Release build) unless
# STRATA_IMG points at a binary.
set -euo pipefail
SIZE_MB=${SIZE_MB:-1024}
source "$(dirname "$0")/lib.sh"
locate_strata_img
W=$(mktemp -d "$WORK/chain.XXXXXX")
trap 'rm -rf "$W"' EXIT

# Templates: base (first half written), other (a different backing: every other 64 MiB stripe differs from base),
# top over base (the whole disk written: the commit case), top2 over base (a quarter written: the rebase case).
T="$W/tpl"; mkdir -p "$T"
"$QEMU_IMG" create -q -f qcow2 "$T/base.qcow2" "${SIZE_MB}M"
qemu-io -c "write -P 0x11 0 $((SIZE_MB / 2))M" "$T/base.qcow2" >/dev/null
"$QEMU_IMG" create -q -f qcow2 "$T/other.qcow2" "${SIZE_MB}M"
for ((i = 0; i < SIZE_MB; i += 128)); do
    qemu-io -c "write -P 0x11 ${i}M 64M" "$T/other.qcow2" >/dev/null
done
"$QEMU_IMG" create -q -f qcow2 -b base.qcow2 -F qcow2 "$T/top.qcow2"
qemu-io -c "write -P 0x77 0 ${SIZE_MB}M" "$T/top.qcow2" >/dev/null
"$QEMU_IMG" create -q -f qcow2 -b base.qcow2 -F qcow2 "$T/top2.qcow2"
qemu-io -c "write -P 0x78 $((SIZE_MB / 4))M $((SIZE_MB / 4))M" "$T/top2.qcow2" >/dev/null

for tool in qemu strata; do mkdir -p "$W/$tool"; done
prep="rm -f *.qcow2; cp $T/*.qcow2 .; cat *.qcow2 >/dev/null"

q=$(cd "$W/qemu" && time_cmd "$prep" "$QEMU_IMG" commit top.qcow2)
s=$(cd "$W/strata" && time_cmd "$prep" "$STRATA_IMG" commit top.qcow2)
"$QEMU_IMG" compare -q "$W/qemu/base.qcow2" "$W/strata/base.qcow2" || { echo "commit results differ" >&2; exit 1; }
"$QEMU_IMG" check -q "$W/strata/base.qcow2" && "$QEMU_IMG" check -q "$W/strata/top.qcow2"
record "commit of a written ${SIZE_MB} MiB overlay" "$q" "$s"

q=$(cd "$W/qemu" && time_cmd "$prep" "$QEMU_IMG" rebase -b other.qcow2 -F qcow2 top2.qcow2)
s=$(cd "$W/strata" && time_cmd "$prep" "$STRATA_IMG" rebase -b other.qcow2 -F qcow2 top2.qcow2)
"$QEMU_IMG" compare -q "$W/qemu/top2.qcow2" "$W/strata/top2.qcow2" || { echo "rebase results differ" >&2; exit 1; }
"$QEMU_IMG" check -q "$W/strata/top2.qcow2"
record "safe rebase of a ${SIZE_MB} MiB overlay onto another backing" "$q" "$s"

print_rows
