"""Guards for a long run: a diverging update, and a stop asked for by a signal.

A guard against a diverging update: skip an optimizer step whose gradients are not finite.

One NaN or inf in the gradients (seen once here: the toy world's GPU variant logged `grad_norm: nan` at GRPO step 20
with a finite loss) turns every weight it reaches into NaN at the optimizer step, and the next rollout then dies in
sampling (on CUDA, a device-side assert that takes the process down). The guard drops such a step's gradients, so
the optimizer leaves the weights as they are, logs it, and stops training with a clear error when `patience` steps
in a row fail, since by then the run is not going to recover.

Under DeepSpeed ZeRO-3 the gradients are partitioned and not on the parameters; the guard then has nothing to check.
"""

from __future__ import annotations

import logging
import signal
import threading
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


class StopOnSignal(TrainerCallback):
    """SIGTERM or SIGUSR1 (a scheduler's preemption, `kill PID`, the end of a lent machine's time) ends training
    after the step in progress, with a checkpoint, the adapter and `agent.yaml` saved and the curves drawn, instead
    of losing everything since the last `save_steps`. A second signal of the same kind kills at once (the default).

    Ranks stop together: the flag is reduced (max) over the process group at every step end, so a signal that
    reaches one rank only cannot leave the others waiting in a collective.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.requested: int | None = None  # the signal received, if any
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None:  # the second: leave now, as the signal's default does
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.requested = signum
        log.warning("%s received: training stops after this step, with a checkpoint (again: stop now)",
                    signal.Signals(signum).name)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if threading.current_thread() is threading.main_thread():  # handlers can be set only there
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        stop = self.requested is not None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([float(stop)], device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            stop = bool(flag.item())
        if stop:
            log.warning("step %d: stopping on a signal, saving a checkpoint", state.global_step)
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}
