"""GRPO through training/grpo.py on the tiny model: LoRA trains, the base does not, inserted tokens are out of
the loss, and the saved adapter loads into an Agent."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from pydantic import ValidationError

from delegate.planner import Agent, AgentConfig, RolloutEngine
from delegate.training import curves, grpo
from delegate.training.filtering import replace_rows
from delegate.training.recipe import GroupsSection, Recipe
from delegate.training.rewards import REWARDS
from tests.scripted import Env, Say, ScriptedText

QUESTIONS = [f"What is {i} times 7?" for i in range(4)]


def digits(prompts, completions, **kwargs):
    """A reward that varies between free samples of a random model, so groups carry a signal."""
    return [float(sum(ch.isdigit() for ch in c)) for c in completions]


def write_recipe(tmp_path, tiny_model_dir, **grpo_fields):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": q, "answer": str(7 * i)}) + "\n" for i, q in enumerate(QUESTIONS)))
    recipe = {
        "planner": {"model": str(tiny_model_dir), "device": "cpu", "protocol": "code", "temperature": 1.0,
                    "max_completion_tokens": 40},
        "coder": {"model": str(tiny_model_dir), "device": "cpu"},
        "executor": {"timeout_s": 5.0, "workers": 2},
        "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "data": {"path": str(data)},
        "rewards": {"schedule": [[0, {"digits": 1.0, "format": 0.1}]]},
        "grpo": {"output_dir": str(tmp_path / "out"), "max_steps": 2, "per_device_train_batch_size": 4,
                 "num_generations": 4, "learning_rate": 0.01, "logging_steps": 1, "report_to": "none",
                 "save_strategy": "no", "use_cpu": True, "beta": 0.0, "seed": 0, **grpo_fields},
        "logging": {"sample_every": 1, "samples_per_step": 2},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_grpo_trains_lora_only_masks_inserted_tokens_and_saves_an_agent(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setitem(REWARDS, "digits", digits)
    processors: list = []
    run = grpo.build(Recipe.from_yaml(write_recipe(tmp_path, tiny_model_dir)), logits_processors=processors)
    try:
        rollout = run.rollout
        probe = RolloutEngine(rollout.protocol, None, rollout.tokenizer, run.sandbox)
        script = [Say("```python\nprint(6 * 7)\n```\n"), Env("\n```\n")]  # then the model samples freely
        processors.append(ScriptedText(rollout.tokenizer, {tuple(probe.prompt_ids(rollout.system_prompt, q)): script
                                                           for q in QUESTIONS}, then="free"))
        scored: list[dict] = []
        original = run.trainer._generate_and_score_completions
        monkeypatch.setattr(run.trainer, "_generate_and_score_completions",
                            lambda inputs: scored.append(original(inputs)) or scored[-1])
        model = run.trainer.model
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        out = grpo.train(run)
        last = rollout.last
    finally:
        run.close()

    after = dict(model.named_parameters())
    lora = [n for n in before if "lora_" in n]
    assert lora and any(not torch.equal(before[n], after[n]) for n in lora)
    assert all(torch.equal(before[n], after[n]) for n in before if "lora_" not in n)

    # TRL's per-token loss weights are completion_mask * tool_mask: zero exactly where we inserted tokens.
    batch = scored[-1]
    weights = (batch["completion_mask"] * batch["tool_mask"]).tolist()
    rows = {tuple(ids): i for i, ids in enumerate(batch["completion_ids"].tolist())}
    for trajectory in last:
        assert trajectory.tool_calls and trajectory.tool_calls[0].result.stdout == "42\n"
        width = len(batch["completion_ids"][0])
        row = rows[tuple((trajectory.completion_ids + [rollout.tokenizer.pad_token_id] * width)[:width])]
        inserted = [i for i, mask in enumerate(trajectory.env_mask) if mask == 0]
        assert inserted and all(weights[row][i] == 0 for i in inserted)
        assert weights[row][: len(trajectory.env_mask)] == trajectory.env_mask  # sampled tokens all weigh 1

    logged = {key for entry in run.trainer.state.log_history for key in entry}
    assert {"tools/calls_per_rollout", "tools/error_rate", "tools/status_ok", "rollout/mean_rounds",
            "rollout/inserted_token_frac", "groups/removed_frac", "time/rollout_generate", "time/rollout_coder",
            "time/rollout_executor"} <= logged
    samples = sorted((out / "samples").glob("step-*.jsonl"))
    sample = json.loads(samples[0].read_text().splitlines()[0])  # a record the viewer reads, rewards included
    assert sample["tool_calls"][0]["code"] and sample["step"] == 0 and set(sample["rewards"]) == {"digits", "format"}
    assert sample["reference"] is not None and sample["source"] == "data"
    assert sample["rewards"]["digits"] == sum(ch.isdigit() for ch in sample["text"])  # its own row's rewards
    assert next(s["text"] for s in sample["segments"] if not s["trained"]).startswith("```output\n42")
    assert sum(s["tokens"] for s in sample["segments"]) == len(sample["completion_ids"])

    agent_recipe = yaml.safe_load((out / "agent.yaml").read_text())
    assert agent_recipe["planner"]["adapter"] == str(out.resolve())
    with Agent.from_config(out / "agent.yaml") as agent:
        assert agent.solve("What is 2 times 7?").trajectory.finish_reason is not None


def test_the_reward_of_calling_and_not_calling_rollouts_is_logged(tmp_path, tiny_model_dir, monkeypatch):
    """Questions 0 and 1 are made to call (scripted), the others sample freely and do not; a reward of 3 for a
    rollout that called and 1 for one that did not must come back as the two logged means."""
    monkeypatch.setitem(REWARDS, "calls_pay", lambda prompts, completions, tool_calls, **kwargs:
                        [3.0 if calls else 1.0 for calls in tool_calls])
    recipe = Recipe.from_yaml(write_recipe(tmp_path, tiny_model_dir, max_steps=1, per_device_train_batch_size=16))
    recipe = recipe.model_copy(update={"rewards": recipe.rewards.model_copy(
        update={"schedule": [(0, {"calls_pay": 1.0})]})})
    processors: list = []
    run = grpo.build(recipe, logits_processors=processors)
    try:
        rollout = run.rollout
        probe = RolloutEngine(rollout.protocol, None, rollout.tokenizer, run.sandbox)
        script = [Say("```python\nprint(6 * 7)\n```\n"), Env("\n```\n")]
        scripts = {tuple(probe.prompt_ids(rollout.system_prompt, q)): script if q in QUESTIONS[:2] else []
                   for q in QUESTIONS}  # an empty script: free from the first token
        processors.append(ScriptedText(rollout.tokenizer, scripts, then="free"))
        grpo.train(run)
        called = [bool(t.tool_calls) for t in rollout.last]
    finally:
        run.close()
    logged = next(entry for entry in run.trainer.state.log_history if "rewards/with_calls" in entry)
    assert called.count(True) == 8 and called.count(False) == 8  # two scripted groups of four, two free ones
    assert logged["rewards/with_calls"] == 3.0 and logged["rewards/without_calls"] == 1.0


def half_flat(prompts, completions, **kwargs):
    """Groups of questions 0 and 1 score 0.0 whatever they say; the others vary with the completion's length."""
    return [0.0 if any(f"{i} times" in str(p) for i in (0, 1)) else float(len(c))
            for p, c in zip(prompts, completions, strict=True)]


