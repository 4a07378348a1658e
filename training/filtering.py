"""Same-score groups carry no signal: a `GRPOTrainer` that removes them from the loss.

TRL only logs `frac_reward_zero_std`. Here a group whose combined (weighted) rewards are all equal has its rows'
completion mask zeroed, so it adds nothing to the loss, the KL term or the token count, and `num_items_in_batch`
(which TRL computes before the rewards exist) is recomputed from the remaining tokens. The fraction removed is
logged as `groups/removed_frac`.
"""

from __future__ import annotations

from typing import Any

import torch
from trl import GRPOTrainer


def flat_groups(rewards_per_func: torch.Tensor, weights: torch.Tensor, group_size: int) -> torch.Tensor:
    """One bool per row: True where every sample of the row's group has the same combined reward."""
    combined = (rewards_per_func * weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
    grouped = combined.view(-1, group_size)
    flat = torch.isclose(grouped.max(dim=1).values, grouped.min(dim=1).values)
    return flat.repeat_interleave(group_size)


class FilteringGRPOTrainer(GRPOTrainer):
    def _calculate_rewards(self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any) -> Any:
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        group_size = self.num_generations if self.model.training else self.num_generations_eval
        self._flat_rows = flat_groups(rewards, self.reward_weights, group_size)  # over all processes
        self._group_size = group_size
        return rewards

    def _generate_and_score_completions(self, inputs: Any) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        local = slice(self.accelerator.process_index * len(inputs), (self.accelerator.process_index + 1) * len(inputs))
        keep = (~self._flat_rows[local]).to(output["completion_mask"].dtype)
        output["completion_mask"] = output["completion_mask"] * keep.unsqueeze(1)
        loss_mask = output["completion_mask"] * output.get("tool_mask", 1)
        output["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()
        mode = "train" if self.model.training else "eval"
        removed = self._flat_rows.view(-1, self._group_size)[:, 0].float().mean().item()
        self._metrics[mode]["groups/removed_frac"].append(removed)
        return output
