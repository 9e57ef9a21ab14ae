#!/usr/bin/env bash
# Strata's single test command (README "Set-up", and .ci/run).
#
#  1. installs the oracle tools the tests need (qemu-img, qemu-io, qemu-storage-daemon,
#     nbdinfo, nbdkit, fio) from Debian when any is missing;
#  2. builds Strata.slnx in Release;
#  3. runs every test project under tests/ once (dotnet test, --no-build), writing TRX
#     files to artifacts/test-results/<project>/;
#  4. adds up the TRX counters and prints, as the very last line,
#         N passed, N failed, N skipped
#
# Exit status is non-zero when the tools cannot be installed, the build fails, any test
# fails, or any test project fails to run (no TRX, crashed or hung test host): each of the
# latter counts as one failed test in the final line. A failed build or install prints
# "0 passed, 1 failed, 0 skipped".
#
# Knobs (environment):
#   STRATA_TEST_VERBOSITY   console logger verbosity: minimal (default; failures + summary)
#                           or normal (every test name)
#   STRATA_TEST_FILTER      passed to dotnet test --filter (e.g. "FullyQualifiedName~Qcow2")
#   STRATA_TEST_TIMEOUT     seconds one test project may run before it is killed (900)
#   STRATA_TEST_HANG        how long one test may run before its test host is killed (10m)
#   STRATA_SKIP_INSTALL=1   don't try to install missing tools (tests needing them then fail)

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"

export DOTNET_CLI_TELEMETRY_OPTOUT=1
export DOTNET_NOLOGO=1
export DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
export DOTNET_GENERATE_ASPNET_CERTIFICATE=false
# No MSBuild worker nodes left behind after the build (they would outlive this script).
export MSBUILDDISABLENODEREUSE=1

RESULTS="$ROOT/artifacts/test-results"
VERBOSITY="${STRATA_TEST_VERBOSITY:-minimal}"
PROJECT_TIMEOUT="${STRATA_TEST_TIMEOUT:-900}"
HANG_TIMEOUT="${STRATA_TEST_HANG:-10m}"

SUMMARY_PRINTED=0
summary() { # passed failed skipped
  echo "$1 passed, $2 failed, $3 skipped"
  SUMMARY_PRINTED=1
}
on_exit() {
  local rc=$?
  if [[ $SUMMARY_PRINTED -eq 0 ]]; then
    echo "test.sh: stopped before the tests could be counted (exit $rc)" >&2
    summary 0 1 0
    [[ $rc -eq 0 ]] && exit 1
  fi
  exit "$rc"
}
trap on_exit EXIT

section() { echo; echo "==> $*"; }

# ---------------------------------------------------------------- 1. tools
TOOLS=(qemu-img qemu-io qemu-storage-daemon nbdinfo fio nbdkit)
PACKAGES=(qemu-utils qemu-system-common libnbd-bin nbdkit fio)

missing_tools() {
  local t out=()
  for t in "${TOOLS[@]}"; do
    command -v "$t" >/dev/null 2>&1 || out+=("$t")
  done
  echo "${out[*]:-}"
}

section "checking test tools: ${TOOLS[*]}"
missing="$(missing_tools)"
if [[ -n "$missing" ]]; then
  echo "missing: $missing"
  if [[ "${STRATA_SKIP_INSTALL:-0}" == 1 ]]; then
    echo "STRATA_SKIP_INSTALL=1: not installing; tests that need these tools will fail" >&2
  else
    if [[ $(id -u) -eq 0 ]]; then
      SUDO=()
    elif command -v sudo >/dev/null 2>&1; then
      SUDO=(sudo)
    else
      echo "test.sh: cannot install ${PACKAGES[*]}: not root and no sudo" >&2
      exit 1
    fi
    echo "installing Debian packages: ${PACKAGES[*]}"
    if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q \
      || ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
             apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"; then
      echo "test.sh: apt-get failed to install ${PACKAGES[*]}" >&2
      exit 1
    fi
    missing="$(missing_tools)"
    if [[ -n "$missing" ]]; then
      echo "test.sh: still missing after install: $missing" >&2
      exit 1
    fi
  fi
fi
qemu-img --version 2>/dev/null | head -n 1 || true

# ---------------------------------------------------------------- 2. build
section "dotnet build Strata.slnx -c Release"
BUILD_ARGS=(-c Release -nologo -nodeReuse:false)
# In CI, don't leave a Roslyn compiler server running after the script ends.
[[ "${CI:-}" == true ]] && BUILD_ARGS+=(-p:UseSharedCompilation=false)
if ! dotnet build Strata.slnx "${BUILD_ARGS[@]}"; then
  echo "test.sh: BUILD FAILED (errors above)" >&2
  exit 1
fi

# ---------------------------------------------------------------- 3. tests
rm -rf "$RESULTS"
mkdir -p "$RESULTS"

