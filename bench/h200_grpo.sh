#!/usr/bin/env bash
# Issue 28 on lent H200s: the real Qwen2.5-Coder-0.5B-Instruct trained with GRPO, against the untrained baselines
# on the same problems (paired). PLAN picks the runs:
#   lrs       request and code mode, each at the learning rates in LRS (2026-12-01, two GPUs)
#   remedies  request mode with ```python blocks unpriced (`unparsed_call` 0), on big-value train and on a half
#             plain, half big-value mix; code mode's ablations, without same-score filtering and without the
#             curriculum, stopped at MAX_STEPS (the reference run's 23 steps) (2026-12-01, one GPU)
#   warmstart request mode from `training.sft` on WORKED demonstrations (training.worked) of plain and of
#             big-value GSM8K train (and, if POOL_SAMPLES > 0, the policy's own right, delegating rollouts of
#             POOL_LIMIT plain problems; POOL=FILE: a previous block's pool.jsonl), SFT_EPOCHS; GRPO continues it
#             at WARM_LR and WARM_SCHEDULE on the mix and on big values (WARM_MIX=0: big values alone), two runs
#             alone on one card; INLINE_BELOW: plain GSM8K's small steps written out in the demonstrations;
#             the warm start evaluated beside them
#   curriculum code mode with and without the curriculum, the same MAX_STEPS, two runs alone on one card
#   setsid bash bench/h200_grpo.sh start     # runs the three phases below in the background, logs in $R
#   bash bench/h200_grpo.sh status           # one line per process: its last step and metrics; GPU memory
#   bash bench/h200_grpo.sh collect FILE.tgz # tables, comparisons, curves and logs in one file (a device call
#                                            # brings back only a few files)
#   bash bench/h200_grpo.sh finish           # phase 3 alone: after killing the driver to let the runs go longer
#   bash bench/h200_grpo.sh warmeval         # the warm start alone against the untrained agent, in one call
# Here first, in a fresh checkout: `bash bench/device_carry.sh` (the wheels, GSM8K and the model's pieces).
# The device calls: one with the wheels and GSM8K (`.whl`, `.carry/data`), nine with the model's pieces
# (bench/device_model.py), the last of them building it and starting this script with `setsid` from a copy of the
# checkout in /root/work; then calls that print `status` until it is done. CURRICULA=DIR reads each mode's
# curriculum from DIR/curriculum-MODE.jsonl (a previous block's) instead of computing it.
# 1. The curriculum of each mode (pass rates of LIMIT big-value GSM8K train problems, 4 samples each), alone.
# 2. The untrained baselines on big-value GSM8K test and GSM8K test, beside the runs, which are stopped by SIGTERM
#    after TRAIN_S seconds or when $R/STOP appears (each finishes its step and saves a checkpoint, the adapter,
#    agent.yaml and its curves).
# 3. Each run's agent on the same two test sets, EVAL_JOBS (4) at a time per GPU (eight at once ran out of memory:
#    a code-mode evaluation takes about 35 GiB at 512-700 rows); `training.evaluate --compare` against its mode's
#    baseline.
# Needs the wheels in /root/site (transformers 5.24 among them: the image's 5.17 cannot run the graphed planner),
# GSM8K in /root/shared/data and the model in /root/models (bench/device_model.py).
# The machine has no bubblewrap: the sandbox runs with `--set executor.isolation=none`, the explicit opt-in.
set -u
R=${R:-/root/runs}
TRAIN_S=${TRAIN_S:-900}
LIMIT=${LIMIT:-512}
LRS=(${LRS:-2.0e-5 1.0e-4})
PLAN=${PLAN:-lrs}
MAX_STEPS=${MAX_STEPS:-23}
GPUS=$(nvidia-smi -L 2>/dev/null | wc -l); (( GPUS > 0 )) || GPUS=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True  # several processes share a card
export PYTHONPATH=/root/site:$PWD DELEGATE_MODELS=${DELEGATE_MODELS:-/root/models} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
DATA=${DATA:-/root/shared/data}
TEST=$DATA/gsm8k/test.jsonl
COMMON=(--set executor.isolation=none --set planner.cuda_graph=true ${EXTRA:-})  # EXTRA: e.g. a dry run's budgets
TRAIN_DATA=(--set data.path=$DATA/gsm8k/train.jsonl --set "data.limit=$LIMIT")
recipe() { echo "training/recipes/qwen2.5-0.5b-$1.yaml"; }

