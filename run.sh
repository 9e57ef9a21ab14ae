#!/usr/bin/env bash
# Strata's main job on an embedded default.
#
# Until strata-daemon exists this builds strata-img, creates the default disk
# ./strata-data/disk.qcow2 (8 GiB, qcow2) if it is absent, and shows it with
# `strata-img info`. Once the daemon lands, this starts it on that disk.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"

export DOTNET_CLI_TELEMETRY_OPTOUT=1
export DOTNET_NOLOGO=1
export MSBUILDDISABLENODEREUSE=1

DATA_DIR=./strata-data
DISK="$DATA_DIR/disk.qcow2"
BIN_DIR=src/Strata.Img/bin/Release/net10.0

# Build quietly: the build log is shown only when the build fails.
build_log="$(mktemp)"
if ! dotnet build src/Strata.Img/Strata.Img.csproj -c Release -nologo -v quiet -nodeReuse:false >"$build_log" 2>&1; then
  cat "$build_log" >&2
  rm -f "$build_log"
  echo "run.sh: building strata-img failed" >&2
  exit 1
fi
rm -f "$build_log"

if [[ -x "$BIN_DIR/strata-img" ]]; then
  STRATA_IMG=("$BIN_DIR/strata-img")
elif [[ -f "$BIN_DIR/strata-img.dll" ]]; then
  STRATA_IMG=(dotnet "$BIN_DIR/strata-img.dll")
else
  echo "run.sh: strata-img was not found in $BIN_DIR after the build" >&2
  exit 1
fi

mkdir -p "$DATA_DIR"
if [[ ! -e "$DISK" ]]; then
  "${STRATA_IMG[@]}" create -f qcow2 "$DISK" 8G
fi
"${STRATA_IMG[@]}" info "$DISK"
