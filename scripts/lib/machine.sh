# Sourced by every `make bench*` run (scripts/bench-frame.sh): the machine its figures come from
# and whether it was idle. `print_machine`: CPU model, cores, AVX-512, memory, kernel.
# `print_load WHEN`: the load averages. `settle_load SECONDS`: see below. `check_load WHEN`: a
# warning on stderr when the 1-minute load average is above a quarter of the cores (other work
# shares the CPU: the timings that follow are not benchmark figures).
cores=$(nproc)

print_machine() {
  local cpu avx
  cpu=$(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo | head -n1)
  if grep -qw avx512f /proc/cpuinfo; then avx="with AVX-512"; else avx="without AVX-512"; fi
  echo "machine: ${cpu:-unknown CPU} $avx, $cores cores, $(free -g | awk '/^Mem:/{print $2}') GiB; $(uname -sr)"
}

print_load() {
  echo "load average $1: $(cut -d' ' -f1-3 /proc/loadavg)"
}

loaded() { # the 1-minute load average is above a quarter of the cores
  awk -v l="$(cut -d' ' -f1 /proc/loadavg)" -v c="$cores" 'BEGIN { exit !(l > c / 4) }'
}

# `settle_load SECONDS`: waits up to SECONDS for the 1-minute load average to fall to a quarter of
# the cores (it lags: a build that just finished, such as `make bench*`'s own, keeps it up for a
# minute or two while the CPU is already idle).
settle_load() {
  local waited=0
  if loaded; then echo "waiting up to $1 s for the load average to settle (it is $(cut -d' ' -f1 /proc/loadavg))"; fi
  while loaded && [ "$waited" -lt "$1" ]; do
    sleep 5
    waited=$((waited + 5))
  done
}

check_load() {
  local l
  l=$(cut -d' ' -f1 /proc/loadavg)
  if loaded; then
    echo "WARNING: 1-minute load average $l $1 is above a quarter of the $cores cores: other work shares" \
      "this CPU, so these timings are not benchmark figures" >&2
  fi
}