# A plan fills NAMES, MODES and ARGS (each run's --set overrides, one string, split on spaces), and WARM with the
# warm-start adapters (NAME:MODE, under $R) that phase 3 evaluates beside the runs.
NAMES=() MODES=() ARGS=() WARM=()
add() { NAMES+=("$1") MODES+=("$2") ARGS+=("${3:-}"); }
plan_lrs() {
  local lr mode
  for lr in "${LRS[@]}"; do for mode in request code; do add "$mode-$lr" $mode "--set grpo.learning_rate=$lr"; done; done
}
plan_remedies() {
  # 16 x 4 is the same 64 rollouts a step and, with TRL's dapo loss (normalised over the generation batch), the same
  # gradient as 64 x 1, in a quarter of the loss's logits memory: four runs share one card.
  local small="--set grpo.per_device_train_batch_size=16 --set grpo.gradient_accumulation_steps=4"
  local free="--set rewards.options.format.penalties.unparsed_call=0.0"
  add request-free request "$small $free"
  add request-mix request "$small $free --set data.path=$R/mix.jsonl --set data.big_values=false \
--set data.limit=null --set data.curriculum=null"
  add code-nofilter code "$small --set groups.filter=false --set grpo.max_steps=$MAX_STEPS"
  add code-nocurriculum code "$small --set data.curriculum=null --set grpo.max_steps=$MAX_STEPS"
}

plan_warmstart() {
  # Request mode from a warm start (training.sft on its own right, delegating rollouts of plain GSM8K train), on
  # the mix and on big values, two runs alone on the card; the warm start itself is evaluated too (WARM).
  local small="--set grpo.per_device_train_batch_size=16 --set grpo.gradient_accumulation_steps=4"
  # WARM_LR: 1e-4, the rate that moved request mode's big-value accuracy (+4.1 in 65 steps, first block; 2e-5: -0.3).
  # WARM_SCHEDULE=accuracy (the default) starts in the seed's second phase (correctness 2, format 1) with tool use
  # unpaid: from the warm start, which already calls, the seed's first phase (tool use 2 x 0.1 a clean call, capped
  # at 3 calls) pushed calls from 2.5 to 3.1 an answer and big-value accuracy down 3.8 points in 16 steps (fifth
  # block of gpu-real-grpo.md). WARM_SCHEDULE=seed keeps the recipe's schedule.
  local warm="--set planner.adapter=$R/sft-request --set data.curriculum=null --set grpo.learning_rate=${WARM_LR:-1.0e-4}"
  [ "${WARM_SCHEDULE:-accuracy}" = accuracy ] && \
    warm+=' --set rewards.schedule=[[0,{"correctness":2.0,"format":1.0,"tool_use":0.0}]]'

  if [ "${WARM_MIX:-1}" = 1 ]; then  # WARM_MIX=0: the big-value run alone (a short block)
    add request-warm-mix request "$small $warm --set data.path=$R/mix.jsonl --set data.big_values=false \
--set data.limit=null"
  fi
  add request-warm request "$small $warm"
  WARM=(sft-request:request)
}

plan_curriculum() {  # code mode with and without the curriculum, the same MAX_STEPS, two runs alone on one card
  local small="--set grpo.per_device_train_batch_size=16 --set grpo.gradient_accumulation_steps=4"
  add code-ref code "$small --set grpo.max_steps=$MAX_STEPS"
  add code-nocurriculum code "$small --set data.curriculum=null --set grpo.max_steps=$MAX_STEPS"
}

