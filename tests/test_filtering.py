"""Filtering's edges (`training.filtering`): which groups carry no signal under TRL's advantage options, refill's
place in the data after a resume, and the per-step sign-reversal share."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from trl.trainer.utils import nanstd

from delegate.training import grpo
from delegate.training.filtering import FilteringGRPOTrainer, flat_groups, sign_reversals
from delegate.training.recipe import Recipe
from delegate.training.rewards import REWARDS
from tests.test_grpo import QUESTIONS, half_flat, write_recipe

NAN = math.nan


def question_of(prompt) -> int:
    return next(i for i in range(len(QUESTIONS)) if f"What is {i} times" in str(prompt))


def recipe_with(tmp_path, tiny_model_dir, monkeypatch, rewards: dict, weights: dict, **grpo_fields) -> Recipe:
    """One step of four groups of four (questions 0 to 3), rewarded by `rewards` (name: function) at `weights`."""
    for name, func in rewards.items():
        monkeypatch.setitem(REWARDS, name, func)
    recipe = Recipe.from_yaml(write_recipe(tmp_path, tiny_model_dir, max_steps=1, per_device_train_batch_size=16,
                                           **grpo_fields))
    return recipe.model_copy(update={"rewards": recipe.rewards.model_copy(update={"schedule": [(0, weights)]})})


def train_and_capture(recipe: Recipe, monkeypatch) -> tuple[dict, list[int], torch.Tensor, list[bool], Any]:
    """Train the one step; the scored batch as `_generate_and_score_completions` returned it (filtered), each row's
    question, the rewards per function, the flat rows and the trainer."""
    run = grpo.build(recipe)
    try:
        trainer = run.trainer
        scored: list[dict] = []
        rewarded: list = []
        generate, calculate = trainer._generate_and_score_completions, trainer._calculate_rewards
        monkeypatch.setattr(trainer, "_generate_and_score_completions",
                            lambda inputs: scored.append(generate(inputs)) or scored[-1])
        monkeypatch.setattr(trainer, "_calculate_rewards", lambda inputs, prompts, *rest: rewarded.append(
            ([question_of(p) for p in prompts], calculate(inputs, prompts, *rest))) or rewarded[-1][1])
        grpo.train(run)
    finally:
        run.close()
    questions, rewards = rewarded[-1]
    return scored[-1], questions, rewards, trainer._flat_rows.tolist(), trainer


def groups_of(questions: list[int]) -> list[int]:
    assert all(len(set(questions[g:g + 4])) == 1 for g in range(0, len(questions), 4))
    return questions[::4]


# normalize_then_sum --------------------------------------------------------------------------------------------

def test_flat_under_normalize_then_sum_is_a_constant_normalized_sum_not_a_constant_weighted_sum():
    """Columns a, b, c at weights 1; groups of three. The weighted sum is constant in group 0 and varies in group 1,
    yet group 0 carries a signal and group 1 none once each column is normalized within the group."""
    rewards = torch.tensor([[2.0, -1.0, -1.0], [4.0, -2.0, -2.0], [6.0, -3.0, -3.0],  # a = 2x, b = c = -x: sum 0
                            [1.0, -2.0, 0.0], [2.0, -4.0, 0.0], [3.0, -6.0, 0.0],  # a = x, b = -2x: normalized, 0
                            [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0],  # constant
                            [1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [NAN, NAN, NAN]])  # varies; an unscorable row
    ones = torch.ones(3)
    assert flat_groups(rewards, ones, 3).view(-1, 3)[:, 0].tolist() == [True, False, True, False]
    assert flat_groups(rewards, ones, 3, "normalize_then_sum").view(-1, 3)[:, 0].tolist() == [False, True, True,
                                                                                              False]
    # Unscorable rows are out of the comparison, as TRL leaves them out of the group's mean: 1, 1, (none) is flat.
    same = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [NAN, NAN, NAN]])
    assert flat_groups(same, ones, 3).all() and flat_groups(same, ones, 3, "normalize_then_sum").all()
    assert flat_groups(torch.full((3, 3), NAN), ones, 3).all()
    with pytest.raises(ValueError, match="unknown multi_objective_aggregation"):
        flat_groups(rewards, ones, 3, "sum")


def a_by_question(prompts, completions, **kwargs):
    """With `b_` and `c_` (all at weight 1), by question: 0: (2L, -L, -L), a constant sum that normalizes to -z;
    1: (L, -2L, 0), a varying sum whose normalized terms cancel; 2: constant; 3: (L, 0, 0). L: the length."""
    return [{0: 2.0 * len(c), 1: float(len(c)), 2: 1.0, 3: float(len(c))}[question_of(p)]
            for p, c in zip(prompts, completions, strict=True)]


def b_by_question(prompts, completions, **kwargs):
    return [{0: -float(len(c)), 1: -2.0 * len(c), 2: 0.0, 3: 0.0}[question_of(p)]
            for p, c in zip(prompts, completions, strict=True)]


def c_by_question(prompts, completions, **kwargs):
    return [{0: -float(len(c)), 1: 0.0, 2: 0.0, 3: 0.0}[question_of(p)] for p, c in zip(prompts, completions,
                                                                                         strict=True)]


def test_under_normalize_then_sum_the_removed_groups_are_those_whose_trl_advantages_are_zero(
        tmp_path, tiny_model_dir, monkeypatch):
    recipe = recipe_with(tmp_path, tiny_model_dir, monkeypatch,
                         {"a_": a_by_question, "b_": b_by_question, "c_": c_by_question},
                         {"a_": 1.0, "b_": 1.0, "c_": 1.0}, multi_objective_aggregation="normalize_then_sum")
    batch, questions, _, flat, _ = train_and_capture(recipe, monkeypatch)
    groups = groups_of(questions)
    removed = {q: flat[4 * g] for g, q in enumerate(groups)}
    assert removed == {0: False, 1: True, 2: True, 3: False}
    advantages = batch["advantages"].view(-1, 4).abs().max(dim=1).values  # TRL's own, left as they were
    for g, q in enumerate(groups):
        assert (advantages[g] < 1e-3) == removed[q], (q, advantages[g].item())
        assert (batch["completion_mask"][4 * g:4 * g + 4].sum() == 0) == removed[q]


def test_weights_of_different_sizes_are_refused_under_normalize_then_sum(tmp_path, tiny_model_dir, monkeypatch):
    """The schedule's weights live inside the reward functions' outputs, which normalize_then_sum divides by their
    spread: a 0.1 on format would weigh as much as correctness's 1.0."""
    recipe = recipe_with(tmp_path, tiny_model_dir, monkeypatch, {"half_flat": half_flat},
                         {"half_flat": 1.0, "format": 0.1}, multi_objective_aggregation="normalize_then_sum")
    with pytest.raises(ValueError, match=r"normalize_then_sum.*stage from step 0.*normalized away"):
        grpo.build(recipe)