def half_flat_recipe(tmp_path, tiny_model_dir, monkeypatch) -> Recipe:
    """One step of four groups of four, rewarded by `half_flat` alone."""
    monkeypatch.setitem(REWARDS, "half_flat", half_flat)
    recipe = Recipe.from_yaml(write_recipe(tmp_path, tiny_model_dir, max_steps=1, per_device_train_batch_size=16))
    return recipe.model_copy(update={"rewards": recipe.rewards.model_copy(
        update={"schedule": [(0, {"half_flat": 1.0})]})})


def test_same_score_groups_are_removed_from_the_loss(tmp_path, tiny_model_dir, monkeypatch):
    recipe = half_flat_recipe(tmp_path, tiny_model_dir, monkeypatch)
    run = grpo.build(recipe)
    try:
        scored: list[dict] = []
        original = run.trainer._generate_and_score_completions
        monkeypatch.setattr(run.trainer, "_generate_and_score_completions",
                            lambda inputs: scored.append(original(inputs)) or scored[-1])
        grpo.train(run)
        flat = run.trainer._flat_rows.tolist()
        logged = [entry["groups/removed_frac"] for entry in run.trainer.state.log_history
                  if "groups/removed_frac" in entry]
    finally:
        run.close()
    batch = scored[-1]
    weights = batch["completion_mask"] * batch["tool_mask"] if "tool_mask" in batch else batch["completion_mask"]
    assert sum(flat) == 8 and len(flat) == 16  # two of the four groups, four rows each
    for row, is_flat in enumerate(flat):
        assert (weights[row].sum().item() == 0) == is_flat
    assert batch["num_items_in_batch"].item() == weights.sum().item()
    assert logged == [0.5]


