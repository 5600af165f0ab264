#!/usr/bin/env bash
# Runs one benchmark command (every `make bench*` target) between the machine it ran on and the
# load average before and after it, with a warning when the machine was not idle at the start
# (scripts/lib/machine.sh), after waiting up to BENCH_SETTLE_SECONDS (180) for the load left by
# a build to settle. The exit status is the command's.
set -uo pipefail
source "$(dirname "$0")/lib/machine.sh"
print_machine
settle_load "${BENCH_SETTLE_SECONDS:-180}"
print_load "before"
check_load "before the run"
"$@"
rc=$?
# Printed, not judged: the benchmark's own work raises the 1-minute average it ends with.
print_load "after"
exit "$rc"
