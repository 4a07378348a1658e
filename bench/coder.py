"""Coder benchmark: the `transformers` backend on the tiny local model, batched vs one request at a time, and
with a realistic duplicate rate (30 %) with and without the cache. Side by side in one run.

    python bench/coder.py [--requests 64] [--max-new-tokens 32] [--device cpu]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/x.py`: the repository first on the path, in place of bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # (whose files would shadow installed packages)

from delegate.coder import CoderConfig, build_coder
from delegate.training.tiny import build_tiny

TEMPLATES = ["the least common multiple of {a} and {b}", "{a} times {b}", "the sum of the integers from 1 to {a}",
             "{a} divided by {b} as an exact fraction", "the remainder of {a} divided by {b}"]


def requests_for(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(TEMPLATES).format(a=rng.randint(10, 10**9), b=rng.randint(2, 10**6)) for _ in range(count)]


def with_duplicates(calls: int, per_call: int, rate: float, seed: int) -> list[list[str]]:
    """`calls` batches; each request repeats an earlier one (this batch or a previous one) with probability `rate`."""
    rng = random.Random(seed)
    fresh = iter(requests_for(calls * per_call, seed + 1))
    seen: list[str] = []
    batches = []
    for _ in range(calls):
        batch = []
        for _ in range(per_call):
            request = rng.choice(seen) if seen and rng.random() < rate else next(fresh)
            seen.append(request)
            batch.append(request)
        batches.append(batch)
    return batches


def timed(config: CoderConfig, batches: list[list[str]]) -> tuple[float, int]:
    with build_coder(config) as coder:
        coder.write(batches[0][:2])  # warm-up, not counted
        coder.stats.generated = 0
        if coder.cache is not None:
            coder.cache.clear()
        start = time.perf_counter()
        for batch in batches:
            coder.write(batch)
        return time.perf_counter() - start, coder.stats.generated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default=None, help="a local model directory (default: a tiny one built now)")
    args = parser.parse_args()
    model = args.model or str(build_tiny(tempfile.mkdtemp(prefix="delegate-bench-coder-")))
    base = CoderConfig(model=model, device=args.device, max_new_tokens=args.max_new_tokens,
                       batch_size=args.requests)
    no_cache = base.model_copy(update={"cache_size": 0, "deduplicate": False})
    distinct = requests_for(args.requests, seed=0)
    duplicated = with_duplicates(calls=4, per_call=args.requests // 2, rate=0.3, seed=0)
    total = sum(len(b) for b in duplicated)

    rows = []
    print("measuring: one request at a time ...", file=sys.stderr, flush=True)
    rows.append(("distinct, one at a time", len(distinct), *timed(no_cache, [[r] for r in distinct])))
    print("measuring: one batched call ...", file=sys.stderr, flush=True)
    rows.append(("distinct, one batched call", len(distinct), *timed(no_cache, [distinct])))
    print("measuring: 30 % duplicates ...", file=sys.stderr, flush=True)
    rows.append(("30% dup, batched, no cache/dedup", total, *timed(no_cache, duplicated)))
    rows.append(("30% dup, batched, dedup only", total,
                 *timed(base.model_copy(update={"cache_size": 0}), duplicated)))
    rows.append(("30% dup, batched, cache + dedup", total, *timed(base, duplicated)))

    header = f"{'mode':<34} {'requests':>8} {'generated':>9} {'seconds':>8} {'req/s':>8}"
    print(f"\nCoder benchmark (transformers backend, {model}, max_new_tokens={args.max_new_tokens}, "
          f"device={args.device})\n")
    print(header)
    print("-" * len(header))
    rates = {}
    for name, requests, seconds, generated in rows:
        rates[name] = requests / seconds
        print(f"{name:<34} {requests:8d} {generated:9d} {seconds:8.2f} {rates[name]:8.1f}")
    print(f"\nbatched / one at a time: {rates['distinct, one batched call'] / rates['distinct, one at a time']:.1f}x")
    print(f"cache + dedup / no cache at 30% duplicates: "
          f"{rates['30% dup, batched, cache + dedup'] / rates['30% dup, batched, no cache/dedup']:.2f}x")


if __name__ == "__main__":
    main()
