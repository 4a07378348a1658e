"""`python -m delegate.training.generalization` end to end on the tiny models: two agents (one a LoRA adapter on the
other's model, so the pair is found by itself), every suite, greedy and sampled, `--limit 2` per suite. The
planners are scripted so that each suite gets its own accuracy and tool-call rate: a cell read from the wrong
suite's or agent's run cannot pass."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from delegate.planner import Agent, AgentConfig
from delegate.planner.protocols import CODE_TAGS
from delegate.training import generalization, suites
from delegate.training.records import read_records
from tests.scripted import Env, Say, ScriptedText

LIMIT = 2
# What each scripted agent does on each suite: the right answer or a wrong one, with or without a call first.
BASE = {"countdown": (False, False), "knights": (False, False), "letters": (True, False),
        "compare": (False, False), "words": (False, True)}
TUNED = {"countdown": (True, True), "knights": (False, False), "letters": (False, False),
         "compare": (True, True), "words": (True, False)}


def _script(right: bool, call: bool, solution: str) -> list:
    parts = [Say("<code>\nprint(1)\n</code>"), Env("</result>\n")] if call else []
    return [*parts, Say(f"\\boxed{{{solution if right else 'no'}}}")]


def _recipe(path, model, prompt, adapter=None):
    planner = {"model": str(model), "device": "cpu", "protocol": "code", "temperature": 1.0, "prompt": str(prompt),
               "max_completion_tokens": 160, "markers": CODE_TAGS.model_dump()}  # `<code>` token by token
    if adapter is not None:
        planner["adapter"] = str(adapter)
    path.write_text(yaml.safe_dump({"planner": planner, "coder": {"model": str(model), "device": "cpu"},
                                    "executor": {"timeout_s": 5.0, "workers": 2}}))
    return path


def _adapter(model_dir, out):
    """A LoRA adapter on the tiny model, as a GRPO run would leave one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def table_run(tmp_path_factory, tiny_model_dir):
    """One generalization run shared by the tests that read it; the output directory."""
    tmp = tmp_path_factory.mktemp("generalization")
    prompt = tmp / "planner.txt"
    prompt.write_text("Solve the task. Put the answer in \\boxed{}.\n")
    tuned_prompt = tmp / "planner_tuned.txt"  # another system prompt: each agent's rows get their own scripts
    tuned_prompt.write_text("Solve the task; run code when it helps. Put the answer in \\boxed{}.\n")
    base = _recipe(tmp / "base.yaml", tiny_model_dir, prompt)
    tuned_dir = tmp / "tuned"
    _adapter(tiny_model_dir, tuned_dir)
    tuned = _recipe(tuned_dir / "agent.yaml", tiny_model_dir, tuned_prompt, adapter=tuned_dir)
    scripts = {}
    for recipe, plan in ((base, BASE), (tuned, TUNED)):
        with Agent(AgentConfig.from_yaml(recipe)) as probe:
            for name in suites.SUITES:
                for problem in suites.generate(name, "test", LIMIT):
                    ids = tuple(probe.engine.prompt_ids(probe.system_prompt, problem.prompt))
                    scripts[ids] = _script(*plan[name], problem.solution or problem.answer)
            tokenizer = probe.tokenizer
    out = tmp / "table"
    generalization.main(["--config", str(base), "--config", str(tuned), "--limit", str(LIMIT), "--out", str(out)],
                        logits_processors=[ScriptedText(tokenizer, scripts)])
    return out


