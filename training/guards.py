"""A guard against a diverging update: skip an optimizer step whose gradients are not finite.

One NaN or inf in the gradients (seen once here: the toy world's GPU variant logged `grad_norm: nan` at GRPO step 20
with a finite loss) turns every weight it reaches into NaN at the optimizer step, and the next rollout then dies in
sampling (on CUDA, a device-side assert that takes the process down). The guard drops such a step's gradients, so
the optimizer leaves the weights as they are, logs it, and stops training with a clear error when `patience` steps
in a row fail, since by then the run is not going to recover.

Under DeepSpeed ZeRO-3 the gradients are partitioned and not on the parameters; the guard then has nothing to check.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import TrainerCallback

log = logging.getLogger(__name__)


class NonFiniteGradientGuard(TrainerCallback):
    def __init__(self, patience: int = 3) -> None:
        self.patience = patience
        self.skipped = 0  # steps skipped over the whole run
        self.in_a_row = 0

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        params = [p for p in model.parameters() if p.grad is not None] if model is not None else []
        if not params:
            return
        norms = torch._foreach_norm([p.grad for p in params])
        if bool(torch.isfinite(torch.stack([n.float() for n in norms])).all()):
            self.in_a_row = 0
            return
        for p in params:
            p.grad = None  # the optimizer skips parameters without a gradient
        self.skipped += 1
        self.in_a_row += 1
        log.warning("step %d: the gradients are not finite (NaN or inf); skipped this update (%d in a row, %d in "
                    "all)", state.global_step + 1, self.in_a_row, self.skipped)
        if self.in_a_row >= self.patience:
            raise FloatingPointError(f"training diverged: the gradients were not finite at {self.in_a_row} steps in a "
                                     f"row (up to step {state.global_step + 1}); lower the learning rate, or train "
                                     "in float32 (grpo.bf16: false), and resume from the last checkpoint")