# scale_rewards: batch ------------------------------------------------------------------------------------------

def even_is_right(prompts, completions, **kwargs):
    """Stands in for correctness: questions 2 and 3 are answered right by their even-length completions."""
    return [1.0 if question_of(p) in (2, 3) and len(c) % 2 == 0 else 0.0
            for p, c in zip(prompts, completions, strict=True)]


def test_under_batch_scaling_removing_flat_groups_changes_the_loss_normalisation_not_the_advantages(
        tmp_path, tiny_model_dir, monkeypatch):
    """Questions 0 and 1 score 0 whatever they say (`half_flat`). Their advantages are zero anyway; the kept groups'
    advantages are scaled by the std of every row's reward, the flat groups' included (TRL computes it before the
    filter); what removing them changes is the token count the loss divides by. The same step logs the share of
    groups where a wrong rollout out-scored a right one."""
    recipe = recipe_with(tmp_path, tiny_model_dir, monkeypatch, {"half_flat": half_flat, "correctness": even_is_right},
                         {"half_flat": 1.0, "correctness": 1.0}, scale_rewards="batch")
    batch, questions, rewards, flat, trainer = train_and_capture(recipe, monkeypatch)
    combined = rewards.sum(dim=1)
    assert [flat[4 * g] for g in range(4)] == [q in (0, 1) for q in groups_of(questions)]
    kept = ~torch.tensor(flat)
    assert (batch["advantages"][~kept] == 0).all()
    centred = combined - combined.view(-1, 4).mean(dim=1).repeat_interleave(4)
    torch.testing.assert_close(batch["advantages"], centred / (nanstd(combined) + 1e-4))
    assert not torch.allclose(batch["advantages"][kept], centred[kept] / (nanstd(combined[kept]) + 1e-4))
    mask = batch["completion_mask"] * batch.get("tool_mask", 1)
    assert mask[~kept].sum() == 0 and batch["num_items_in_batch"].item() == mask[kept].sum().item()

    logged = next(e for e in trainer.state.log_history if "rewards/sign_reversal_frac" in e)
    right = rewards[:, 1] > 0
    reversed_groups = [any(combined[w] > combined[r] for w in range(g, g + 4) for r in range(g, g + 4)
                           if right[r] and not right[w]) for g in range(0, 16, 4)]
    assert logged["rewards/sign_reversal_frac"] == pytest.approx(sum(reversed_groups) / 4)


