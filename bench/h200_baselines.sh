#!/usr/bin/env bash
# Issue 28's baselines on the lent GPU machine: the real Qwen2.5-Coder-0.5B-Instruct as planner and frozen coder,
# sampled as the recipe trains (temperature 1.0, 1024 tokens), on big-value GSM8K test and GSM8K test, in the modes
# named on the command line (each cut at its own time limit, so a slow one leaves the others' results):
#   bash bench/h200_baselines.sh SECONDS bv-none bv-request bv-code gsm-none gsm-request gsm-code
# Needs the wheels in /root/site, GSM8K in /root/shared/data and the model in /root/models (bench/device_model.py).
# The machine has no bubblewrap: the sandbox runs with `--set executor.isolation=none`, the explicit opt-in.
set -u
limit=$1; shift
export PYTHONPATH=/root/site:$PWD DELEGATE_MODELS=/root/models HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
out=${OUT:-runs/h200-baselines}
mkdir -p "$out"
for name in "$@"; do
  case $name in
    bv-*) data=(--data /root/shared/data/gsm8k/test.jsonl --big-values --seed 0) ;;
    gsm-*) data=(--data /root/shared/data/gsm8k/test.jsonl) ;;
  esac
  case $name in
    *-none) mode=(--config training/recipes/qwen2.5-0.5b-request.yaml --no-tools) ;;
    *-request) mode=(--config training/recipes/qwen2.5-0.5b-request.yaml) ;;
    *-code) mode=(--config training/recipes/qwen2.5-0.5b-code.yaml) ;;
  esac
  start=$(date +%s)
  timeout "$limit" python3 -m delegate.training.evaluate "${mode[@]}" "${data[@]}" --batch-size 400 --set planner.batch_size=400 \
    --set executor.isolation=none --out "$out/$name" > "$out/$name.log" 2>&1
  echo "$name: exit $? after $(( $(date +%s) - start )) s"
done
