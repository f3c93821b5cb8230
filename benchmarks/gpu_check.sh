#!/usr/bin/env bash
# Every GPU measurement of issue 22 in one go, in priority order, within a time budget.
#
#     OUT=/some/dir bash benchmarks/gpu_check.sh          # default OUT: ./gpu_check_out
#     BUDGET_S=450 (default) caps the whole run; a phase that would start with < 40 s left is
#     skipped and says so in $OUT/commands.txt; each phase writes its JSON after every row, so a
#     phase cut short by the budget keeps what it measured.
#
# Needs torch (CUDA), transformers, peft; not Hydra (benchmarks/*.py import none of it).
# Writes into $OUT: env.txt (device, driver, versions, git commit), commands.txt (every command
# with its exit status and elapsed seconds), kernel_count.json, <phase>.json + <phase>.profile.json
# (rows; one-step profiler summaries: kernels per step, top kernels by time), <phase>.log, and
# traces/*.json.gz (Chrome traces of the profiled steps of lora, lsr, dora and peft's lora/dora).
# Rehearse on a CPU: REHEARSE=1 OUT=/tmp/rehearsal bash benchmarks/gpu_check.sh (tiny models, every
# phase, CUDA-only modes skipped; a few minutes on 2 shared cores).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
BUDGET_S=${BUDGET_S:-450}
PY=${PYTHON:-python}
mkdir -p "$OUT/traces"
start=$SECONDS
export TOKENIZERS_PARALLELISM=false
EXTRA=()
if [ "${REHEARSE:-0}" = 1 ]; then EXTRA=(--tiny --device cpu); fi

{
  echo "date: $(date -u +%FT%TZ)"
  echo "host: $(hostname)"
  echo "git: $(git rev-parse HEAD 2>/dev/null || echo 'no git') $(git status --porcelain 2>/dev/null | wc -l) changed files"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv 2>&1
  nvidia-smi 2>&1 | head -20
  "$PY" - <<'EOF' 2>&1
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| cudnn", torch.backends.cudnn.version())
for name in ("transformers", "peft", "accelerate", "triton", "bitsandbytes"):
    try:
        print(name, __import__(name).__version__)
    except Exception as e:
        print(name, "unavailable:", type(e).__name__)
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), torch.cuda.get_device_capability())
EOF
  echo "nproc: $(nproc)"
} > "$OUT/env.txt"

phase() {  # phase NAME ARGS...: one step_time.py run, timed, within what is left of the budget
  local name=$1; shift
  local left=$((BUDGET_S - (SECONDS - start)))
  if [ "$left" -lt 40 ]; then
    echo "SKIPPED (budget, ${left}s left): $name: $PY benchmarks/step_time.py $*" >> "$OUT/commands.txt"
    return
  fi
  local cmd=("$PY" benchmarks/step_time.py "$@" ${EXTRA[@]+"${EXTRA[@]}"} --json "$OUT/$name.json" --trace-dir "$OUT/traces"
             --trace-methods lora,lsr,dora,peft_lora,peft_dora,lsr_unmerged,lora_unmerged)
  echo "${cmd[*]}" >> "$OUT/commands.txt"
  local t0=$SECONDS
  timeout "$left" "${cmd[@]}" > "$OUT/$name.log" 2>&1
  echo "  -> $name exit $? in $((SECONDS - t0)) s (total $((SECONDS - start)) s)" >> "$OUT/commands.txt"
}

# 0. the kernel budget on this machine's CPU (seconds; no GPU needed, same counts as tests/test_kernel_budget.py)
echo "$PY benchmarks/kernel_count.py --json $OUT/kernel_count.json" >> "$OUT/commands.txt"
"$PY" benchmarks/kernel_count.py --json "$OUT/kernel_count.json" > "$OUT/kernel_count.log" 2>&1
echo "  -> kernel_count exit $?" >> "$OUT/commands.txt"

# 1. the launch-bound scale, every method eager, then whole-step CUDA graphs (no compile: seconds)
phase roberta_eager --scales roberta --modes eager
phase roberta_graphed --scales roberta --modes graphed \
  --mode-methods lora,lsr,dora,peft_lora,full,base,lora_unmerged,lsr_unmerged
# 2. the compute-bound scale (~1.0B): eager and graphed; inference rows for the unmerged/merged targets
phase llama_eager --scales llama1b --modes eager \
  --methods full,lora,lsr,dora,peft_lora,peft_dora,base,lora_unmerged,lsr_unmerged,lora_merged,lsr_merged
phase llama_graphed --scales llama1b --modes graphed --mode-methods lora,lsr,dora,peft_lora
# 3. compiled (regional: one compile per method, shared by its layers), then the compiled blocks
#    inside the captured step (inductor's cache is warm by then)
phase roberta_compiled --scales roberta --modes compiled,compiled_graphed
phase llama_compiled --scales llama1b --modes compiled,compiled_graphed --mode-methods lora,lsr,dora,peft_lora
# 4. what training.torch_compile_mode=reduce-overhead gives: whole-model compile (~1 min per method)
phase roberta_reduce_overhead --scales roberta --modes reduce_overhead --mode-methods lora,lsr,peft_lora

echo "done in $((SECONDS - start)) s" >> "$OUT/commands.txt"
cat "$OUT/commands.txt"
