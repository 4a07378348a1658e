"""Keeping several processes in step while their rollouts take different numbers of tool rounds.

Under DeepSpeed ZeRO-3 every forward pass gathers parameters across ranks, and TRL's vLLM server mode gathers
prompts across ranks each generation call: all ranks must make the same generation calls, in the same order,
although one rank's rollouts may be done after one round and another's need four. The engine asks
`RankSync.max(live rollouts)` once per round: it goes on while any rank has work, and a rank with nothing left
still makes the round's generation call with no prompts (the backend pads it, where it has collectives).
"""

from __future__ import annotations

from typing import Protocol


class RankSync(Protocol):
    def max(self, value: int) -> int:
        """The largest `value` over all ranks (a collective: every rank must call it)."""
        ...


class TorchDistributedSync:
    """`RankSync` over `torch.distributed` (one all-reduce of one integer). `device`: where the backend's tensors
    live (cuda for NCCL, cpu for gloo)."""

    def __init__(self, device: str | object = "cpu") -> None:
        self.device = device
        self.calls = 0

    def max(self, value: int) -> int:
        import torch
        import torch.distributed as dist

        self.calls += 1
        tensor = torch.tensor([value], device=self.device, dtype=torch.long)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())
