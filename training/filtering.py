"""Same-score groups carry no signal: a `GRPOTrainer` that removes them from the loss, and can refill them.

TRL only logs `frac_reward_zero_std`. Here a group that carries no signal (its advantages are all zero, see below)
has its rows' completion mask zeroed, so it adds nothing to the loss, the KL term or the token count, and
`num_items_in_batch` (which TRL computes before the rewards exist) is recomputed from the remaining tokens. The
fraction removed is logged as `groups/removed_frac`. Advantages are left as TRL computed them.

Which groups carry no signal, by TRL's (1.16) `multi_objective_aggregation` (`flat_groups`):
- `sum_then_normalize` (TRL's default): the advantage is the combined (weighted) reward minus the group's mean,
  divided by a std or not (`scale_rewards`): zero exactly where the group's combined rewards are all equal.
- `normalize_then_sum`: each reward function is normalized within the group first, then the weighted sum is
  normalized over the batch. A group whose weighted sum is constant can still carry a signal (two rewards that
  trade off, with unequal spreads), and one whose sum varies can carry none (normalized terms that cancel): a
  group is flat iff the weighted sum of its normalized rewards is constant within it, to 1e-3 of the weights'
  total (the advantage is that sum under one affine map for the whole batch). `build` refuses this aggregation
  with weights of different sizes in a stage: the schedule's weights live inside the rewards, and the per-group
  normalization divides them out.
Rows for which every reward function returned None (TRL gives them no advantage and leaves them out of the
group's mean) are left out of the comparison.

`scale_rewards: batch`: the advantage is (combined reward - group mean) / the std of the whole generation batch's
rewards, which TRL computes before the filter, over the flat groups' rewards too (their spread around the batch
mean counts). Removing a flat group therefore changes no advantage: the kept groups keep the scale of the batch as
it was sampled. What it changes is the loss's normalisation (which tokens count, by `loss_type` below) and, with
`beta > 0`, the KL term, which no longer counts the flat groups' tokens. A refilled group's advantages were
scaled by its own refill batch's std.

With `refill` (dynamic sampling, as in DAPO) the removed groups are replaced, in the same step, by groups of fresh
prompts: with `shuffle_dataset: false` (the curriculum's order) the prompts that come next in the data's order,
after this generation batch's (each refill round and each process taking its own slice of them; the sampler
still gives them again when their turn comes); with a shuffled dataset, random prompts. A refill round
generates and scores one more generation batch through TRL's own path and takes its groups that do carry
signal, until no removed group is left or `max_rounds` is reached. Every process runs the same number of rounds
(one collective decides), because generation and scoring gather across processes. Refill works per process, so a
process's generation batch must hold whole groups.

How a removed group weighs in TRL's loss (1.16), by `loss_type` (removed rows have an all-zero mask):
- `dapo` (TRL's default), `cispo`, `vespo`: token sum / `num_items_in_batch`, which is recomputed here from the
  kept tokens: the kept groups' tokens weigh exactly as if the removed ones had never been sampled.
- `bnpo`: token sum / the micro-batch's mask sum: removed rows leave the denominator too; same as above.
- `grpo`, `sapo`: per-sequence means, then the mean over all rows: a removed row counts as a zero in that mean,
  so removing half the groups halves the step (an effective learning rate that follows `groups/removed_frac`).
- `dr_grpo`: token sum / (rows x `max_completion_length`), a constant: the same dilution as `grpo`.
- `luspo`: per-sequence sums, mean over rows: the same dilution.
With `refill`, the removed rows are replaced and no loss type is diluted.

`rewards/sign_reversal_frac`: the share of the step's scored groups in which a wrong rollout (the `correctness`
reward's weighted value not above 0) has a strictly higher combined reward than a right one (`sign_reversals`);
logged once per step when a reward is named `correctness` and weighs more than 0 then. The recipe's check bounds
what a stage's weights allow; this counts what the sampled rollouts did.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from trl import GRPOTrainer
from trl.trainer.utils import nanstd

log = logging.getLogger(__name__)


def flat_groups(rewards_per_func: torch.Tensor, weights: torch.Tensor, group_size: int,
                aggregation: str = "sum_then_normalize") -> torch.Tensor:
    """One bool per row: True where the row's group carries no signal under TRL's `aggregation`: its combined
    (weighted) rewards are all equal (`sum_then_normalize`), or the weighted sum of its rewards normalized within
    the group is (`normalize_then_sum`, within 1e-3 of the weights' total). Unscorable rows (every reward None) are
    left out; a group of them only is flat."""
    weights = weights.to(rewards_per_func.device)
    unscorable = rewards_per_func.isnan().all(dim=1)
    if aggregation == "sum_then_normalize":
        values, atol = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1), 1e-8
    elif aggregation == "normalize_then_sum":  # as TRL normalizes, its 1e-4 included
        grouped = rewards_per_func.view(-1, group_size, rewards_per_func.shape[1])
        normalized = (grouped - torch.nanmean(grouped, dim=1, keepdim=True)) / (
            nanstd(grouped, dim=1, keepdim=True) + 1e-4)
        values = (normalized.view_as(rewards_per_func) * weights.unsqueeze(0)).nansum(dim=1)
        atol = 1e-3 * weights.abs().sum().item()
    else:
        raise ValueError(f"unknown multi_objective_aggregation {aggregation!r}")
    grouped = values.masked_fill(unscorable, float("nan")).view(-1, group_size)
    scored = ~grouped.isnan()
    high = grouped.masked_fill(~scored, -torch.inf).max(dim=1).values
    low = grouped.masked_fill(~scored, torch.inf).min(dim=1).values
    flat = torch.isclose(high, low, atol=atol) | ~scored.any(dim=1)
    return flat.repeat_interleave(group_size)


def sign_reversals(rewards_per_func: torch.Tensor, weights: torch.Tensor, correct: int,
                   group_size: int) -> torch.Tensor:
    """One bool per group: True where a wrong rollout (column `correct`'s raw value not above 0) has a strictly
    higher combined (weighted) reward than a right one (above 0). Unscorable rows (every reward None) are
    neither."""
    combined = (rewards_per_func * weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
    scorable = ~rewards_per_func.isnan().all(dim=1)
    right = (rewards_per_func[:, correct] > 0).view(-1, group_size)
    wrong = scorable.view(-1, group_size) & ~right
    grouped = combined.view(-1, group_size)
    best_wrong = grouped.masked_fill(~wrong, -torch.inf).max(dim=1).values
    worst_right = grouped.masked_fill(~right, torch.inf).min(dim=1).values
    return (best_wrong > worst_right) & ~torch.isclose(best_wrong, worst_right)


def generation_batch_index(global_step: int, micro_step: int, accumulation: int, steps_per_generation: int,
                           iterations: int) -> int:
    """Which generation batch of the data's order the trainer is at. TRL's `_step` (`micro_step`) counts
    micro-steps since this process started: it restarts at 0 on resume. `global_step` counts optimizer steps and
    is restored on resume; each is `accumulation` micro-steps, and the sampler gives one generation batch's
    prompts for `steps_per_generation x iterations` micro-steps."""
    micro = global_step * accumulation + micro_step % accumulation
    return micro // (steps_per_generation * iterations)


def _pad_to(tensor: torch.Tensor, width: int, value: float, left: bool) -> torch.Tensor:
    missing = width - tensor.shape[1]
    if missing <= 0:
        return tensor
    pad = torch.full((tensor.shape[0], missing, *tensor.shape[2:]), value, dtype=tensor.dtype, device=tensor.device)
    return torch.cat([pad, tensor] if left else [tensor, pad], dim=1)


def replace_rows(output: dict[str, Any], fresh: dict[str, Any], rows: torch.Tensor, fresh_rows: torch.Tensor,
                 pad_token_id: int) -> None:
    """Copy `fresh`'s rows `fresh_rows` into `output`'s rows `rows`, padding sequences to a common width (prompts
    on the left, completions on the right, as TRL pads them)."""
    size = len(output["advantages"])
    for key, value in output.items():
        if not (isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == size):
            continue
        new = fresh[key]
        if value.dim() >= 2:
            width = max(value.shape[1], new.shape[1])
            left = key.startswith("prompt")
            fill = pad_token_id if key.endswith("_ids") else 0
            value, new = _pad_to(value, width, fill, left), _pad_to(new, width, fill, left)
        value = value.clone()
        value[rows] = new[fresh_rows].to(value.dtype)
        output[key] = value


class FilteringGRPOTrainer(GRPOTrainer):
    """TRL's `GRPOTrainer` (all its arguments), and: `filter_groups`: remove same-score groups from the loss.
    `refill`: replace them with fresh ones, for at most `refill_max_rounds` extra generation batches per step.
    `samples`: a `SampleWriter` that records sampled steps' rollouts with their rewards. It also logs the mean
    reward of the rollouts that called a tool and of those that did not (`rewards/with_calls`,
    `rewards/without_calls`)."""

    def __init__(self, *args: Any, filter_groups: bool = True, refill: bool = False, refill_max_rounds: int = 2,
                 samples: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if refill and not filter_groups:
            raise ValueError("refill replaces the groups that filtering removes: it needs filter_groups")
        self.filter_groups, self.samples = filter_groups, samples
        self.all_removed_streak = 0  # generation batches in a row whose every group scored the same
        self._reversals_logged: tuple[str, int] | None = None  # the (mode, step) whose sign reversals are logged
        self._configure_refill(refill, refill_max_rounds)

    def _configure_refill(self, refill: bool, max_rounds: int) -> None:
        if refill:
            local = self.args.per_device_train_batch_size * self.args.steps_per_generation
            if local % self.num_generations:
                raise ValueError(f"groups.refill needs whole groups on each process: per_device_train_batch_size x "
                                 f"steps_per_generation = {local} is not a multiple of num_generations = "
                                 f"{self.num_generations}")
        self.refill, self.refill_max_rounds = refill, max_rounds
        self._refill_generator = torch.Generator().manual_seed(self.args.seed + 7919 * self.accelerator.process_index)
        self._refill_batch, self._refill_taken = -1, 0  # which generation batch, prompts taken after it so far

    def _calculate_rewards(self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any) -> Any:
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        step = self.state.global_step
        if self.samples is not None and self.model.training and self.accelerator.is_main_process and \
                self.samples.due(step):
            start = self.accelerator.process_index * len(inputs)
            self.samples.write(step, inputs, rewards[start:start + len(inputs)].tolist(), list(self.reward_func_names))
        group_size = self.num_generations if self.model.training else self.num_generations_eval
        self._flat_rows = flat_groups(rewards, self.reward_weights, group_size,
                                      self.multi_objective_aggregation)  # over all processes
        self._group_size = group_size
        self._log_reward_by_calls(inputs, rewards)
        self._log_sign_reversals(rewards, group_size)
        return rewards

    def _log_sign_reversals(self, rewards: torch.Tensor, group_size: int) -> None:
        """`rewards/sign_reversal_frac`, once per step and mode (a refill round scores again), when a reward is
        named `correctness` and weighs more than 0 at this step (else nothing counts as right)."""
        if "correctness" not in self.reward_func_names:
            return
        index = self.reward_func_names.index("correctness")
        weight_at = getattr(self.reward_funcs[index], "weight_at", None)
        step, mode = self.state.global_step, "train" if self.model.training else "eval"
        if (weight_at is not None and weight_at(step) <= 0) or self._reversals_logged == (mode, step):
            return
        self._reversals_logged = (mode, step)
        reversed_groups = sign_reversals(rewards, self.reward_weights, index, group_size)  # over all processes
        self._metrics[mode]["rewards/sign_reversal_frac"].append(reversed_groups.float().mean().item())

    def _log_reward_by_calls(self, inputs: list[dict[str, Any]], rewards: torch.Tensor) -> None:
        """`rewards/with_calls` and `rewards/without_calls`: the mean combined reward of the rollouts that called a
        tool and of those that did not, over every process (each logged when such rollouts exist). Whether calling
        pays is the first thing to read when a policy stops calling; the per-step aggregates of the first real
        request-mode runs could not say it (bench/results/gpu-real-grpo.md)."""
        if not inputs or "tool_calls" not in inputs[0]:
            return
        start = self.accelerator.process_index * len(inputs)
        local = rewards[start:start + len(inputs)]
        combined = (local * self.reward_weights.to(local.device).unsqueeze(0)).nansum(dim=1)
        called = torch.tensor([bool(row["tool_calls"]) for row in inputs], device=combined.device)
        sums = torch.stack([combined[called].sum(), called.sum(), combined[~called].sum(), (~called).sum()]).float()
        with_sum, with_n, without_sum, without_n = self.accelerator.gather(sums.unsqueeze(0)).sum(dim=0).tolist()
        metrics = self._metrics["train" if self.model.training else "eval"]
        if with_n:
            metrics["rewards/with_calls"].append(with_sum / with_n)
        if without_n:
            metrics["rewards/without_calls"].append(without_sum / without_n)

    def _local_flat(self, count: int) -> torch.Tensor:
        start = self.accelerator.process_index * count
        return self._flat_rows[start:start + count].cpu()

    def _generate_and_score_completions(self, inputs: Any) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        if not self.filter_groups:
            return output
        mode = "train" if self.model.training else "eval"
        flat = self._local_flat(len(inputs))
        removed = self._flat_rows.view(-1, self._group_size)[:, 0].float().mean().item()
        self._metrics[mode]["groups/removed_frac"].append(removed)
        all_removed = bool(self._flat_rows.all())  # over every process
        if self.refill and mode == "train":
            flat = self._refill(output, inputs, flat)
            all_removed = self._metrics["train"]["groups/removed_after_refill_frac"][-1] == 1.0
        if mode == "train":
            self._warn_if_nothing_learns(all_removed)
        keep = (~flat).to(output["completion_mask"].device, output["completion_mask"].dtype)
        output["completion_mask"] = output["completion_mask"] * keep.unsqueeze(1)
        loss_mask = output["completion_mask"] * output.get("tool_mask", 1)
        output["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()
        return output

    def _warn_if_nothing_learns(self, all_removed: bool) -> None:
        """Every group of the batch scored the same: its gradient is zero. Said at each such batch, with the
        streak, because a run can sit there for hours logging only `groups/removed_frac = 1` (the real 0.5B in
        request mode did, from step 17: it had stopped calling and every sample scored the same; bench/NOTES.md)."""
        self.all_removed_streak = self.all_removed_streak + 1 if all_removed else 0
        if all_removed and self.accelerator.is_main_process:
            log.warning("step %d: every group scored the same, so this batch's gradient is zero (%d batches in a "
                        "row): the policy may have collapsed to one behaviour (see tools/calls_per_rollout and "
                        "rewards/*), or the problems are all too hard or too easy for it",
                        self.state.global_step + 1, self.all_removed_streak)

    def _fresh_inputs(self, count: int) -> list[dict[str, Any]]:
        """`count` rows: fresh prompts, each repeated `num_generations` times. In the data's order (the
        curriculum's), the ones after this generation batch's (found from the restored global step, so a resumed
        run takes the same ones); random ones when the dataset is shuffled."""
        dataset, groups = self.train_dataset, count // self.num_generations
        if self.args.shuffle_dataset:
            picks = torch.randint(len(dataset), (groups,), generator=self._refill_generator).tolist()
        else:
            args = self.args
            batch = generation_batch_index(self.state.global_step, self._step, args.gradient_accumulation_steps,
                                           args.steps_per_generation, self.num_iterations)
            if batch != self._refill_batch:
                self._refill_batch, self._refill_taken = batch, 0
            processes = self.accelerator.num_processes
            unique = self.args.per_device_train_batch_size * self.args.steps_per_generation * processes \
                // self.num_generations  # prompts a generation batch takes, over all processes
            start = (batch + 1) * unique + self._refill_taken + self.accelerator.process_index * groups
            self._refill_taken += groups * processes
            picks = [(start + i) % len(dataset) for i in range(groups)]
        return [dataset[int(i)] for i in picks for _ in range(self.num_generations)]

    def _refill(self, output: dict[str, Any], inputs: list[Any], flat: torch.Tensor) -> torch.Tensor:
        size, group = len(inputs), self.num_generations
        removed = flat.view(-1, group)[:, 0].nonzero().flatten().tolist()  # this process's removed groups
        refilled = rounds = 0
        device = self.accelerator.device
        while rounds < self.refill_max_rounds:
            need = torch.tensor([len(removed)], device=device)
            if self.accelerator.gather(need).max().item() == 0:  # the same decision on every process
                break
            rounds += 1
            fresh = super()._generate_and_score_completions(self._fresh_inputs(size))
            good = (~self._local_flat(size)).view(-1, group)[:, 0].nonzero().flatten().tolist()
            pairs = list(zip(removed, good, strict=False))  # as many as both have
            if pairs:
                rows = torch.tensor([g * group + k for g, _ in pairs for k in range(group)])
                fresh_rows = torch.tensor([g * group + k for _, g in pairs for k in range(group)])
                replace_rows(output, fresh, rows.to(device), fresh_rows.to(device), self.processing_class.pad_token_id)
                for g, _ in pairs:
                    flat[g * group:(g + 1) * group] = False
                removed = removed[len(pairs):]
                refilled += len(pairs)
        total = torch.tensor([refilled, len(flat) // group], device=device, dtype=torch.float)
        refilled_all, groups_all = self.accelerator.gather(total).view(-1, 2).sum(0).tolist()
        self._metrics["train"]["groups/refilled_frac"].append(refilled_all / groups_all)
        self._metrics["train"]["groups/refill_rounds"].append(float(rounds))
        self._metrics["train"]["groups/removed_after_refill_frac"].append(
            self.accelerator.gather(flat.view(-1, group)[:, 0].float().to(device)).mean().item())
        return flat