@pytest.mark.parametrize("refill", [False, True])
def test_a_batch_whose_every_group_scored_the_same_is_said_aloud(tmp_path, tiny_model_dir, monkeypatch, caplog,
                                                                  refill):
    """A constant reward removes every group (refilled ones too): the gradient is zero, and a warning says so at
    each such step."""
    recipe = half_flat_recipe(tmp_path, tiny_model_dir, monkeypatch)
    monkeypatch.setitem(REWARDS, "half_flat", lambda prompts, completions, **kwargs: [1.0] * len(completions))
    run = grpo.build(recipe.model_copy(update={"grpo": {**recipe.grpo, "max_steps": 2},
                                               "groups": GroupsSection(filter=True, refill=refill)}))
    try:
        with caplog.at_level("WARNING", logger="delegate.training.filtering"):
            grpo.train(run)
        streak = run.trainer.all_removed_streak
    finally:
        run.close()
    said = [r.getMessage() for r in caplog.records if "every group scored the same" in r.getMessage()]
    assert streak == 2 and len(said) == 2 and "(2 batches in a row)" in said[-1]


def test_recipe_rejects_unknown_grpo_fields(tmp_path, tiny_model_dir):
    with pytest.raises(ValidationError, match="not GRPOConfig fields: learnin_rate"):
        Recipe.from_yaml(write_recipe(tmp_path, tiny_model_dir, learnin_rate=1e-6))


def test_agent_reads_a_training_recipe(tmp_path, tiny_model_dir):
    from delegate.planner import AgentConfig

    config = AgentConfig.from_yaml(write_recipe(tmp_path, tiny_model_dir))
    assert config.planner.protocol == "code"

def test_refill_replaces_removed_groups_with_fresh_prompts(tmp_path, tiny_model_dir, monkeypatch):
    recipe = half_flat_recipe(tmp_path, tiny_model_dir, monkeypatch)
    recipe = recipe.model_copy(update={"groups": recipe.groups.model_copy(update={"refill": True,
                                                                                  "refill_max_rounds": 4})})
    run = grpo.build(recipe)
    try:
        scored: list[dict] = []
        original = run.trainer._generate_and_score_completions
        monkeypatch.setattr(run.trainer, "_generate_and_score_completions",
                            lambda inputs: scored.append(original(inputs)) or scored[-1])
        grpo.train(run)
        logged = next(entry for entry in run.trainer.state.log_history if "groups/refilled_frac" in entry)
    finally:
        run.close()
    batch = scored[-1]
    weights = batch["completion_mask"] * batch["tool_mask"] if "tool_mask" in batch else batch["completion_mask"]
    tokenizer = run.rollout.tokenizer
    questions = [tokenizer.decode(ids, skip_special_tokens=True) for ids in batch["prompt_ids"].tolist()]
    flat_rows = [any(f"What is {i} times" in q for i in (0, 1)) for q in questions]
    assert logged["groups/removed_frac"] == 0.5  # before refill: two of four groups
    assert logged["groups/refilled_frac"] == 0.5 and logged["groups/removed_after_refill_frac"] == 0.0
    assert 1 <= logged["groups/refill_rounds"] <= 4
    assert not any(flat_rows)  # every row now holds a question whose group carries a signal
    assert all(weights[row].sum().item() > 0 for row in range(16))
    assert batch["num_items_in_batch"].item() == weights.sum().item()
    assert torch.isfinite(batch["advantages"]).all() and (batch["advantages"] != 0).any()


