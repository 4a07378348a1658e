"""Can the coder's decoding overlap the planner's on one GPU? Two `generate` calls at once, each in its own thread
and CUDA stream, or each in its own process (as a coder server on the planner's card would be), against the same
calls one after the other.

    python bench/overlap.py [--shape 7b] [--batches 256 128] [--planner-tokens 64] [--coder-tokens 32] [--processes]

The planner runs through our `TransformersGeneration` (left-padded 64-128-token prompts), the coder through the
coder's `TransformersBackend` (322-token requests, 310 of them shared, `share_prefix` on), both random Qwen2.5
shapes in bf16 on one card. For each batch size: the planner alone, the coder alone (two calls, as two tool rounds),
both at once, and two planner cohorts at once against one planner call of twice the rows. `gain` is the serial
time over the concurrent time (1.0: nothing gained; 2.0: perfect overlap). A rollout could only hide the
coder behind the planner, on one card, where the gain is well above 1. With `--processes`, a second table: the
planner and the coder each in a process of its own (no shared interpreter lock; the GPU time-slices between
them), one after the other and at once.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue as queues
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode import prompts  # bench/decode.py
from shapes import random_model, table  # bench/shapes.py

from delegate.coder.config import CoderConfig
from delegate.coder.transformers_backend import TransformersBackend
from delegate.planner import TransformersGeneration
from delegate.training.tiny import build_tokenizer

CUDA = torch.cuda.is_available()  # on a CPU: a smoke run (--shape tiny)
SHARED, OWN = 310, 12  # the coder's prompt: template and system prompt, then the request (bench/NOTES.md)


def together(*calls: Callable[[], object]) -> float:
    """Wall seconds of the calls run at once, each in its own thread on its own CUDA stream."""
    errors: list[RuntimeError | ValueError] = []
    barrier = threading.Barrier(len(calls))

    def work(fn: Callable[[], object]) -> None:
        try:
            with torch.cuda.stream(torch.cuda.Stream()) if CUDA else nullcontext():
                barrier.wait()
                fn()
                sync()
        except (RuntimeError, ValueError) as exc:  # re-raised by the caller (CUDA out of memory included)
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(fn,)) for fn in calls]
    sync()
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sync()
    if errors:
        raise errors[0]
    return time.perf_counter() - start


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def alone(fn: Callable[[], object]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def calls(role: str, args: argparse.Namespace, model, tokenizer) -> dict[int, Callable[[], object]]:
    """For each batch size, the planner's call (`--planner-tokens` for every row) or the coder's two calls."""
    device = "cuda" if CUDA else "cpu"
    vocab = min(len(tokenizer), 30000)
    rng = torch.Generator().manual_seed(1)
    shared = torch.randint(100, vocab, (SHARED,), generator=rng).tolist()
    out: dict[int, Callable[[], object]] = {}
    for batch in args.batches:
        if role == "planner":
            generation = TransformersGeneration(model, tokenizer, batch_size=batch)
            rows = prompts(tokenizer, batch, 128, padded=True)
            out[batch] = lambda g=generation, r=rows: g.generate(r, [args.planner_tokens] * len(r), [])
        else:
            config = CoderConfig(model="random", max_new_tokens=args.coder_tokens, batch_size=512, device=device)
            coder = TransformersBackend(config, model=model, tokenizer=tokenizer)
            rows = [shared + torch.randint(100, vocab, (OWN,), generator=rng).tolist() for _ in range(batch)]
            out[batch] = lambda c=coder, r=rows: (c._generate(r), c._generate(r))  # a rollout's two tool rounds
    return out


def worker(role: str, args: argparse.Namespace, barrier, queue) -> None:
    """One process: its model, then for each batch and repeat three phases in step with the other process: the
    planner alone, the coder alone, both at once."""
    tokenizer = build_tokenizer()
    model = random_model(args.shape, tokenizer, "cuda" if CUDA else "cpu")
    for batch, fn in calls(role, args, model, tokenizer).items():
        fn()  # warm
        for _ in range(args.repeats):
            for phase in ("planner", "coder", "together"):
                barrier.wait()
                if phase in (role, "together"):
                    queue.put((batch, phase, role, alone(fn)))
                barrier.wait()


def processes(args: argparse.Namespace) -> str:
    context = mp.get_context("spawn")
    barrier, queue = context.Barrier(2), context.Queue()
    workers = [context.Process(target=worker, args=(role, args, barrier, queue), daemon=True)  # end with us
               for role in ("planner", "coder")]
    for process in workers:
        process.start()
    expected = len(args.batches) * args.repeats * 4
    got: list[tuple[int, str, str, float]] = []
    while len(got) < expected:
        try:
            got.append(queue.get(timeout=10))
        except queues.Empty:  # a dead worker leaves the other at the barrier: say so rather than wait for ever
            if dead := [p for p in workers if not p.is_alive()]:
                raise RuntimeError(f"a worker exited with code {dead[0].exitcode} after {len(got)} of {expected} "
                                   "timings") from None
    for process in workers:
        process.join()
    rows = []
    for batch in args.batches:
        p = min(t for b, phase, _, t in got if b == batch and phase == "planner")
        c = min(t for b, phase, _, t in got if b == batch and phase == "coder")
        both = [t for b, phase, _, t in got if b == batch and phase == "together"]
        pair = min(max(both[i:i + 2]) for i in range(0, len(both), 2))  # each repeat: the later of the two to end
        rows += [[str(batch), "planner", f"{p:.2f}", "", ""], [str(batch), "coder (2 calls)", f"{c:.2f}", "", ""],
                 [str(batch), "planner + coder", f"{pair:.2f}", f"{p + c:.2f}", f"{(p + c) / pair:.2f}"]]
    return table("The same, each model in a process of its own", ["batch", "what", "seconds", "serial", "gain"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="7b")
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 128])
    parser.add_argument("--planner-tokens", type=int, default=64)
    parser.add_argument("--coder-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--processes", action="store_true", help="also: each model in a process of its own")
    parser.add_argument("--switch-interval", type=float, help="threads: Python's GIL switch interval (default 5 ms)")
    args = parser.parse_args()
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    import transformers

    tokenizer = build_tokenizer()
    device = "cuda" if CUDA else "cpu"
    planner_model = random_model(args.shape, tokenizer, device)
    coder_model = random_model(args.shape, tokenizer, device)
    plans = calls("planner", args, planner_model, tokenizer)
    doubled = calls("planner", argparse.Namespace(**{**vars(args), "batches": [2 * b for b in args.batches]}),
                    planner_model, tokenizer)
    writes = calls("coder", args, coder_model, tokenizer)
    rows, notes = [], []
    for batch in args.batches:
        plan, write = plans[batch], writes[batch]
        cases = [("planner", [plan]), ("coder (2 calls)", [write]), ("planner + coder", [plan, write]),
                 ("planner x2 (cohorts)", [plan, plan]), (f"planner, {2 * batch} rows", [doubled[2 * batch]])]
        seconds: dict[str, float] = {}
        for name, parallel in cases:
            print(f"batch {batch}: {name} ...", file=sys.stderr, flush=True)
            run = (lambda c=parallel: alone(c[0])) if len(parallel) == 1 else (lambda c=parallel: together(*c))
            run()  # warm: kernels, allocator
            seconds[name] = min(run() for _ in range(args.repeats))
        p, c = seconds["planner"], seconds["coder (2 calls)"]
        for name, _ in cases:
            serial = {"planner + coder": p + c, "planner x2 (cohorts)": 2 * p}.get(name)
            rows.append([str(batch), name, f"{seconds[name]:.2f}",
                         f"{serial:.2f}" if serial else "", f"{serial / seconds[name]:.2f}" if serial else ""])
        notes.append(f"batch {batch}: two cohorts of {batch} at once take {seconds['planner x2 (cohorts)']:.2f} s "
                     f"against {seconds[f'planner, {2 * batch} rows']:.2f} s for one call of {2 * batch} rows")
    print(table(f"Overlap on one GPU ({args.shape} planner + {args.shape} coder, bf16, planner {args.planner_tokens} "
                f"new tokens, coder 2 x {args.coder_tokens}; transformers {transformers.__version__}, torch "
                f"{torch.__version__}, {torch.cuda.get_device_name() if CUDA else 'cpu'}; GIL switch interval "
                f"{1000 * sys.getswitchinterval():g} ms)",
                ["batch", "what", "seconds", "serial", "gain"], rows))
    print("\n".join(notes), flush=True)
    if args.processes:
        del planner_model, coder_model, plans, doubled, writes
        if CUDA:
            torch.cuda.empty_cache()
        print("\n" + processes(args))


if __name__ == "__main__":
    main()
