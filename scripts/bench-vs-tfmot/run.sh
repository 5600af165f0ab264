#!/usr/bin/env bash
# `make bench-vs-tfmot`: the seed pruning job three ways, side by side in one run on this machine:
#   prune      a default prune-server (only --listen and --data-dir given), timed from
#              `prunectl submit` to SUCCEEDED (the data set uploaded beforehand, as a user's would be);
#   tfmot      tensorflow-model-optimization 0.8.1's `model.fit` of the same job (TensorFlow CPU);
#   eager      the hand-written PyTorch loop a user would otherwise write (same schedule and masks).
# Each contender runs ROUNDS times (default 3), interleaved; the medians and their ratios are
# printed. The job: conv 1->12 3x3, relu, maxpool 2, linear 2028->10; 60,000 samples of 1x28x28,
# 10% held out; Adam lr 1e-3, batch 128, 2 epochs; PolynomialDecay 0.5->0.8 over all 844 steps,
# frequency 100. Expects the binaries built (`make bench-vs-tfmot` does it).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/server.sh
ROUNDS=${ROUNDS:-3}
EPOCHS=${EPOCHS:-2}
TF_VENV=$(scripts/setup-tfmot-venv.sh)
work=$(mktemp -d)
cleanup() {
  stop_server
  rm -rf "$work"
}
trap cleanup EXIT
now() { date +%s.%N; }

"$PRUNE_VENV/bin/python" scripts/bench-vs-tfmot/make_data.py "$work/data.safetensors"
start_server "$work"
blob=$("$BIN/prunectl" upload "$work/data.safetensors" | tail -n1)
cat >"$work/job.toml" <<TOML
name = "bench-vs-tfmot"
[model]
sequential = [
  { type = "conv2d", in = 1, out = 12, kernel = 3 },
  { type = "relu" },
  { type = "maxpool2d", kernel = 2 },
  { type = "flatten" },
  { type = "linear", in = 2028, out = 10 },
]
[data]
blob = "$blob"
validation_split = 0.1
[training]
epochs = $EPOCHS
batch_size = 128
optimizer = "adam"
learning_rate = 0.001
seed = 0
[pruning]
schedule = { kind = "polynomial_decay", initial_sparsity = 0.5, final_sparsity = 0.8, begin_step = 0, end_step = $((EPOCHS * 422)), frequency = 100 }
[export]
formats = ["safetensors"]
compression = "zstd"
sparse_format = "bitmask"
TOML

run_prune() {
  local t0 id t1
  t0=$(now)
  id=$("$BIN/prunectl" submit "$work/job.toml")
  "$BIN/prunectl" watch "$id" >/dev/null
  t1=$(now)
  local acc
  acc=$("$BIN/prunectl" report "$id" --json | "$PRUNE_VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["final_val_accuracy"])')
  echo "{\"seconds\": $(echo "$t1 - $t0" | bc -l), \"val_accuracy\": $acc, \"job\": \"$id\"}"
}
echo "seed job: conv 1->12 3x3 + linear 2028->10, 60000x1x28x28, $EPOCHS epochs of 422 steps, batch 128, Adam 1e-3," \
     "PolynomialDecay 0.5->0.8 over $((EPOCHS * 422)) steps; $(nproc) cores; $ROUNDS rounds, medians"
: >"$work/prune.jsonl"; : >"$work/tfmot.jsonl"; : >"$work/eager.jsonl"
for round in $(seq "$ROUNDS"); do
  run_prune | tee -a "$work/prune.jsonl" | sed "s/^/round $round prune: /"
  "$TF_VENV/bin/python" scripts/bench-vs-tfmot/tfmot_fit.py "$work/data.safetensors" "$EPOCHS" 128 2>"$work/tf.err" \
    | tail -n1 | tee -a "$work/tfmot.jsonl" | sed "s/^/round $round tfmot: /" || { cat "$work/tf.err"; exit 1; }
  "$PRUNE_VENV/bin/python" scripts/bench-vs-tfmot/torch_eager.py "$work/data.safetensors" "$EPOCHS" 128 \
    | tee -a "$work/eager.jsonl" | sed "s/^/round $round eager: /"
done
"$PRUNE_VENV/bin/python" - "$work" <<'PY'
import json, statistics, sys
w = sys.argv[1]
med = {}
for name in ("prune", "tfmot", "eager"):
    rows = [json.loads(l) for l in open(f"{w}/{name}.jsonl") if l.strip()]
    med[name] = (statistics.median(r["seconds"] for r in rows), statistics.median(r["val_accuracy"] for r in rows))
for name, label in (("prune", "prune (submit -> SUCCEEDED, default server)"), ("tfmot", "tfmot 0.8.1 model.fit"),
                    ("eager", "PyTorch eager loop")):
    print(f"{label:45s} {med[name][0]:6.2f} s   val accuracy {med[name][1]:.3f}")
print(f"prune / tfmot: {med['prune'][0] / med['tfmot'][0]:.2f}x   prune / eager: {med['prune'][0] / med['eager'][0]:.2f}x")
PY
