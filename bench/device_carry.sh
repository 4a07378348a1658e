#!/usr/bin/env bash
# Here, before a block on the lent H200: build what its calls carry, in ignored folders of the checkout (a fresh
# checkout has none of them; by hand this took about 5 minutes, 2026-12-01):
#   .whl/    the wheels the device's image lacks (Python 3.12, x86-64), at the versions of this checkout's .venv
#   .whl2/   transformers with its tokenizers and safetensors (the image's 5.17 cannot run the graphed planner)
#   .carry/data/gsm8k   GSM8K train and test from ../shared/data
#   .carry/gguf/        the real 0.5B's GGUF in pieces under 60 MiB (bench/device_model.py split)
# Needs .venv (`make install-dev`). huggingface_hub is left out on purpose: the image's 1.33 satisfies transformers
# and datasets, and 2.x fails to import there (it needs httpx2). The calls that carry them: bench/h200_grpo.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
for path in /.whl/ /.whl2/ /.carry/; do grep -qxF "$path" .git/info/exclude 2>/dev/null || echo "$path" >> .git/info/exclude; done
version() {  # NAME: its version in .venv, or a stop that names it
  "$PY" -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p' | grep . || { echo "$1 is not in .venv" >&2; exit 1; }
}
download() {  # FOLDER NAME...: each at this venv's version
  local into=$1 name pins=(); shift
  for name in "$@"; do pins+=("$name==$(version "$name")"); done
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_34_x86_64 -d "$into" "${pins[@]}"
}
rm -rf .whl .whl2 && mkdir -p .whl .whl2
download .whl trl datasets dill multiprocess fsspec math-verify latex2sympy2_extended antlr4-python3-runtime \
  pydantic pydantic_core annotated-types typing-inspection cachetools gguf openai jiter sniffio pyseccomp
download .whl2 transformers tokenizers safetensors
mkdir -p .carry/data && rm -rf .carry/data/gsm8k && cp -r ../shared/data/gsm8k .carry/data/
"$PY" bench/device_model.py split qwen2.5-coder-0.5b
du -sh .whl .whl2 .carry/data .carry/gguf
