#!/usr/bin/env bash
# Issue 28 on two lent H200s: the real Qwen2.5-Coder-0.5B-Instruct trained with GRPO in request and code mode,
# each at two learning rates, against the untrained baselines on the same problems (paired).
#   setsid bash bench/h200_grpo.sh start     # runs the three phases below in the background, logs in $R
#   bash bench/h200_grpo.sh status           # one line per process: its last step and metrics
#   bash bench/h200_grpo.sh collect FILE.tgz # tables, comparisons, curves and logs in one file (a device call
#                                            # brings back only a few files)
# The calls of 2026-12-01 (29 minutes of device time): one with the wheels and GSM8K (`.whl`, `.carry/data`), nine
# with the model's pieces (bench/device_model.py), the last of them building it and starting this script with
# `setsid` from a copy of the checkout in /root/work; then calls that print `status` until it is done.
# 1. The curriculum of each mode (pass rates of LIMIT big-value GSM8K train problems, 4 samples each), GPU 0 and 1.
# 2. The untrained baselines on big-value GSM8K test and GSM8K test, and four runs (both request runs on GPU 0, both
#    code runs on GPU 1), stopped by SIGTERM after TRAIN_S seconds or when $R/STOP appears (each finishes its step
#    and saves a checkpoint, the adapter, agent.yaml and its curves).
# 3. Each run's agent on the same two test sets; `training.evaluate --compare` against its mode's baseline.
# Needs the wheels in /root/site, GSM8K in /root/shared/data and the model in /root/models (bench/device_model.py).
# The machine has no bubblewrap: the sandbox runs with `--set executor.isolation=none`, the explicit opt-in.
set -u
R=${R:-/root/runs}
TRAIN_S=${TRAIN_S:-900}
LIMIT=${LIMIT:-512}
LRS=(${LRS:-2.0e-5 1.0e-4})
export PYTHONPATH=/root/site:$PWD DELEGATE_MODELS=/root/models HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
TEST=/root/shared/data/gsm8k/test.jsonl
COMMON=(--set executor.isolation=none --set planner.cuda_graph=true)
TRAIN_DATA=(--set data.path=/root/shared/data/gsm8k/train.jsonl --set "data.limit=$LIMIT")
recipe() { echo "training/recipes/qwen2.5-0.5b-$1.yaml"; }

evaluate() {  # GPU CONFIG NAME [ARGS...]: both test sets, in the background
  local gpu=$1 config=$2 name=$3; shift 3
  CUDA_VISIBLE_DEVICES=$gpu python3 -m training.evaluate --config "$config" --data $TEST --big-values --seed 0 \
    --batch-size 512 --set planner.batch_size=512 "${COMMON[@]}" "$@" --out "$R/eval/bv-$name" \
    > "$R/eval/bv-$name.log" 2>&1 &
  CUDA_VISIBLE_DEVICES=$gpu python3 -m training.evaluate --config "$config" --data $TEST \
    --batch-size 700 --set planner.batch_size=700 "${COMMON[@]}" "$@" --out "$R/eval/gsm-$name" \
    > "$R/eval/gsm-$name.log" 2>&1 &
}