# Only test projects (helpers such as tests/Strata.CrashWriter are plain programs the tests run).
mapfile -t PROJECTS < <(grep -l '<IsTestProject>true</IsTestProject>' $(find tests -mindepth 2 -maxdepth 2 -name '*.csproj') | sort)
if [[ ${#PROJECTS[@]} -eq 0 ]]; then
  echo "test.sh: no test projects under tests/" >&2
  exit 1
fi

# Counters in TRX: <Counters total="" executed="" passed="" failed="" error="" timeout=""
# aborted="" inconclusive="" passedButRunAborted="" notRunnable="" notExecuted="" .../>
# Prints "passed failed skipped" summed over the files.
trx_counts() {
  awk '
    function attr(s, name,   m) {
      if (match(s, "[ \t]" name "=\"[0-9]+\"")) {
        m = substr(s, RSTART, RLENGTH); gsub(/[^0-9]/, "", m); return m + 0
      }
      return 0
    }
    /<Counters[ \t]/ {
      # the element may span lines: gather it up to its closing ">"
      s = $0
      while (s !~ />/ && (getline line) > 0) s = s " " line
      tp = attr(s, "passed") + attr(s, "passedButRunAborted")
      tf = attr(s, "failed") + attr(s, "error") + attr(s, "timeout") + attr(s, "aborted")
      # xunit skips land in total but not in executed, and notExecuted stays 0: so a
      # skip is whatever of total neither passed nor failed.
      tk = attr(s, "total") - tp - tf
      if (tk < attr(s, "notExecuted")) tk = attr(s, "notExecuted")
      if (tk < 0) tk = 0
      p += tp; f += tf; k += tk
    }
    END { printf "%d %d %d\n", p, f, k }
  ' "$@"
}

TOTAL_P=0 TOTAL_F=0 TOTAL_S=0
BROKEN=()   # projects that did not run cleanly to completion

for proj in "${PROJECTS[@]}"; do
  name="$(basename "$proj" .csproj)"
  out="$RESULTS/$name"
  mkdir -p "$out"
  section "dotnet test $proj"
  TEST_ARGS=(-c Release --no-build --nologo
    --results-directory "$out"
    --logger "trx;LogFileName=$name.trx"
    --logger "console;verbosity=$VERBOSITY"
    --blame-hang-timeout "$HANG_TIMEOUT" --blame-hang-dump-type none)
  [[ -n "${STRATA_TEST_FILTER:-}" ]] && TEST_ARGS+=(--filter "$STRATA_TEST_FILTER")

  # timeout kills the whole process group (test hosts included) when time is up; at an
  # interactive terminal use --foreground so that Ctrl-C still reaches dotnet test.
  TIMEOUT=(timeout --kill-after=30)
  [[ -t 0 ]] && TIMEOUT+=(--foreground)
  rc=0
  "${TIMEOUT[@]}" "$PROJECT_TIMEOUT" dotnet test "$proj" "${TEST_ARGS[@]}" </dev/null || rc=$?
  [[ $rc -eq 124 || $rc -eq 137 ]] && echo "test.sh: $name timed out after ${PROJECT_TIMEOUT}s" >&2

  mapfile -t trx < <(find "$out" -name '*.trx' -type f)
  if [[ ${#trx[@]} -eq 0 ]]; then
    echo "test.sh: $name produced no TRX (exit $rc): counted as 1 failure" >&2
    BROKEN+=("$name (no results, exit $rc)")
    TOTAL_F=$((TOTAL_F + 1))
    continue
  fi
  read -r p f s < <(trx_counts "${trx[@]}")
  # (worded unlike the final line, which must be the only "N passed, N failed, ..." line)
  echo "$name -> passed $p, failed $f, skipped $s (dotnet test exit $rc)"
  TOTAL_P=$((TOTAL_P + p)) TOTAL_F=$((TOTAL_F + f)) TOTAL_S=$((TOTAL_S + s))
  if [[ $rc -ne 0 && $f -eq 0 ]]; then
    # dotnet test failed yet no test is recorded as failed: the test host crashed or
    # hung, or the run was aborted. Count it so the run cannot look green.
    echo "test.sh: $name exited $rc without a failed test (crash/hang/abort): counted as 1 failure" >&2
    BROKEN+=("$name (exit $rc, test run aborted)")
    TOTAL_F=$((TOTAL_F + 1))
  fi
done

# ---------------------------------------------------------------- 4. summary
echo
echo "TRX results: ${RESULTS#"$ROOT"/}/"
for b in "${BROKEN[@]}"; do echo "BROKEN: $b"; done
if [[ $((TOTAL_P + TOTAL_F + TOTAL_S)) -eq 0 ]]; then
  echo "test.sh: no test was executed" >&2
fi
summary "$TOTAL_P" "$TOTAL_F" "$TOTAL_S"
[[ $TOTAL_F -eq 0 ]]