def test_refill_needs_filter():
    with pytest.raises(ValidationError, match=r"refill needs groups\.filter"):
        GroupsSection(filter=False, refill=True)


def test_replace_rows_pads_prompts_left_and_completions_right():
    output = {"prompt_ids": torch.tensor([[9, 1], [9, 2]]), "completion_ids": torch.tensor([[5], [6]]),
              "completion_mask": torch.tensor([[1], [1]]), "advantages": torch.tensor([0.0, 0.0]),
              "num_items_in_batch": torch.tensor(2)}
    fresh = {"prompt_ids": torch.tensor([[7, 7, 3], [7, 7, 4]]), "completion_ids": torch.tensor([[8, 8], [8, 9]]),
             "completion_mask": torch.tensor([[1, 1], [1, 0]]), "advantages": torch.tensor([1.0, -1.0]),
             "num_items_in_batch": torch.tensor(3)}
    replace_rows(output, fresh, torch.tensor([1]), torch.tensor([0]), pad_token_id=0)
    assert output["prompt_ids"].tolist() == [[0, 9, 1], [7, 7, 3]]
    assert output["completion_ids"].tolist() == [[5, 0], [8, 8]]
    assert output["completion_mask"].tolist() == [[1, 0], [1, 1]]
    assert output["advantages"].tolist() == [0.0, 1.0]
    assert output["num_items_in_batch"].item() == 2  # not a per-row tensor: left alone


def test_a_non_finite_gradient_skips_the_update_and_a_diverged_run_stops(tmp_path, tiny_model_dir, monkeypatch):
    """A NaN in the gradients (injected into one LoRA matrix at the first backward) must not reach the weights: the
    guard drops that step; with patience 1 the run stops with a clear error instead of sampling from NaN."""
    from delegate.training.guards import NonFiniteGradientGuard

    monkeypatch.setitem(REWARDS, "digits", digits)
    run = grpo.build(Recipe.from_yaml(write_recipe(tmp_path, tiny_model_dir)))
    try:
        guard = next(c for c in run.trainer.callback_handler.callbacks if isinstance(c, NonFiniteGradientGuard))
        lora = {n: p for n, p in run.trainer.model.named_parameters() if p.requires_grad}
        target = next(p for n, p in lora.items() if "lora_B" in n)
        backwards = []
        target.register_hook(lambda g: backwards.append(1) or (g * float("nan") if len(backwards) == 1 else g))
        start = target.detach().clone()
        grpo.train(run)
        assert len(backwards) >= 2 and guard.skipped == 1
        assert all(torch.isfinite(p).all() for p in lora.values())
        assert not torch.equal(target.detach(), start)  # the second step did update it
    finally:
        run.close()

    (tmp_path / "again").mkdir()
    run = grpo.build(Recipe.from_yaml(write_recipe(tmp_path / "again", tiny_model_dir)))
    try:
        guard = next(c for c in run.trainer.callback_handler.callbacks if isinstance(c, NonFiniteGradientGuard))
        guard.patience = 1
        target = next(p for n, p in run.trainer.model.named_parameters() if "lora_B" in n and p.requires_grad)
        target.register_hook(lambda g: g * float("nan"))
        with pytest.raises(FloatingPointError, match="gradients were not finite at 1 steps in a row"):
            grpo.train(run)
    finally:
        run.close()


