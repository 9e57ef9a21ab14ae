#!/usr/bin/env bash
# The longest pause an NBD writer sees while a transaction snapshots N disks (issue 6's figure), for any daemon
# taking qemu-storage-daemon's command line. Each run: a fresh daemon with N empty qcow2 disks, all exported over
# NBD; fio writes 4 KiB at queue depth 1 to WRITERS of them; in the middle of the write phase a `transaction` of N
# blockdev-snapshot-sync actions (one per disk) runs. The figure is the largest fio completion latency across the
# writers during that run; a run without the transaction gives the baseline (the same writers, nothing else).
#
#   DAEMON=qemu-storage-daemon LABEL=qsd bench/bench_txpause.sh
#   DAEMON=/var/tmp/strata-bench/daemon/strata-daemon LABEL=strata bench/bench_txpause.sh
#   ../shared/bench/report.py results/qsd results/strata     # side by side
#
# Env: N (32), WRITERS (4), RUNTIME (4 s of writing per run), TX_AT (1.5 s into it), SNAP_IMG_MIB (64),
#      SHARED_BENCH (../shared/bench: its lib.sh and qmp.py drive the daemon) + that lib.sh's variables.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARED_BENCH=${SHARED_BENCH:-$root/../shared/bench}
RESULTS=${RESULTS:-$root/bench/results/${LABEL:-$(basename "${DAEMON:-qemu-storage-daemon}" | cut -d' ' -f1)}}
source "$SHARED_BENCH/lib.sh"

N=${N:-32}
WRITERS=${WRITERS:-4}
RUNTIME=${RUNTIME:-4}
TX_AT=${TX_AT:-1.5}
SNAP_IMG_MIB=${SNAP_IMG_MIB:-64}
((WRITERS <= N)) || die "WRITERS ($WRITERS) > N ($N)"

start_disks() { # TAG: a daemon with disks d0..d(N-1), each exported over NBD under its node name
    local -a args=()
    rm -f "$W"/d*.qcow2 "$W"/ov*.qcow2
    for ((i = 0; i < N; i++)); do
        qemu-img create -q -f qcow2 "$W/d$i.qcow2" "${SNAP_IMG_MIB}M"
        mapfile -t -O "${#args[@]}" args < <(blockdev_args "d$i" "$W/d$i.qcow2" qcow2)
    done
    mapfile -t -O "${#args[@]}" args < <(nbd_server_args)
    NBD_SOCK="$W/nbd.sock"
    for ((i = 0; i < N; i++)); do
        mapfile -t -O "${#args[@]}" args < <(export_args "d$i")
    done
    daemon_start "$1" "${args[@]}"
}

# writers_start: fio in the background, one job per writer disk (spread over the N disks) -> FIO_PID
writers_start() {
    local -a jobs=()
    for ((k = 0; k < WRITERS; k++)); do
        local disk=$((k * N / WRITERS))
        jobs+=(--name="w$k" --uri="$(nbd_uri "d$disk")")
    done
    fio --ioengine=nbd --rw=randwrite --bs=4k --iodepth=1 --size="${SNAP_IMG_MIB}M" --time_based \
        --runtime="$RUNTIME" --randrepeat=0 --norandommap --output-format=json --output="$W/fio.json" \
        "${jobs[@]}" >"$W/fio.log" 2>&1 &
    FIO_PID=$!
    track_pid "$FIO_PID"
}

# writers_wait -> MAX_LAT_MS (largest completion latency of any writer), IOPS (sum)
writers_wait() {
    wait "$FIO_PID" || { cat "$W/fio.log" >&2; die "fio failed"; }
    MAX_LAT_MS=$(jq '[.jobs[].write.clat_ns.max] | max / 1e6' "$W/fio.json")
    IOPS=$(jq '[.jobs[].write.iops] | add | floor' "$W/fio.json")
}

P=() B=() L=()
for rep in $(seq "$REPS"); do
    start_disks "pause-base"
    writers_start
    writers_wait
    daemon_stop
    B+=("$MAX_LAT_MS")
    log "rep $rep: no transaction: longest write ${MAX_LAT_MS} ms ($IOPS IOPS)"

    start_disks "pause-tx"
    writers_start
    sleep "$TX_AT"
    tx=$(jq -nc --argjson n "$N" --arg w "$W" '{actions: [range($n) | {type: "blockdev-snapshot-sync",
         data: {"node-name": "d\(.)", "snapshot-file": "\($w)/ov\(.).qcow2",
                "snapshot-node-name": "ov\(.)", format: "qcow2", mode: "absolute-paths"}}]}')
    out=$(qmp run transaction "$tx" --timeout 120) || die "transaction failed: $out"
    writers_wait
    daemon_stop
    P+=("$MAX_LAT_MS")
    L+=("$(jq -r '.reply_s * 1000' <<<"$out")")
    log "rep $rep: transaction of $N (reply $(jq -r .reply_s <<<"$out") s): longest write ${MAX_LAT_MS} ms ($IOPS IOPS)"
done

d="fio 4k randwrite QD1 on $WRITERS of $N NBD-exported empty ${SNAP_IMG_MIB}MiB qcow2 disks for ${RUNTIME}s"
record "txpause.n$N.max_write_ms" "ms" "$d; transaction of $N blockdev-snapshot-sync at ${TX_AT}s: largest write latency" "${P[@]}"
record "txpause.n$N.baseline_max_write_ms" "ms" "$d; no transaction: largest write latency" "${B[@]}"
record "txpause.n$N.tx_reply_ms" "ms" "the transaction's reply time while the writers run" "${L[@]}"
log "done; results in $RESULTS/$SCRIPT_NAME.tsv"
