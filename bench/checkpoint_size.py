"""The bytes of a resumable GRPO checkpoint of the real 0.5B by LoRA rank: what must come back from a lent GPU in
one device call (64 MiB, files of 16 MiB) for a run to go on in the next block.

A checkpoint that resumes exactly holds the adapter and AdamW's two moments for every adapter weight, in float32
(transformers saves `adapter_model.safetensors` and `optimizer.pt`); the scheduler, RNG and trainer state are a few
KiB. Each rank here is saved for real, after one optimizer step on the real model, the way `Trainer` saves them.

    python -m bench.checkpoint_size                     # the recipes' targets, ranks 4, 8, 16, 32
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

LIMIT = 64 << 20  # one device call brings back 64 MiB


def measure(model_dir: Path, rank: int, targets: list[str]) -> dict[str, float]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, lora_dropout=0.0))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    model(torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]])).loss.backward()
    optimizer.step()
    with tempfile.TemporaryDirectory() as work:
        model.save_pretrained(work)
        torch.save(optimizer.state_dict(), Path(work) / "optimizer.pt")
        adapter = (Path(work) / "adapter_model.safetensors").stat().st_size
        moments = (Path(work) / "optimizer.pt").stat().st_size
    return {"params": sum(p.numel() for p in params), "adapter": adapter, "optimizer": moments}


def main() -> None:
    from delegate.training.models import model_dir
    from delegate.training.recipe import LoraSection

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 16, 32])
    args = parser.parse_args()
    targets = LoraSection().target_modules
    print(f"{args.model}, LoRA on {', '.join(targets)}; one device call brings back {LIMIT >> 20} MiB\n")
    print("| rank | adapter weights | adapter (MiB) | optimizer (MiB) | checkpoint (MiB) | fits one call |")
    print("|---:|---:|---:|---:|---:|:---:|")
    for rank in args.ranks:
        m = measure(model_dir(args.model), rank, targets)
        total = m["adapter"] + m["optimizer"]
        print(f"| {rank} | {m['params']:,} | {m['adapter'] / 2**20:.1f} | {m['optimizer'] / 2**20:.1f} | "
              f"{total / 2**20:.1f} | {'yes' if total < LIMIT - (4 << 20) else 'no'} |", flush=True)


if __name__ == "__main__":
    main()
