#!/usr/bin/env bash
# Strata's main job on an embedded default: builds strata-daemon and starts it with no arguments.
# It creates ./strata-data/disk.qcow2 (8 GiB, qcow2) if absent, exports it over NBD on
# ./strata-data/nbd.sock, opens a QMP monitor on ./strata-data/qmp.sock, and prints how to connect.
# Ctrl-C stops it cleanly (exports drained, images flushed and closed, sockets removed).
# Extra arguments are passed to strata-daemon (qemu-storage-daemon's options) instead of the default.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"

export DOTNET_CLI_TELEMETRY_OPTOUT=1
export DOTNET_NOLOGO=1
export MSBUILDDISABLENODEREUSE=1

BIN_DIR=src/Strata.Daemon/bin/Release/net10.0

# Build quietly: the build log is shown only when the build fails.
build_log="$(mktemp)"
if ! dotnet build src/Strata.Daemon/Strata.Daemon.csproj -c Release -nologo -v quiet -nodeReuse:false >"$build_log" 2>&1; then
  cat "$build_log" >&2
  rm -f "$build_log"
  echo "run.sh: building strata-daemon failed" >&2
  exit 1
fi
rm -f "$build_log"

if [[ -x "$BIN_DIR/strata-daemon" ]]; then
  exec "$BIN_DIR/strata-daemon" "$@"
fi
exec dotnet "$BIN_DIR/strata-daemon.dll" "$@"
