"""The warm start (`training/sft.py`): right answers that delegated, and only those, become examples whose loss
covers the planner's own tokens; the adapter it trains makes them likelier and GRPO can continue it."""

from __future__ import annotations

import pytest
import torch
import yaml

from delegate.planner import Agent, AgentConfig
from delegate.training import sft
from delegate.training.records import record, write_records
from tests.scripted import Env, Say, ScriptedText

CALL = [Say("```python\nprint(6 * 7)\n```\n"), Env("\n```\n")]
SCRIPTS = {  # question -> (script, reference)
    "What is 6 times 7?": ([*CALL, Say("The product is \\boxed{42}")], "42"),  # right, delegated: kept
    "What is 7 times 6?": ([*CALL, Say("So \\boxed{41}")], "42"),  # delegated, wrong
    "What is 42 plus 0?": ([Say("It is \\boxed{42}")], "42"),  # right, no call
}


def write_recipe(tmp_path, tiny_model_dir):
    recipe = {
        "planner": {"model": str(tiny_model_dir), "device": "cpu", "protocol": "code", "temperature": 1.0,
                    "max_completion_tokens": 64},
        "coder": {"model": str(tiny_model_dir), "device": "cpu"},
        "executor": {"timeout_s": 5.0, "workers": 2},
        "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "data": {"path": str(tmp_path / "unused.jsonl")},
        "grpo": {"output_dir": str(tmp_path / "grpo"), "use_cpu": True, "report_to": "none", "beta": 0.0},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def sampled_records(recipe_path, tmp_path):
    """Each scripted question rolled out through the real engine and sandbox, as trajectory records."""
    config = AgentConfig.from_yaml(recipe_path)
    with Agent(config, logits_processors=[]) as probe:
        prompts = {q: tuple(probe.engine.prompt_ids(probe.system_prompt, q)) for q in SCRIPTS}
        tokenizer = probe.tokenizer
    scripts = {prompts[q]: script for q, (script, _) in SCRIPTS.items()}
    with Agent(config, logits_processors=[ScriptedText(tokenizer, scripts)]) as agent:
        solutions = agent.solve_many(list(SCRIPTS))
    rows = [record(s.trajectory, tokenizer, reference=SCRIPTS[q][1]) for q, s in zip(SCRIPTS, solutions, strict=True)]
    return write_records(tmp_path / "rollouts.jsonl", rows), rows


def loss_logprob(model, input_ids: list[int], labels: list[int]) -> float:
    """The summed log-probability under `model` of the tokens a batch trains on (its labels other than -100)."""
    ids = torch.tensor([input_ids])
    with torch.no_grad():
        logps = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
    targets, mask = ids[0, 1:], torch.tensor(labels[1:]) != -100
    return logps.gather(1, targets[:, None])[:, 0][mask].sum().item()


def test_warm_start_keeps_right_delegating_answers_and_trains_on_their_sampled_tokens(tmp_path, tiny_model_dir,
                                                                                       monkeypatch):
    """The batches `training.sft` hands the trainer (recorded at its `compute_loss`) hold the kept rollout token
    for token, with labels on the planner's own tokens and the EOS only: the prompt and the tool's inserted result
    are -100; and the trained adapter makes those tokens likelier."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    recipe_path = write_recipe(tmp_path, tiny_model_dir)
    path, rows = sampled_records(recipe_path, tmp_path)
    assert [bool(r["tool_calls"]) for r in rows] == [True, True, False] and [r["correct"] for r in rows] == [
        True, False, True]
    assert [sft.why_not(r) for r in rows] == [None, "wrong or unchecked answer", "too few tool calls"]

    batches: list[tuple[list[int], list[int]]] = []
    compute_loss = SFTTrainer.compute_loss

    def record(self, model, inputs, *args, **kwargs):
        batches.extend(zip(inputs["input_ids"].tolist(), inputs["labels"].tolist(), strict=True))
        return compute_loss(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(SFTTrainer, "compute_loss", record)
    out = sft.main(["--config", str(recipe_path), "--records", str(path), "--out", str(tmp_path / "warm"),
                    "--epochs", "8", "--learning-rate", "0.05", "--batch-size", "1"])

    kept = rows[0]
    prompt, completion, env_mask = kept["prompt_ids"], kept["completion_ids"], kept["env_mask"]
    assert len(batches) == 8 and all(batch == batches[0] for batch in batches)  # the one kept rollout, 8 epochs
    input_ids, labels = batches[0]
    assert input_ids[:len(prompt) + len(completion)] == prompt + completion  # token for token as sampled
    appended = len(input_ids) - len(prompt) - len(completion)  # the EOS, when the engine stopped the rollout
    assert 0 in env_mask and 1 in env_mask and appended in (0, 1)
    trained = [label != -100 for label in labels]
    assert trained == [False] * len(prompt) + [mask == 1 for mask in env_mask] + [True] * appended
    assert all(label == token for label, token in zip(labels, input_ids, strict=True) if label != -100)

    before = loss_logprob(AutoModelForCausalLM.from_pretrained(tiny_model_dir), input_ids, labels)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
    assert loss_logprob(tuned, input_ids, labels) > before + 1.0  # the kept trajectory became likelier
    agent = yaml.safe_load((out / "agent.yaml").read_text())
    assert agent["planner"]["adapter"] == str(out.resolve())  # what GRPO continues with planner.adapter


def test_warm_start_refuses_records_sampled_with_another_prompt(tmp_path, tiny_model_dir):
    recipe_path = write_recipe(tmp_path, tiny_model_dir)
    path, _ = sampled_records(recipe_path, tmp_path)
    recipe = yaml.safe_load(recipe_path.read_text())
    other = tmp_path / "other-prompt.txt"
    other.write_text("A different system prompt.\n")
    recipe["planner"]["prompt"] = str(other)
    recipe_path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ValueError, match="not the one this recipe builds"):
        sft.main(["--config", str(recipe_path), "--records", str(path), "--out", str(tmp_path / "warm")])


def test_warm_start_with_nothing_to_learn_says_so(tmp_path, tiny_model_dir):
    recipe_path = write_recipe(tmp_path, tiny_model_dir)
    path, rows = sampled_records(recipe_path, tmp_path)
    write_records(path, [r for r in rows if sft.why_not(r) is not None])
    with pytest.raises(SystemExit, match="no trajectory answered right"):
        sft.main(["--config", str(recipe_path), "--records", str(path), "--out", str(tmp_path / "warm")])