def test_a_termination_signal_ends_training_after_the_step_with_everything_saved(tmp_path, tiny_model_dir,
                                                                                  monkeypatch):
    """SIGTERM during step 1 of 5 (sent from inside a reward function, as a scheduler's would arrive): the step
    finishes, a checkpoint, the adapter and `agent.yaml` are saved, and the handlers are restored afterwards."""
    import os
    import signal

    fired: list[int] = []

    def digits_then_term(prompts, completions, **kwargs):
        if not fired:
            fired.append(1)
            os.kill(os.getpid(), signal.SIGTERM)
        return digits(prompts, completions)

    monkeypatch.setitem(REWARDS, "digits", digits_then_term)
    before = signal.getsignal(signal.SIGTERM)
    out = grpo.main(["--config", str(write_recipe(tmp_path, tiny_model_dir, max_steps=5))])
    assert signal.getsignal(signal.SIGTERM) == before
    assert json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())["global_step"] == 1
    assert not (out / "checkpoint-2").exists()
    assert (out / "adapter_model.safetensors").exists()
    assert AgentConfig.from_yaml(out / "agent.yaml").planner.adapter == str(out.resolve())


def test_only_truncated_rollouts_leave_the_loss_under_mask_truncated_completions(tmp_path, tiny_model_dir,
                                                                                  monkeypatch):
    """With TRL's `mask_truncated_completions`, TRL's own completion mask keeps the rollouts the engine ended (an
    answer, a format violation, a model EOS) and drops only the one that ran out of tokens."""
    monkeypatch.setitem(REWARDS, "digits", digits)
    processors: list = []
    recipe = Recipe.from_yaml(write_recipe(tmp_path, tiny_model_dir, max_steps=4, mask_truncated_completions=True),
                              ["groups.filter=false"])  # scripted groups score alike: keep them, to see TRL's mask
    run = grpo.build(recipe, logits_processors=processors)
    scripts = {QUESTIONS[0]: [Say("```output\n5\n```\n")],  # the planner writes a result: format_violation
               QUESTIONS[1]: [Say("\\boxed{7}")],  # answer
               QUESTIONS[2]: [Say("seven " * 60)],  # past the 40-token budget: length
               QUESTIONS[3]: [Say("no idea")]}  # then EOS: eos
    try:
        rollout = run.rollout
        probe = RolloutEngine(rollout.protocol, None, rollout.tokenizer, run.sandbox)
        processors.append(ScriptedText(rollout.tokenizer, {tuple(probe.prompt_ids(rollout.system_prompt, q)): s
                                                           for q, s in scripts.items()}))
        seen: list[tuple[str, int]] = []
        original = run.trainer._generate_and_score_completions

        def record(inputs):
            batch = original(inputs)
            kept = batch["completion_mask"].sum(dim=1).tolist()
            seen.extend(zip([t.finish_reason for t in rollout.last], kept, strict=True))
            return batch

        monkeypatch.setattr(run.trainer, "_generate_and_score_completions", record)
        grpo.train(run)
    finally:
        run.close()
    finishes = {reason for reason, _ in seen}
    assert finishes == {"format_violation", "answer", "length", "eos"}, finishes
    assert all((kept == 0) == (reason == "length") for reason, kept in seen), seen


def test_training_continues_the_given_adapter_in_the_given_dtype(tmp_path, tiny_model_dir, monkeypatch):
    """`planner.adapter` (an SFT adapter, a checkpoint): training goes on from its weights, trainable, not from a
    fresh LoRA; `planner.dtype` is the weights' dtype."""
    from safetensors.torch import load_file

    monkeypatch.setitem(REWARDS, "digits", digits)
    for part in ("first", "second"):
        (tmp_path / part).mkdir()
    first = grpo.build(Recipe.from_yaml(write_recipe(tmp_path / "first", tiny_model_dir, max_steps=1)))
    try:
        saved = grpo.train(first)
    finally:
        first.close()
    weights = load_file(str(saved / "adapter_model.safetensors"))
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in weights.items())  # trained: B != 0

    recipe = Recipe.from_yaml(write_recipe(tmp_path / "second", tiny_model_dir, max_steps=1),
                              [f"planner.adapter={saved}", "planner.dtype=float32"])
    run = grpo.build(recipe)
    try:
        model = run.trainer.model
        lora = {n: p for n, p in model.named_parameters() if "lora_B" in n}
        assert lora and all(p.requires_grad and p.dtype == torch.float32 for p in lora.values())
        by_suffix = {k.split("base_model.model.", 1)[-1].replace(".weight", ""): v for k, v in weights.items()}
        for name, param in lora.items():
            key = name.split("base_model.model.", 1)[-1].replace(".default", "").replace(".weight", "")
            assert torch.equal(param.detach().cpu(), by_suffix[key].float()), name  # the adapter's own weights
        assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "lora_" not in n)
    finally:
        run.close()