prepare_warmstart() {  # the warm start's records (worked demonstrations; a sampled pool if asked), then the adapter
  local records=() big
  if [ -n "${POOL:-}" ]; then  # a previous block's pool (its pool.jsonl)
    cp "$POOL" "$R/pool.jsonl" && records+=("$R/pool.jsonl")
  elif (( ${POOL_SAMPLES:-0} > 0 )); then  # 0 by default: 3,072 samples kept none (gpu-real-grpo.md, third block)
    echo "$(date +%T) warm start: sampling the pool"
    python3 -m delegate.training.curriculum --config "$(recipe request)" --samples "$POOL_SAMPLES" \
      --out "$R/pool-order.jsonl" --trajectories "$R/pool.jsonl" "${COMMON[@]}" \
      --set "data.path=$DATA/gsm8k/train.jsonl" --set data.big_values=false --set "data.limit=${POOL_LIMIT:-384}" \
      --set data.curriculum=null --set planner.batch_size=1024 > "$R/pool.log" 2>&1
    records+=("$R/pool.jsonl")
  fi
  for big in false true; do  # WORKED demonstrations of plain and of big-value GSM8K train (training.worked)
    echo "$(date +%T) warm start: worked demonstrations, big values $big"
    # INLINE_BELOW=N: plain GSM8K's steps whose numbers are all below N are written out, not called (training.worked
    # --inline-below); 0, the default, calls every step, as the fourth and fifth blocks did
    python3 -m delegate.training.worked --config "$(recipe request)" --limit "${WORKED:-384}" \
      --inline-below "$([ $big = false ] && echo "${INLINE_BELOW:-0}" || echo 0)" \
      --out "$R/worked-$big.jsonl" "${COMMON[@]}" --set "data.path=$DATA/gsm8k/train.jsonl" \
      --set "data.big_values=$big" --set data.curriculum=null --set planner.batch_size=1024 \
      --set coder.batch_size=1024 > "$R/worked-$big.log" 2>&1
    records+=("$R/worked-$big.jsonl")
    echo "$(date +%T) $(grep -o 'worked: [0-9]* of [0-9]* demonstrations kept.*' "$R/worked-$big.log" | tail -1)"
  done
  python3 -m delegate.training.sft --config "$(recipe request)" --records "${records[@]}" --out "$R/sft-request" \
    --epochs "${SFT_EPOCHS:-2}" "${COMMON[@]}" > "$R/sft.log" 2>&1
  echo "$(date +%T) $(grep -o 'warm start: [0-9]* of [0-9]* trajectories kept.*' "$R/sft.log" | head -1)"
  echo "$(date +%T) $(grep -o 'SFT .*' "$R/sft.log" | tail -1)"
  if [ ! -f "$R/sft-request/adapter_config.json" ]; then  # nothing to continue: the warm runs would fail at load
    echo "$(date +%T) no warm-start adapter ($(tail -1 "$R/sft.log")): the request runs are left out"
    local names=("${NAMES[@]}") modes=("${MODES[@]}") args=("${ARGS[@]}") i
    NAMES=() MODES=() ARGS=() WARM=()
    for i in "${!names[@]}"; do [[ ${names[$i]} == request-warm* ]] || add "${names[$i]}" "${modes[$i]}" "${args[$i]}"; done
  fi
}

mix() {  # half plain GSM8K train, half big-value, interleaved: correctness can fire on the plain half
  python3 - "$R/mix.jsonl" "$LIMIT" "$DATA/gsm8k/train.jsonl" <<'PY'
import json, sys
from delegate.training.data import load_problems
out, half = sys.argv[1], int(sys.argv[2])
path = sys.argv[3]
plain = list(load_problems(path, limit=half))
big = list(load_problems(path, big_values=True, limit=half))
with open(out, "w") as f:
    for pair in zip(plain, big):
        f.writelines(json.dumps(row) + "\n" for row in pair)
PY
}

needs_curriculum() {  # MODE: does a run of the plan in this mode order its problems by the curriculum?
  local i
  for i in "${!NAMES[@]}"; do
    [[ ${MODES[$i]} == "$1" && ${ARGS[$i]} != *"data.curriculum=null"* ]] && return 0
  done
  return 1
}

one_eval() {  # GPU CONFIG NAME SET [ARGS...]: one test set (bv: big-value GSM8K test, gsm: GSM8K test)
  local gpu=$1 config=$2 name=$3 set=$4; shift 4
  local data=(--batch-size 440 --set planner.batch_size=440)  # 1,319 in 3 batches: 700 rows ran out of memory
  [ "$set" = bv ] && data=(--big-values --seed 0 --batch-size 512 --set planner.batch_size=512)
  CUDA_VISIBLE_DEVICES=$gpu python3 -m delegate.training.evaluate --config "$config" --data $TEST "${data[@]}" \
    "${COMMON[@]}" "$@" --out "$R/eval/$set-$name" > "$R/eval/$set-$name.log" 2>&1
}

