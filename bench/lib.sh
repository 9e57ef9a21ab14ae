# Shared by the bench scripts (sourced, not run): settings, locating strata-img, timing and medians.
# A script sets its own defaults (SIZE_MB, REPS, ...) before or after sourcing; this file only fills in
# what every script shares.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPS=${REPS:-3}
WORK=${WORK:-/var/tmp/strata-bench}
QEMU_IMG=${QEMU_IMG:-qemu-img}
mkdir -p "$WORK"

# locate_strata_img [aot|build]: sets STRATA_IMG, unless it is already set, to a fresh strata-img: a NativeAOT
# publish falling back to a Release build (aot, the default), or a Release build only (build).
locate_strata_img() {
    [[ -n ${STRATA_IMG:-} ]] && return
    local out="$WORK/strata-img-bin"
    { [[ ${1:-aot} == aot ]] && dotnet publish "$root/src/Strata.Img" -c Release -o "$out" -p:PublishAot=true >"$WORK.build.log" 2>&1; } \
        || dotnet build "$root/src/Strata.Img" -c Release -o "$out" >"$WORK.build.log" 2>&1 \
        || { cat "$WORK.build.log"; exit 1; }
    STRATA_IMG="$out/strata-img"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
seconds() { # CMD...: runs CMD (stdout dropped); prints the seconds it took
    local t0 t1
    t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f\n", b - a }'
}
# time_cmd PREP CMD...: runs PREP (untimed, through eval) then CMD, REPS times; prints the median seconds.
time_cmd() {
    local prep=$1; shift
    for _ in $(seq "$REPS"); do
        eval "$prep"
        seconds "$@"
    done | median
}
ratio() { awk -v q="$1" -v s="$2" 'BEGIN { printf "%.2f", q / s }'; } # qemu_seconds strata_seconds
rows=()
record() { # figure qemu_seconds strata_seconds: adds a table row and logs it
    local r; r=$(ratio "$2" "$3")
    rows+=("| $1 | $(printf %.3f "$2") | $(printf %.3f "$3") | $r |")
    echo "$1: qemu-img $2 s, strata-img $3 s, ratio $r" >&2
}
print_rows() { # prints the table of recorded rows
    echo
    echo "| figure | qemu-img (s) | strata-img (s) | ratio qemu/strata |"
    echo "|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
}
