#!/usr/bin/env bash
# `make bench-llm`: SmolLM2-135M-Instruct pruned one-shot to 50% and to 2:4 by magnitude, Wanda
# and SparseGPT, side by side in one run on this machine:
#   prune  a prune-server on loopback (temporary data dir), one job per method and structure
#          (`prunectl submit JOB --wait --json`, then `prunectl report JOB --json`):
#          language_model.perplexity {dense, pruned}, prune_seconds (the layer-by-layer pass),
#          peak_memory_bytes (the worker's VmHWM), and the job's wall time from submit to SUCCEEDED;
#   llmc   llm-compressor 0.14.0.1 (its own cached venv, scripts/setup-llmcompressor-venv.sh):
#          `oneshot` with WandaPruningModifier / SparseGPTModifier, sequential pipeline, on the
#          same calibration tokens in the same order, same thread count; the oneshot call timed
#          alone, perplexity measured the same way (scripts/bench-llm/llmcompressor_run.py).
#          llm-compressor has no one-shot magnitude pruning: the magnitude rows compare against
#          plain PyTorch with prune's rules instead (marked `torch`), perplexity only.
# Calibration: BENCH_LLM_SAMPLES (32) windows of BENCH_LLM_SEQ_LEN (256) tokens drawn once from
# data/text/calibration.txt with a fixed seed (tokens.py), given to both as `input_ids`.
# Evaluation: every non-overlapping BENCH_LLM_EVAL_SEQ_LEN (256) window of data/text/evaluation.txt
# (BENCH_LLM_MAX_WINDOWS caps it). Threads: BENCH_LLM_THREADS (default: all cores).
# Development knobs: BENCH_LLM_METHODS ("magnitude wanda sparsegpt"), BENCH_LLM_STRUCTURES
# ("50% 2:4"), BENCH_LLM_SIDES ("prune llmc": run one half alone), BENCH_LLM_MODEL (another HF
# directory), BENCH_LLM_OUT (keep the JSON lines and logs there), BENCH_LLM_JOBS (write prune's job
# files and the tokens there and stop). Expects the binaries built
# (`make bench-llm` does it) unless BENCH_LLM_SIDES leaves prune out.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/server.sh
SAMPLES=${BENCH_LLM_SAMPLES:-32}
SEQ_LEN=${BENCH_LLM_SEQ_LEN:-256}
EVAL_SEQ_LEN=${BENCH_LLM_EVAL_SEQ_LEN:-256}
MAX_WINDOWS=${BENCH_LLM_MAX_WINDOWS:-}
THREADS=${BENCH_LLM_THREADS:-$(nproc)}
METHODS=${BENCH_LLM_METHODS:-magnitude wanda sparsegpt}
STRUCTURES=${BENCH_LLM_STRUCTURES:-50% 2:4}
SIDES=${BENCH_LLM_SIDES:-prune llmc}
PY=${PRUNE_VENV:?run through make bench-llm, or eval \"\$(scripts/libtorch-env.sh)\" first}/bin/python
if [ -n "${BENCH_LLM_MODEL:-}" ]; then
  MODEL=$BENCH_LLM_MODEL
elif [ -x scripts/setup-smollm2.sh ]; then
  MODEL=$(scripts/setup-smollm2.sh)
else
  MODEL=${PRUNE_SMOLLM2:-$HOME/.cache/prune/smollm2}
fi
[ -f "$MODEL/config.json" ] || { echo "no Hugging Face directory at $MODEL (scripts/setup-smollm2.sh builds it)" >&2; exit 1; }
MODEL=$(cd "$MODEL" && pwd)
has() { [[ " $SIDES " == *" $1 "* ]]; }
has llmc && LLMC_VENV=$(scripts/setup-llmcompressor-venv.sh)
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

work=$(mktemp -d)
cleanup() {
  stop_server
  if [ -n "${BENCH_LLM_OUT:-}" ]; then mkdir -p "$BENCH_LLM_OUT" && cp "$work"/*.jsonl "$work"/*.log "$BENCH_LLM_OUT"/ 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
now() { date +%s.%N; }
tag() { case $1 in 2:4) echo 2of4 ;; 50%) echo 50pct ;; *) echo "$1" ;; esac; }

# The machine and its load are printed by scripts/bench-frame.sh (`make bench-llm`).
echo "model: $MODEL; calibration: $SAMPLES x $SEQ_LEN tokens of data/text/calibration.txt (seed 0);" \
  "evaluation: $EVAL_SEQ_LEN-token windows of data/text/evaluation.txt${MAX_WINDOWS:+ (at most $MAX_WINDOWS)};" \
  "threads: $THREADS; sides: $SIDES"

"$PY" scripts/bench-llm/tokens.py "$MODEL" data/text/calibration.txt "$work/cal.safetensors" "$SAMPLES" "$SEQ_LEN" 0 \
  | sed 's/^/calibration tokens: /'
: >"$work/prune.jsonl"
: >"$work/llmc.jsonl"

# --- prune -----------------------------------------------------------------------------------
job_toml() { # METHOD STRUCTURE -> a job file in $work
  local method=$1 structure=$2 file="$work/job-$1-$(tag "$2").toml"
  {
    echo "name = \"bench-llm-$method-$(tag "$structure")\""
    echo "[model]"
    echo "dir = \"$MODEL\""
    echo "[training]"
    echo "epochs = 0"
    echo "threads = $THREADS"
    echo "[pruning]"
    echo "method = \"$method\""
    echo "schedule = { kind = \"constant_sparsity\", target_sparsity = 0.5 }"
    [ "$structure" = "2:4" ] && echo "m_by_n = [2, 4]"
    [ "$method" = sparsegpt ] && echo "sparsegpt = { block_size = 128, dampening = 0.01 }"
    if [ "$method" != magnitude ]; then
      echo "[calibration]"
      echo "tokens = \"$work/cal.safetensors\""
      echo "samples = $SAMPLES"
      echo "seq_len = $SEQ_LEN"
    fi
    echo "[evaluation]"
    echo "text = \"$PWD/data/text/evaluation.txt\""
    echo "seq_len = $EVAL_SEQ_LEN"
    [ -n "$MAX_WINDOWS" ] && echo "max_windows = $MAX_WINDOWS"
    echo "[export]"
    echo "formats = [\"safetensors\"]"
    echo "compression = \"none\""
  } >"$file"
  echo "$file"
}

run_prune() { # METHOD STRUCTURE -> one JSON line
  local method=$1 structure=$2 job t0 t1 id
  job=$(job_toml "$method" "$structure")
  t0=$(now)
  if ! "$BIN/prunectl" submit "$job" --wait --json >"$work/submit.out" 2>"$work/submit.err"; then
    echo "prune $method $structure failed:" >&2
    cat "$work/submit.err" >&2
    tail -n 5 "$work/submit.out" >&2
    return 1
  fi
  t1=$(now)
  id=$(head -n1 "$work/submit.out" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  "$BIN/prunectl" report "$id" --json >"$work/report-$id.json"
  "$PY" - "$work/report-$id.json" "$method" "$structure" "$(echo "$t1 - $t0" | bc -l)" "$id" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
lm = report.get("language_model") or sys.exit(f"{sys.argv[1]}: no language_model section in the report")
ppl = lm.get("perplexity") or sys.exit(f"{sys.argv[1]}: no language_model.perplexity in the report")
print(json.dumps({"tool": "prune", "method": sys.argv[2], "structure": sys.argv[3], "job": sys.argv[5],
                  "seconds": lm["prune_seconds"], "wall_seconds": float(sys.argv[4]),
                  "perplexity": ppl["pruned"], "dense_perplexity": ppl["dense"], "windows": ppl.get("windows"),
                  "peak_rss_bytes": lm["peak_memory_bytes"], "warnings": lm.get("warnings", [])}))
PY
}

# --- llm-compressor (and the dense / plain-PyTorch magnitude references) ----------------------
run_llmc() { # METHOD STRUCTURE -> one JSON line
  local method=$1 structure=$2 log="$work/llmc-$1-$(tag "$2").log"
  local args=(--model "$MODEL" --method "$method" --structure "$structure" --threads "$THREADS"
    --tokens "$work/cal.safetensors" --samples "$SAMPLES"
    --eval-text data/text/evaluation.txt --eval-seq-len "$EVAL_SEQ_LEN")
  [ -n "$MAX_WINDOWS" ] && args+=(--max-windows "$MAX_WINDOWS")
  local t0 t1
  t0=$(now)
  if ! "$LLMC_VENV/bin/python" scripts/bench-llm/llmcompressor_run.py "${args[@]}" >"$work/llmc.out" 2>"$log"; then
    echo "llmcompressor_run.py $method $structure failed:" >&2
    tail -n 30 "$log" >&2
    return 1
  fi
  t1=$(now)
  tail -n1 "$work/llmc.out" | "$PY" -c 'import json,sys; r=json.load(sys.stdin); r["process_seconds"]=float(sys.argv[1]); print(json.dumps(r))' \
    "$(echo "$t1 - $t0" | bc -l)"
}

if [ -n "${BENCH_LLM_JOBS:-}" ]; then # development: write prune's job files (and tokens) there, run nothing
  mkdir -p "$BENCH_LLM_JOBS"
  for structure in $STRUCTURES; do for method in $METHODS; do cp "$(job_toml "$method" "$structure")" "$BENCH_LLM_JOBS"/; done; done
  cp "$work/cal.safetensors" "$BENCH_LLM_JOBS"/
  sed -i "s|$work/cal.safetensors|$(cd "$BENCH_LLM_JOBS" && pwd)/cal.safetensors|" "$BENCH_LLM_JOBS"/*.toml
  ls "$BENCH_LLM_JOBS"
  exit 0
fi
if has prune; then
  start_server "$work"
  # The model's files uploaded once beforehand (as a user's would be): every timed submit then
  # only hashes them and finds them on the server.
  for f in "$MODEL"/*; do
    if [ -f "$f" ]; then "$BIN/prunectl" upload "$f" >/dev/null; fi
  done
fi
# A failed run is reported and left out of the table; the others go on; the exit status says so.
failed=0
record() { # SIDE METHOD STRUCTURE: run_SIDE, its JSON line appended to SIDE.jsonl and shown
  local line
  if line=$("run_$1" "$2" "$3"); then
    echo "$line" >>"$work/$1.jsonl"
    echo "$1 $2 $3: $line"
  else
    failed=1
  fi
}
if has llmc; then record llmc dense dense; fi
for structure in $STRUCTURES; do
  for method in $METHODS; do
    if has prune; then record prune "$method" "$structure"; fi
    if has llmc; then record llmc "$method" "$structure"; fi
  done
done

"$PY" scripts/bench-llm/table.py "$work/prune.jsonl" "$work/llmc.jsonl"
exit "$failed"