evaluate_all() {  # NAME:CONFIG ...: every agent on both test sets, EVAL_JOBS at a time per GPU, big-value first
  local jobs=$(( ${EVAL_JOBS:-4} * GPUS )) i=0 set item
  for set in bv gsm; do
    for item in "$@"; do
      while (( $(jobs -rp | wc -l) >= jobs )); do wait -n; done
      one_eval $(( i % GPUS )) "${item#*:}" "${item%%:*}" $set &
      i=$(( i + 1 ))
    done
  done
  wait
  for set in bv gsm; do  # one that failed (out of memory beside three others: 2026-12-01, fifth block) runs again alone
    for item in "$@"; do
      [ -f "$R/eval/$set-${item%%:*}/metrics.json" ] && continue
      echo "$(date +%T) $set-${item%%:*} failed ($(grep -m1 -o '[A-Za-z]*Error.\{0,80\}' "$R/eval/$set-${item%%:*}.log")): again, alone"
      rm -rf "$R/eval/$set-${item%%:*}"
      one_eval 0 "${item#*:}" "${item%%:*}" $set
    done
  done
}

start() {
  mkdir -p "$R/eval"
  nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -l 15 > "$R/gpu-memory.csv" 2>/dev/null &
  local smi=$! mode gpu=0 curricula=()
  "plan_$PLAN"
  echo "$(date +%T) plan $PLAN: ${NAMES[*]}"
  echo "$(date +%T) phase 1: curricula"
  for mode in request code; do
    needs_curriculum $mode || continue
    # a previous block's curriculum, with its fingerprint (training refuses one without, or built for other data)
    if [ -n "${CURRICULA:-}" ] && [ -s "$CURRICULA/curriculum-$mode.jsonl" ] && \
        [ -s "$CURRICULA/curriculum-$mode.jsonl.meta.json" ]; then
      cp "$CURRICULA/curriculum-$mode.jsonl" "$CURRICULA/curriculum-$mode.jsonl.meta.json" "$R/"  # and its fingerprint
      continue
    fi
    CUDA_VISIBLE_DEVICES=$gpu python3 -m delegate.training.curriculum --config "$(recipe $mode)" --samples 4 \
      --out "$R/curriculum-$mode.jsonl" "${TRAIN_DATA[@]}" "${COMMON[@]}" --set planner.batch_size=1024 \
      > "$R/curriculum-$mode.log" 2>&1 &
    curricula+=($!)
    gpu=$(( (gpu + 1) % GPUS ))
  done
  [[ " ${NAMES[*]} " == *"-mix "* ]] && mix
  (( ${#curricula[@]} )) && wait "${curricula[@]}"  # alone: beside two evaluations, 1,024 code rows ran out of memory
  if declare -F "prepare_$PLAN" > /dev/null; then "prepare_$PLAN"; fi
  for mode in request code; do
    needs_curriculum $mode || continue
    [ -s "$R/curriculum-$mode.jsonl" ] || echo "$(date +%T) no curriculum for $mode: its run computes it (slowly)"
  done
  echo "$(date +%T) phase 2: training for $TRAIN_S s"
  local bases=()  # the untrained agent of each mode in the plan, beside the first minutes
  for mode in request code; do [[ " ${MODES[*]} " == *" $mode "* ]] && bases+=("$mode-base:$(recipe $mode)"); done
  (evaluate_all "${bases[@]}") &
  local baselines=$! pids=() i
  for i in "${!NAMES[@]}"; do
    # shellcheck disable=SC2086  # ARGS holds several words
    CUDA_VISIBLE_DEVICES=$(( i % GPUS )) python3 training/grpo.py --config "$(recipe "${MODES[$i]}")" \
      "${TRAIN_DATA[@]}" "${COMMON[@]}" --set "data.curriculum.path=$R/curriculum-${MODES[$i]}.jsonl" \
      --set "grpo.output_dir=$R/${NAMES[$i]}" --set grpo.save_steps=10 ${ARGS[$i]} > "$R/${NAMES[$i]}.log" 2>&1 &
    pids+=($!)
  done
  for (( t = 0; t < TRAIN_S; t += 5 )); do  # touch $R/STOP: end sooner
    [ -e "$R/STOP" ] && break
    kill -0 "${pids[@]}" 2>/dev/null || break
    sleep 5
  done
  wait $baselines
  finish
  kill $smi 2>/dev/null
  echo "$(date +%T) done"
}

finish() {  # phase 3 alone (e.g. after killing the driver to give the runs longer): stop the plan's runs, evaluate
  local pids=() name i item
  NAMES=() MODES=() ARGS=() WARM=()
  "plan_$PLAN"
  for name in "${NAMES[@]}"; do pids+=($(pgrep -f "[o]utput_dir=$R/$name( |$)")); done
  if (( ${#pids[@]} )); then
    echo "$(date +%T) phase 2 ends: SIGTERM to ${pids[*]}"
    kill -TERM "${pids[@]}" 2>/dev/null
    for i in $(seq 1 24); do kill -0 "${pids[@]}" 2>/dev/null || break; sleep 5; done
    kill -KILL "${pids[@]}" 2>/dev/null
  fi
  echo "$(date +%T) phase 3: evaluations"
  local agents=() compared=()  # NAME:MODE of everything phase 3 evaluates, each against its mode's baseline
  for i in "${!NAMES[@]}"; do compared+=("${NAMES[$i]}:${MODES[$i]}"); done
  [ -n "${WARM[*]}" ] && compared+=("${WARM[@]}")
  for item in "${compared[@]}"; do
    [ -f "$R/${item%%:*}/agent.yaml" ] && agents+=("${item%%:*}:$R/${item%%:*}/agent.yaml")
  done
  evaluate_all "${agents[@]}"
  compare_all "${compared[@]}"
}

compare_all() {  # NAME:MODE ...: each evaluated agent against its mode's untrained baseline, on both test sets
  local item set
  for item in "$@"; do
    for set in bv gsm; do
      python3 -m delegate.training.evaluate --compare "$R/eval/$set-${item#*:}-base" "$R/eval/$set-${item%%:*}" \
        --out "$R/compare/$set-${item%%:*}" > "$R/compare-$set-${item%%:*}.log" 2>&1
    done
  done
}

warmeval() {  # the warm start alone, against the untrained agent (no GRPO: a block too short for training)
  mkdir -p "$R/eval"
  PLAN=warmstart; plan_warmstart; prepare_warmstart
  [ -f "$R/sft-request/agent.yaml" ] || return 1  # prepare_warmstart said why
  evaluate_all "request-base:$(recipe request)" "sft-request:$R/sft-request/agent.yaml"
  compare_all sft-request:request
}

status() {
  python3 - "$R" <<'EOF'
import ast, json, pathlib, re, sys
root = pathlib.Path(sys.argv[1])
keys = ("reward", "rewards/with_calls", "rewards/without_calls", "rewards/correctness/mean",
        "tools/calls_per_rollout", "tools/error_rate", "groups/removed_frac", "completions/mean_length")
for log in [p for p in sorted(root.glob("*.log")) if not p.name.startswith("compare-")] + sorted(root.glob("eval/*.log")):
    text = log.read_text(errors="replace")
    steps = [ast.literal_eval(m) for m in re.findall(r"^(\{.*'reward'.*\})$", text, re.M)]
    bars = re.findall(r"(\d+)/(\d+) \[", text)
    tail = text.strip().splitlines()[-1][-150:] if text.strip() else ""
    if steps:
        last = steps[-1]
        print(log.stem, f"step {len(steps)}", " ".join(f"{k}={float(last[k]):.3f}" for k in keys if k in last))
    else:
        print(log.stem, "progress", bars[-1] if bars else "-", "|", tail)
memory = root / "gpu-memory.csv"
if memory.exists():
    rows = [line.split(",") for line in memory.read_text().splitlines() if line.count(",") == 1]
    for gpu in sorted({r[0] for r in rows}):
        used = [int(r[1]) for r in rows if r[0] == gpu]
        print(f"GPU {gpu}: {used[-1] / 1024:.1f} GiB used now, peak {max(used) / 1024:.1f} GiB (sampled every 15 s)")
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
  for d in "$R"/eval/*/; do
    [ -f "$d/metrics.json" ] || continue
    cp "$d/metrics.json" "$dest/metrics-$(basename "$d").json"
    # each problem's outcome, enough for `training.evaluate --compare` here if the device's own did not finish
    python3 -c 'import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(json.dumps({k: r.get(k) for k in ("question", "reference", "correct", "answer")}))' \
      "$d/trajectories.jsonl" > "$dest/outcomes-$(basename "$d").jsonl"
  done
  cp "$R"/*.log "$R"/eval/*.log "$R"/curriculum-*.jsonl* "$R"/worked-*.jsonl "$R"/gpu-memory.csv "$dest/" 2>/dev/null
  tar czf "$1" -C "$dest" .
}

"$@"