def _cells_of_markdown(text: str) -> dict[tuple[str, str], dict[str, str]]:
    """table.md's accuracy table as {(agent, mode): {column: cell}}."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != len(header) or cells[0] == "untrained":
            break
        rows[(cells[0], cells[1].split(" ")[0])] = dict(zip(header[2:], cells[2:], strict=True))
    return rows


def test_every_cell_is_the_metrics_of_its_own_suite_run(table_run):
    out = table_run
    table = json.loads((out / "table.json").read_text())
    assert table["suites"] == list(suites.SUITES)
    assert [(r["agent"], r["mode"]) for r in table["rows"]] == [("base", "greedy"), ("base", "sampled"),
                                                                 ("tuned", "greedy"), ("tuned", "sampled")]
    markdown = _cells_of_markdown((out / "table.md").read_text())
    for row in table["rows"]:
        plan = BASE if row["agent"] == "base" else TUNED
        for suite in suites.SUITES:
            run = out / row["cells"][suite]["run"]
            assert run == out / row["agent"] / row["mode"] / suite
            metrics = json.loads((run / "metrics.json").read_text())
            records = read_records(run / "trajectories.jsonl")
            assert {r["source"] for r in records} == {f"unseen/{suite}"} and len(records) == LIMIT
            cell = row["cells"][suite]
            assert (cell["n"], cell["accuracy"], cell["tool_call_rate"]) == (
                metrics["n"], metrics["accuracy"], metrics["tool_call_rate"])
            pooled = json.loads((out / row["agent"] / row["mode"] / "all" / "metrics.json").read_text())
            assert pooled["by_source"][f"unseen/{suite}"]["accuracy"] == metrics["accuracy"]
            right, call = plan[suite]
            assert (cell["accuracy"], cell["tool_call_rate"]) == (float(right), float(call))
            column = f"{suite} (n={LIMIT})"
            assert markdown[(row["agent"], row["mode"])][column] == (
                f"{100 * metrics['accuracy']:.1f}% ({100 * metrics['tool_call_rate']:.1f}%)")
        mean = sum(right for right, _ in plan.values()) / len(plan)
        assert row["mean"]["accuracy"] == pytest.approx(mean)
        assert markdown[(row["agent"], row["mode"])]["mean"].startswith(f"{100 * mean:.1f}% (")
    assert (out / "generalization.png").stat().st_size > 0


def test_the_trained_agent_is_paired_with_its_base_per_suite_and_pooled(table_run):
    table = json.loads((table_run / "table.json").read_text())
    pooled = {c["mode"]: c for c in table["paired"] if c["suite"] == "all"}
    assert set(pooled) == {"greedy", "sampled"}
    for c in pooled.values():
        assert (c["untrained"], c["trained"], c["n"]) == ("base", "tuned", LIMIT * len(suites.SUITES))
        assert (c["gained"], c["lost"]) == (3 * LIMIT, LIMIT)  # countdown, compare, words gained; letters lost
        assert c["delta"] == pytest.approx(2 * LIMIT / c["n"])
    letters = next(c for c in table["paired"] if c["suite"] == "letters" and c["mode"] == "greedy")
    assert (letters["delta"], letters["lost"]) == (-1.0, LIMIT)
    assert re.search(r"\| base \| tuned \| greedy \| all \| 10 \| \+40\.0 \|", (table_run / "table.md").read_text())


def test_resume_evaluates_nothing_again(table_run):
    """The pooled runs are kept (the cells are split from them again, to the same files)."""
    before = {p: p.stat().st_mtime_ns for p in table_run.glob("*/*/all/*")}
    table = (table_run / "table.json").read_text()
    rows = json.loads((table_run / "table.json").read_text())["rows"]
    base, tuned = rows[0]["config"], rows[2]["config"]
    generalization.main(["--config", base, "--config", tuned, "--limit", str(LIMIT), "--out", str(table_run),
                         "--resume"])
    assert len({p.parent for p in before}) == 4  # (base, tuned) x (greedy, sampled)
    assert {p: p.stat().st_mtime_ns for p in table_run.glob("*/*/all/*")} == before
    assert (table_run / "table.json").read_text() == table


def test_agents_are_named_and_paired_by_their_adapter():
    spec = generalization.AgentSpec
    agents = [spec("a", "a.yaml", "m", None, "request", 1.0), spec("b", "b/agent.yaml", "m", "b", "request", 1.0),
              spec("c", "c/agent.yaml", "m", "c", "code", 1.0), spec("d", "d.yaml", "m", None, "code", 0.0)]
    assert generalization.find_pairs(agents) == [("a", "b"), ("d", "c")]
    assert generalization.find_pairs(agents, [("b", "a")]) == [("b", "a"), ("d", "c")]
    with pytest.raises(ValueError, match="no agent named 'x'"):
        generalization.find_pairs(agents, [("x", "a")])
    assert generalization.modes_of(agents[3], generalization.MODES) == ["greedy"]  # a greedy recipe: one row
    assert generalization.parse_agent("runs/x/agent.yaml") == ("x", "runs/x/agent.yaml")
    assert generalization.parse_agent("trained=runs/x/agent.yaml") == ("trained", "runs/x/agent.yaml")
