# Everything goes through scripts/libtorch-env.sh: it creates the cached libtorch virtualenv on
# first use (torch 2.13.0 from PyPI) and points tch at it. Plain `cargo` works too after
# `eval "$(scripts/libtorch-env.sh)"`.
SHELL := /bin/bash
ENV := set -euo pipefail; eval "$$(scripts/libtorch-env.sh)";

.PHONY: all setup build test python-test lint demo bench bench-channels bench-vs-tfmot bench-llm gpu-check bench-big clean-data fuzz load bench-cluster cluster-demo

all: build

# The libtorch virtualenv, PostgreSQL's binaries for the storage tests (installed with apt-get
# when initdb is missing), s3s-fs (a loopback S3 server for the S3 file-store tests) and
# headless Chromium for the dashboard tests (apt-get when `chromium` is missing).
setup:
	@scripts/setup-venv.sh >/dev/null
	@scripts/setup-postgres.sh
	@scripts/setup-s3s.sh
	@scripts/setup-chromium.sh

build: setup
	@$(ENV) cargo build --workspace --bins --tests

test: build
	@$(ENV) cargo test --workspace --no-fail-fast
	@$(MAKE) --no-print-directory python-test

# The `prune` Python package (python/, docs/python.md): its tools into the project venv
# (scripts/setup-python-package.sh), the extension built and installed there (maturin develop,
# release: the masks are the hot path), then its pytest suite, examples/python included. The suite
# runs the service's debug binaries (the parity test's prune-worker, the tracked runs' prune-server),
# built first here (a no-op after `make build`). python/ is its own Cargo workspace
# (python/Cargo.toml): target/python keeps its build apart.
PY_ENV := $(ENV) PY_VENV=$$(scripts/setup-python-package.sh); export VIRTUAL_ENV=$$PY_VENV PATH=$$PY_VENV/bin:$$PATH;
python-test:
	@$(PY_ENV) cargo build --quiet -p prune-server -p prune-worker \
		&& CARGO_TARGET_DIR=$${CARGO_TARGET_DIR:-$(CURDIR)/target/python} maturin develop --release --quiet --manifest-path python/Cargo.toml \
		&& python -m pytest -q python/tests

# Formatting (rustfmt.toml) and clippy on every target, warnings as errors; CI runs it first.
lint: setup
	@$(ENV) cargo fmt --all --check && cargo clippy --workspace --all-targets -- -D warnings
	@$(ENV) cargo fmt --manifest-path python/Cargo.toml --check \
		&& CARGO_TARGET_DIR=$${CARGO_TARGET_DIR:-$(CURDIR)/target/python} cargo clippy --manifest-path python/Cargo.toml --all-targets -- -D warnings

demo: build
	@$(ENV) scripts/demo.sh

# Three prune-server nodes on one PostgreSQL and one S3 server (loopback, temporary dirs): the
# node running the digits job is killed (kill -9 of its process group), another one finishes it.
cluster-demo: build
	@$(ENV) scripts/cluster-demo.sh

# Every bench target runs through scripts/bench-frame.sh: the machine (CPU, cores, AVX-512), the
# load average before and after, and a warning when the machine was not idle at the start.
BENCH_FRAME := scripts/bench-frame.sh

bench: build
	@$(ENV) $(BENCH_FRAME) sh -c 'cargo bench -p prune-core --bench mask_select && cargo run -p prune-engine --example bench && scripts/bench-channels/run.sh'

# Channel pruning alone: prune's slim CNN against Torch-Pruning 1.6.1 and the dense model in plain
# PyTorch (accuracy, parameters, latency at batch 1 and 256, training time), one run.
bench-channels: build
	@$(ENV) $(BENCH_FRAME) scripts/bench-channels/run.sh

# The seed job end to end, side by side in one run: a default prune-server (submit -> SUCCEEDED),
# tfmot 0.8.1's model.fit (TensorFlow CPU, installed once into its own cached venv) and the
# PyTorch eager loop; medians of ROUNDS (3) and their ratios. Not part of `make test`.
bench-vs-tfmot: build
	@$(ENV) $(BENCH_FRAME) scripts/bench-vs-tfmot/run.sh

# SmolLM2-135M-Instruct at 50% and 2:4 by magnitude, Wanda and SparseGPT, side by side in one run:
# prune-server jobs (prunectl report's perplexity, prune_seconds, peak memory) against
# llm-compressor 0.14's oneshot (its own cached venv, scripts/setup-llmcompressor-venv.sh) on the
# same calibration tokens and thread count. BENCH_LLM_SAMPLES (32), BENCH_LLM_SEQ_LEN (256),
# BENCH_LLM_THREADS (all cores); see scripts/bench-llm/run.sh. Not part of `make test`.
bench-llm: build
	@$(ENV) $(BENCH_FRAME) scripts/bench-llm/run.sh

# CUDA checks for a GPU machine (build with PRUNE_CUDA=1 + ldd, CUDA masks == CPU masks, mask
# update, seed job epochs against PyTorch eager on the same GPU, bitwise resume). Exits 2 where
# there is no CUDA device.
gpu-check: setup
	@$(ENV) scripts/gpu-check.sh

# Fuzzing (cargo-fuzz, nightly): seeds the corpora, then runs each target for FUZZ_SECS seconds.
# Needs `cargo install cargo-fuzz`. Crashes land in fuzz/artifacts/<target>/.
FUZZ_SECS ?= 60
FUZZ_TARGETS := spec_toml spec_json safetensors_read decompress
FUZZ_TARGET_DIR ?= $(CURDIR)/fuzz/target

fuzz:
	@cd fuzz && CARGO_TARGET_DIR=$(FUZZ_TARGET_DIR) cargo run -q --example seed_corpus
	@set -e; for t in $(FUZZ_TARGETS); do \
		dict=$(CURDIR)/fuzz/dicts/$$t.dict; [ -f $$dict ] && dict=-dict=$$dict || dict=; \
		CARGO_TARGET_DIR=$(FUZZ_TARGET_DIR) cargo +nightly fuzz run --target-dir $(FUZZ_TARGET_DIR) $$t -- \
			-max_total_time=$(FUZZ_SECS) -rss_limit_mb=4096 $$dict; \
	done

# Load test against a real prune-server on loopback (not part of `make test`): LOAD_ARGS, e.g.
# `make load LOAD_ARGS="--jobs 40 --clients 10"`; defaults --jobs 1000 --clients 50 --workers 2.
LOAD_ARGS ?=
load: build
	@$(ENV) target/debug/prune-load $(LOAD_ARGS)

# Cluster benchmark (not part of `make test`): PostgreSQL + S3 + 1, 2, 3 nodes; jobs/s, claim
# latency, takeover time after kill -9, store traffic per job, idle database load. BENCH_CLUSTER_ARGS,
# e.g. `make bench-cluster BENCH_CLUSTER_ARGS="--kills 5 --jobs 6"`.
BENCH_CLUSTER_ARGS ?=
bench-cluster: build
	@$(ENV) $(BENCH_FRAME) target/debug/prune-bench-cluster $(BENCH_CLUSTER_ARGS)

# A 1 GB state dict one-shot through server + prunectl against a PyTorch script + the zstd CLI
# (docs/big-checkpoints.md); e.g. `make bench-big BENCH_BIG_ARGS="--tensors 4 --dir /var/tmp"`.
BENCH_BIG_ARGS ?=
bench-big: build
	@$(ENV) $(BENCH_FRAME) target/debug/prune-bench-big $(BENCH_BIG_ARGS)