def test_every_checkpoint_is_an_agent_and_resume_continues_from_the_latest(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setitem(REWARDS, "digits", digits)
    import matplotlib

    backend = matplotlib.get_backend()
    matplotlib.use("svg")  # not Agg, as a notebook's inline backend is not: drawing the curves must leave it
    path = write_recipe(tmp_path, tiny_model_dir, max_steps=2, save_strategy="steps", save_steps=1)
    out = grpo.main(["--config", str(path)])
    assert matplotlib.get_backend() == "svg"
    matplotlib.use(backend)
    for step in (1, 2):
        checkpoint = out / f"checkpoint-{step}"
        config = AgentConfig.from_yaml(checkpoint / "agent.yaml")
        assert config.planner.adapter == str(checkpoint.resolve())
        assert (checkpoint / "adapter_model.safetensors").exists()
    scored_at: list[int] = []  # the global step at each scoring of the resumed run
    monkeypatch.setitem(REWARDS, "digits", lambda prompts, completions, trainer_state, **kwargs:
                        scored_at.append(trainer_state.global_step) or digits(prompts, completions))
    grpo.main(["--config", str(path), "--resume", "--set", "grpo.max_steps=3"])
    assert scored_at == [2]  # one step, the third: a restart from step 0 would sample steps 0 and 1 again
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and len(state["log_history"]) >= 3  # steps 1-2 carried over, then 3
    assert (out / "curves.png").stat().st_size > 10_000  # the training curves, redrawn at each checkpoint
    redrawn = curves.main([str(out), "--out", str(tmp_path / "again.png")])  # from the latest checkpoint
    assert redrawn is not None and redrawn.stat().st_size > 10_000
    (tmp_path / "fresh").mkdir()
    with pytest.raises(ValueError, match="checkpoint"):
        grpo.main(["--config", str(write_recipe(tmp_path / "fresh", tiny_model_dir)), "--resume"])


def test_an_auto_coder_goes_on_this_processs_device():
    """`coder.device: auto` in training is the trainer's device for this process (accelerate's local rank): on the
    second process of a two-GPU run, `cuda:1`, not the first GPU for every rank. An explicit device, and a coder
    that is not local, stay as the recipe says."""
    from delegate.coder import CoderConfig

    second_rank = torch.device("cuda", 1)  # the trainer's `args.device` on local rank 1 (no GPU needed to name it)
    assert grpo.coder_for_process(CoderConfig(device="auto"), second_rank).device == "cuda:1"
    assert grpo.coder_for_process(CoderConfig(device="cuda:0"), second_rank).device == "cuda:0"
    served = CoderConfig(backend="openai", base_url="http://localhost:8000/v1")
    assert grpo.coder_for_process(served, second_rank) == served


def test_training_builds_the_coder_for_the_trainers_device(tmp_path, tiny_model_dir, monkeypatch):
    """`build` places the coder with `coder_for_process` and the trainer's own device for this process (here, with
    `use_cpu`, the CPU: the choice for another rank's card is the test above)."""
    asked: list = []
    choose = grpo.coder_for_process
    monkeypatch.setattr(grpo, "coder_for_process", lambda coder, device: asked.append(device) or choose(coder, device))
    monkeypatch.setitem(REWARDS, "digits", digits)
    recipe = Recipe.from_yaml(write_recipe(tmp_path, tiny_model_dir),
                              ["coder.device=auto", "planner.protocol=request"])
    run = grpo.build(recipe)
    try:
        assert asked == [run.trainer.args.device]
        assert str(run.coder.backend.device) == str(run.trainer.args.device) == "cpu"
    finally:
        run.close()