start() {
  mkdir -p "$R/eval"
  echo "$(date +%T) phase 1: curricula"
  local gpu=0 mode curricula=()
  for mode in request code; do
    CUDA_VISIBLE_DEVICES=$gpu python3 -m training.curriculum --config "$(recipe $mode)" --samples 4 \
      --out "$R/curriculum-$mode.jsonl" "${TRAIN_DATA[@]}" "${COMMON[@]}" --set planner.batch_size=1024 \
      > "$R/curriculum-$mode.log" 2>&1 &
    curricula+=($!)
    gpu=1
  done
  wait "${curricula[@]}"  # alone on their GPUs: beside two evaluations, 1,024 code rows ran out of memory
  for mode in request code; do
    [ -s "$R/curriculum-$mode.jsonl" ] || echo "$(date +%T) no curriculum for $mode: its run computes it (slowly)"
  done
  echo "$(date +%T) phase 2: training for $TRAIN_S s"
  evaluate 0 "$(recipe request)" request-base  # the baselines, beside the first minutes of training
  evaluate 1 "$(recipe code)" code-base
  local runs=() pids=() lr i=0
  for lr in "${LRS[@]}"; do
    for mode in request code; do
      local name=$mode-$lr
      CUDA_VISIBLE_DEVICES=$(( i % 2 )) python3 training/grpo.py --config "$(recipe $mode)" "${TRAIN_DATA[@]}" \
        "${COMMON[@]}" --set "data.curriculum.path=$R/curriculum-$mode.jsonl" --set "grpo.learning_rate=$lr" \
        --set "grpo.output_dir=$R/$name" --set grpo.save_steps=10 > "$R/$name.log" 2>&1 &
      pids+=($!) runs+=("$name")
      i=$(( i + 1 ))
    done
  done
  for (( t = 0; t < TRAIN_S; t += 5 )); do [ -e "$R/STOP" ] && break; sleep 5; done  # touch $R/STOP: end sooner
  echo "$(date +%T) phase 2 ends: SIGTERM to ${pids[*]}"
  kill -TERM "${pids[@]}" 2>/dev/null
  for i in $(seq 1 24); do kill -0 "${pids[@]}" 2>/dev/null || break; sleep 5; done
  kill -KILL "${pids[@]}" 2>/dev/null
  echo "$(date +%T) phase 3: evaluations"
  i=0
  for name in "${runs[@]}"; do
    [ -f "$R/$name/agent.yaml" ] && evaluate $(( i % 2 )) "$R/$name/agent.yaml" "$name"
    i=$(( i + 1 ))
  done
  wait
  for name in "${runs[@]}"; do
    for set in bv gsm; do
      python3 -m training.evaluate --compare "$R/eval/$set-${name%%-*}-base" "$R/eval/$set-$name" \
        --out "$R/compare/$set-$name" > "$R/compare-$set-$name.log" 2>&1
    done
  done
  echo "$(date +%T) done"
}

status() {
  python3 - "$R" <<'EOF'
import ast, json, pathlib, re, sys
root = pathlib.Path(sys.argv[1])
keys = ("reward", "rewards/correctness/mean", "tools/calls_per_rollout", "tools/error_rate", "groups/removed_frac",
        "completions/mean_length")
for log in sorted(root.glob("*.log")) + sorted(root.glob("eval/*.log")):
    text = log.read_text(errors="replace")
    steps = [ast.literal_eval(m) for m in re.findall(r"^(\{.*'reward'.*\})$", text, re.M)]
    bars = re.findall(r"(\d+)/(\d+) \[", text)
    tail = text.strip().splitlines()[-1][-150:] if text.strip() else ""
    if steps:
        last = steps[-1]
        print(log.stem, f"step {len(steps)}", " ".join(f"{k}={float(last[k]):.3f}" for k in keys if k in last))
    else:
        print(log.stem, "progress", bars[-1] if bars else "-", "|", tail)
for metrics in sorted(root.glob("eval/*/metrics.json")):
    m = json.loads(metrics.read_text())
    print(metrics.parent.name, f"acc {m['accuracy']:.3f} [{m['accuracy_ci95'][0]:.3f}, {m['accuracy_ci95'][1]:.3f}]"
          f" n {m['n']} calls {m['tool_call_rate']:.3f} per-answer {m['calls_per_answer']:.2f}"
          f" errors {m['tool_error_rate']:.3f} violations {m['format_violation_rate']:.3f} s {m.get('seconds', 0):.0f}")
EOF
}

collect() {
  local dest d state
  dest=$(mktemp -d)
  status > "$dest/status.txt"
  for d in "$R"/*/; do
    [ -f "$d/curves.png" ] && cp "$d/curves.png" "$dest/curves-$(basename "$d").png"
    state=$(ls -d "$d"/checkpoint-* 2>/dev/null | sort -t- -k2 -n | tail -1)
    [ -n "$state" ] && cp "$state/trainer_state.json" "$dest/state-$(basename "$d").json"
    [ -f "$d/adapter_model.safetensors" ] && sha256sum "$d/adapter_model.safetensors" >> "$dest/adapters.sha256"
  done
  for d in "$R"/compare/*/; do [ -f "$d/comparison.md" ] && cp "$d/comparison.md" "$dest/compare-$(basename "$d").md"; done
  for d in "$R"/eval/*/; do [ -f "$d/metrics.json" ] && cp "$d/metrics.json" "$dest/metrics-$(basename "$d").json"; done
  cp "$R"/*.log "$R"/curriculum-*.jsonl "$dest/" 2>/dev/null
  tar czf "$1" -C "$dest" .
}

"$@"
