# Everything goes through scripts/libtorch-env.sh: it creates the cached libtorch virtualenv on
# first use (torch 2.13.0 from PyPI) and points tch at it. Plain `cargo` works too after
# `eval "$(scripts/libtorch-env.sh)"`.
SHELL := /bin/bash
ENV := set -euo pipefail; eval "$$(scripts/libtorch-env.sh)";

.PHONY: all setup build test demo bench clean-data

all: build

setup:
	@scripts/setup-venv.sh >/dev/null

build: setup
	@$(ENV) cargo build --workspace --bins --tests

test: build
	@$(ENV) cargo test --workspace --no-fail-fast

demo: build
	@$(ENV) scripts/demo.sh

bench: setup
	@$(ENV) cargo bench -p prune-core --bench mask_select && cargo run -p prune-engine --example bench
