#!/usr/bin/env bash
# The graphed planner (planner.cuda_graph, issue 29) on the lent H200, in calls that fit its 10-minute limit:
#   experiments/h200_planner_graph.sh tests      # the GPU tests, the sandbox at isolation none (experiments/device_pytest.py)
#   experiments/h200_planner_graph.sh rollout    # random 7B: generate vs graphed, with tool rounds, and TRL's tools= loop
#   experiments/h200_planner_graph.sh step       # GRPO step (1.5B shape): ours, ours graphed, TRL's own generation
#   experiments/h200_planner_graph.sh memory     # the 7B + 7B step's peak with the planner graphed
# Expects PYTHONPATH to hold the carried wheels and the checkout; writes its tables to $OUT.
set -u
out=${OUT:-/tmp}
mkdir -p "$out"
export HF_HUB_OFFLINE=1
for what in "$@"; do
  case $what in
    tests)
      timeout 240 python3 -m pytest -q -p experiments.device_pytest -p no:cacheprovider tests/test_planner_gpu.py \
        tests/test_planner_graph.py > "$out/tests.txt" 2>&1; echo "tests: rc $?" ;;
    rollout)
      timeout 560 python3 -u -m bench.gpu rollout --shape 7b --rollouts 256 --compare-rollouts ${COMPARE:-0} --planner-graph \
        --paired-only ${TRL_LOOP:-} --sandbox-servers 8 --no-ablations --repeats 1 --isolation none \
        > "$out/rollout-7b.txt" 2> "$out/rollout-7b.log"; echo "rollout: rc $?" ;;
    step)
      timeout 420 python3 -u -m bench.gpu step --shape 1.5b --steps 4 --planner-graph --isolation none \
        > "$out/step.txt" 2> "$out/step.log"; echo "step: rc $?" ;;
    memory)
      timeout 500 python3 -u -m bench.gpu memory --shape 7b --planner-graph --coder-graph --isolation none \
        > "$out/memory.txt" 2> "$out/memory.log"; echo "memory: rc $?" ;;
  esac
done