# sign reversals ------------------------------------------------------------------------------------------------

def test_sign_reversals_count_groups_where_a_wrong_rollout_outscores_a_right_one():
    """Columns: correctness, format; groups of three."""
    rewards = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0],  # right 1, wrong 2: reversed
                            [1.0, 1.0], [0.0, 2.0], [0.0, 0.0],  # right 2, wrong 2: a tie is no reversal
                            [0.0, 2.0], [0.0, 1.0], [0.0, 0.0],  # no right rollout
                            [1.0, 0.5], [0.0, 0.5], [NAN, NAN]])  # right above wrong; an unscorable row is neither
    assert sign_reversals(rewards, torch.ones(2), 0, 3).tolist() == [True, False, False, False]
    # The weights count: correctness at 2 puts the first group's right rollout level with the wrong one.
    assert sign_reversals(rewards, torch.tensor([2.0, 1.0]), 0, 3).tolist() == [False, False, False, False]
    assert sign_reversals(rewards[:, [1, 0]], torch.ones(2), 1, 3).tolist() == [True, False, False, False]


def test_without_a_correctness_reward_no_sign_reversal_share_is_logged(tmp_path, tiny_model_dir, monkeypatch):
    recipe = recipe_with(tmp_path, tiny_model_dir, monkeypatch, {"half_flat": half_flat}, {"half_flat": 1.0})
    *_, trainer = train_and_capture(recipe, monkeypatch)
    assert not any("rewards/sign_reversal_frac" in entry for entry in trainer.state.log_history)
    assert any("groups/removed_frac" in entry for entry in trainer.state.log_history)


# refill after a resume -----------------------------------------------------------------------------------------

def refill_picks(trainer: SimpleNamespace, micro_steps: range, resumed_at: int = 0) -> dict[int, list]:
    """The prompts `_fresh_inputs` takes (one group) at each generation over `micro_steps`, by generation batch (the
    sampler serves batch b's prompts for micro-steps b x steps_per_generation x iterations onwards): a run from the
    start, or one resumed at optimizer step `resumed_at`, where TRL's `_step` restarts at 0 (and generates at once)
    and `global_step` is restored."""
    args = trainer.args
    generate_every = args.steps_per_generation * trainer.num_iterations
    picks = {}
    for micro in micro_steps:
        trainer.state.global_step = micro // args.gradient_accumulation_steps
        trainer._step = micro - resumed_at * args.gradient_accumulation_steps
        if trainer._step % generate_every == 0:
            picks[micro // generate_every] = [row["prompt"] for row in FilteringGRPOTrainer._fresh_inputs(trainer, 4)]
    return picks


@pytest.mark.parametrize(("accumulation", "steps_per_generation", "iterations"),
                         [(2, 2, 1), (1, 2, 1), (4, 2, 2), (4, 2, 1)])
def test_refill_after_a_resume_takes_what_the_uninterrupted_run_takes(accumulation, steps_per_generation,
                                                                      iterations):
    """Issue 47: the refill's place in the data came from TRL's `_step`, which a resume resets to 0, so a resumed
    run refilled from the data's start. (1, 2, 1) resumes in the middle of a generation batch; (4, 2, 1) generates
    twice in one optimizer step."""
    def fresh_trainer() -> SimpleNamespace:
        args = SimpleNamespace(shuffle_dataset=False, gradient_accumulation_steps=accumulation,
                               steps_per_generation=steps_per_generation, per_device_train_batch_size=4)
        return SimpleNamespace(args=args, num_generations=4, num_iterations=iterations, state=SimpleNamespace(),
                               train_dataset=[{"prompt": i} for i in range(50)], _refill_batch=-1, _refill_taken=0,
                               accelerator=SimpleNamespace(num_processes=1, process_index=0))

    total = 8 * steps_per_generation * iterations  # micro-steps: eight generation batches
    whole = refill_picks(fresh_trainer(), range(total))
    resume = total // accumulation // 2 + 1
    resumed = refill_picks(fresh_trainer(), range(resume * accumulation, total), resumed_at=resume)
    assert len(whole) == 8 and len(resumed) >= 2
    # A generation batch holds `steps_per_generation` prompts (4 rows a step, one group); refill takes the next one.
    assert all(picks == [(batch + 1) * steps_per_generation] * 4 for batch, picks in whole.items())
    assert all(picks == whole[batch] for batch, picks in resumed.items())
