#!/usr/bin/env bash
# Records which managed methods strata-daemon runs, in the order it first runs them, and
# writes their symbol names to hot-methods.txt. The NativeAOT compiler lays those methods out
# first and in that order (Strata.Daemon.csproj: --order, --method-layout:explicit), so
# start-up and the common QMP and NBD paths touch a few contiguous pages of code instead of
# pages spread over the whole 4.6 MiB of it (see README, "Start-up and memory").
#
# The recording runs a NativeAOT build under valgrind's lackey tool, which reports every
# block of machine code as it is first executed, while a scripted session drives it:
# start-up with one qcow2 node and a writable NBD export (the bench's command line), a QMP
# handshake and a few queries, NBD reads, writes, flush, trim and block status, then quit.
# Re-run it after larger changes; a stale list only costs locality (methods it no longer
# names are ignored, new ones go after it).
#
#   src/Strata.Daemon/Layout/record-hot-methods.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
WORK="$(mktemp -d /var/tmp/strata-hot-methods.XXXXXX)"
trap 'pkill -f "$WORK/bin/strata-daemon" 2>/dev/null || true; rm -rf "$WORK"' EXIT

for tool in valgrind qemu-img qemu-io nbdinfo python3 nm readelf; do
    command -v "$tool" >/dev/null || { echo "record-hot-methods: $tool is missing (apt-get install valgrind qemu-utils libnbd-bin binutils)" >&2; exit 1; }
done

echo "publishing strata-daemon (NativeAOT) ..."
dotnet publish "$ROOT/src/Strata.Daemon" -c Release -p:PublishAot=true -o "$WORK/pub" >"$WORK/publish.log" 2>&1 ||
    { cat "$WORK/publish.log" >&2; exit 1; }
# valgrind 3.19 cannot read the DWARF of strata-daemon.dbg, so it runs a copy without it;
# the symbols come from the .dbg through nm.
mkdir "$WORK/bin"
cp "$WORK/pub/strata-daemon" "$WORK/bin/"

qemu-img create -q -f qcow2 "$WORK/disk.qcow2" 1G
QMP="$WORK/qmp.sock" NBD="$WORK/nbd.sock"

echo "running the session under valgrind (about a minute) ..."
# Only the first execution of each block matters: keep one line per block address. Without
# chasing, valgrind starts a new block at every call and jump target, so each method that runs
# shows up with its own entry address.
valgrind --tool=lackey --trace-superblocks=yes --vex-guest-chase=no --log-fd=3 "$WORK/bin/strata-daemon" \
    --blockdev "driver=file,node-name=disk0-file,filename=$WORK/disk.qcow2" \
    --blockdev driver=qcow2,node-name=disk0,file=disk0-file \
    --nbd-server "addr.type=unix,addr.path=$NBD" \
    --export type=nbd,id=exp-disk0,node-name=disk0,name=disk0,writable=on \
    --chardev "socket,id=m,path=$QMP,server=on,wait=off" --monitor chardev=m \
    3> >(awk '$1 == "SB" && !seen[$2]++ { print $2 }' >"$WORK/blocks.txt") \
    >"$WORK/daemon.log" 2>&1 &
DAEMON=$!

python3 - "$QMP" "$NBD" <<'PY'
import json, os, socket, subprocess, sys, time
qmp_path, nbd_path = sys.argv[1], sys.argv[2]
deadline = time.monotonic() + 300
while not os.path.exists(qmp_path):
    if time.monotonic() > deadline:
        sys.exit("record-hot-methods: the daemon did not open its QMP socket")
    time.sleep(0.2)
def session():
    s = socket.socket(socket.AF_UNIX)
    s.connect(qmp_path)
    return s, s.makefile("rw")
def call(cmd, **args):
    f.write(json.dumps({"execute": cmd, "arguments": args} if args else {"execute": cmd}) + "\n")
    f.flush()
    while True:
        r = json.loads(f.readline())
        if "return" in r or "error" in r:
            return r
# As the benchmarks do: a handshake on a connection of its own, then some idle time.
s, f = session()
f.readline()
call("qmp_capabilities")
s.close()
time.sleep(3)
s, f = session()
f.readline()
call("qmp_capabilities")
for cmd in ("query-version", "query-named-block-nodes", "query-block", "query-block-exports", "query-jobs"):
    call(cmd)
call("query-named-block-nodes", flat=True)
call("no-such-command")
uri = "nbd+unix:///disk0?socket=" + nbd_path
subprocess.run(["nbdinfo", "--map", uri], check=True, stdout=subprocess.DEVNULL)
io = ["write -P 0x5a 0 1M", "read -P 0x5a 0 1M", "write -z 2M 1M", "discard 0 64k",
      "read 4M 4k", "aio_write -P 0x11 8M 4k", "aio_read 8M 4k", "aio_flush", "flush"]
subprocess.run(["qemu-io", "-f", "raw", uri] + [a for c in io for a in ("-c", c)],
               check=True, stdout=subprocess.DEVNULL)
subprocess.run(["nbdinfo", "--map", uri], check=True, stdout=subprocess.DEVNULL)
call("quit")
PY
# Shutting down under valgrind can take long; what matters has run by now.
sleep 5
kill "$DAEMON" 2>/dev/null || true
wait "$DAEMON" 2>/dev/null || true

python3 - "$WORK/pub/strata-daemon.dbg" "$WORK/blocks.txt" "$HERE/hot-methods.txt" <<'PY'
import bisect, re, subprocess, sys
dbg, blocks, out = sys.argv[1:]
# The managed code section: only its methods can be ordered by the compiler.
sections = subprocess.run(["readelf", "-SW", dbg], capture_output=True, text=True, check=True).stdout
m = re.search(r"__managedcode\s+\S+\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)", sections)
lo = int(m.group(1), 16); hi = lo + int(m.group(2), 16)
# Identical method bodies are folded into one, which then has several names: keep them all.
names_at = {}
for line in subprocess.run(["nm", "-n", "--defined-only", dbg], capture_output=True, text=True, check=True).stdout.splitlines():
    p = line.split()
    if len(p) == 3 and p[1] in "tT" and not p[2].startswith(("__start_", "__stop_")):
        names_at.setdefault(int(p[0], 16), []).append(p[2])
addrs = sorted(names_at)
seen, order = set(), []
for line in open(blocks):
    a = int(line, 16)
    if not lo <= a < hi:
        continue
    start = addrs[bisect.bisect_right(addrs, a) - 1]
    if start not in seen:
        seen.add(start)
        order.extend(names_at[start])
if len(order) < 500:
    sys.exit("record-hot-methods: only %d methods recorded; the session did not run" % len(order))
with open(out, "w") as f:
    f.write("\n".join(order) + "\n")
print("record-hot-methods: %d methods written to %s" % (len(order), out))
PY
