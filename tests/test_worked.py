"""Worked demonstrations (`training/worked.py`): GSM8K's annotated steps become the planner's calls, replayed
through the real engine and sandbox; only demonstrations whose every result is the step's value are kept, laid out
token for token as a rollout (results masked), ready for `training.sft`."""

from __future__ import annotations

import json
from fractions import Fraction

import yaml

from delegate.executor import ExecutionResult
from delegate.planner.protocols import build_protocol
from delegate.training import bigvalue, sft, worked
from delegate.training.records import read_records


def gsm8k_rows(shared_data, count):
    lines = (shared_data / "gsm8k" / "train.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[:count]]


def test_a_worked_solution_becomes_calls_with_its_expressions_in_big_values(shared_data, tiny_model_dir):
    from transformers import AutoTokenizer

    row = gsm8k_rows(shared_data, 1)[0]  # Natalia: 48/2 = <<48/2=24>>24 clips in May; 48+24 = <<48+24=72>>72
    plain = worked.worked(row, big_values=False, seed=0)
    assert plain.steps == (("48/2", "24"), ("48+24", "72")) and plain.answer == "72"

    big = worked.worked(row, big_values=True, seed=0)
    problem = bigvalue.rebuild(row["question"], row["answer"], seed=0)
    new = problem.mapping["48"]
    assert big.question == problem.question and big.answer == problem.answer
    half = bigvalue.decimal(Fraction(new) / 2)
    assert big.steps == ((f"{new}/2", half), (f"{new}+{half}", problem.answer))
    protocol = build_protocol("request", None, 500, AutoTokenizer.from_pretrained(tiny_model_dir))
    texts = worked.segments(big, protocol)
    assert texts == [f"Natalia sold <request>Compute {new}/2</request>",
                     f"{half} clips in May.\nNatalia sold <request>Compute {new}+{half}</request>",
                     f"{problem.answer} clips altogether in April and May.\n"
                     f"The answer is \\boxed{{{problem.answer}}}."]
    assert "48" not in "".join(texts) and "24" not in "".join(texts)  # no small number is left in the words


def test_the_words_before_a_call_lose_the_expression_and_keep_their_own():
    row = {"question": "A box holds 4 cans of 3 cups.", "answer": "The box = <<4*3=12>>12 cups, 0.5 x 12 = "
           "$<<0.5*12=6>>6 dollars.\n#### 6"}
    demo = worked.worked(row, big_values=False, seed=0)
    assert demo.prose == ("The box ", "12 cups, ", "6 dollars.\n")
    assert demo.steps == (("4*3", "12"), ("0.5*12", "6"))


def test_small_steps_are_written_out_and_only_the_others_called(shared_data, tiny_model_dir):
    from transformers import AutoTokenizer

    betty = gsm8k_rows(shared_data, 3)[2]  # 100/2 = <<100/2=50>>50; 15*2 = <<15*2=30>>30; 100-50-30-15 = <<...=5>>5
    demo = worked.worked(betty, big_values=False, seed=0, inline_below=100)
    assert demo.called == (True, False, True)  # 100 is not below 100; 15, 2 and 30 are
    assert demo.calls == (("100/2", "50"), ("100-50-30-15", "5"))
    protocol = build_protocol("request", None, 500, AutoTokenizer.from_pretrained(tiny_model_dir))
    texts = worked.segments(demo, protocol)
    assert len(texts) == 3 and texts[1] == ("50.\nBetty's grandparents gave her 15*2 = 30.\nThis means, Betty needs "
                                            "<request>Compute 100-50-30-15</request>")
    assert worked.worked(betty, big_values=False, seed=0).calls == worked.worked(betty, False, 0).steps  # default
    big = worked.worked(betty, big_values=True, seed=0, inline_below=100)
    assert all(big.called)  # big values: nothing is small, every step stays a call


def test_every_replayed_step_recomputes_to_its_value(shared_data):
    demos = worked.rows_of(str(shared_data / "gsm8k" / "train.jsonl"), 50, big_values=True, seed=0)
    assert len(demos) == 50
    for demo in demos:
        assert len(demo.prose) == len(demo.steps) + 1
        for expr, value in demo.steps:
            numbers = [Fraction(n) for n in bigvalue._EXPR_NUMBER.findall(expr)]
            assert bigvalue.evaluate(expr, numbers) == Fraction(value), (demo.question, expr, value)
        assert any(value == demo.answer for _, value in demo.steps)


def test_demonstrations_run_through_the_engine_and_keep_only_exact_results(tmp_path, shared_data, tiny_model_dir):
    rows = gsm8k_rows(shared_data, 3)
    rows.append({"question": "What is three tenths?", "answer": "0.1*3 = <<0.1*3=0.3>>0.3\n#### 0.3"})  # float 0.3…04
    rows.append({"question": "Count to five.", "answer": "".join(f"<<{i}+1={i + 1}>>" for i in range(5)) + "\n#### 6"})
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {
        "planner": {"model": str(tiny_model_dir), "device": "cpu", "protocol": "code", "temperature": 1.0,
                    "max_completion_tokens": 512,
                    "max_tool_calls": 4},
        "coder": {"model": str(tiny_model_dir), "device": "cpu"},
        "executor": {"timeout_s": 5.0, "workers": 2},
        "data": {"path": str(data), "big_values": False},
        "grpo": {"output_dir": str(tmp_path / "grpo"), "use_cpu": True},
    }
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))

    out = worked.main(["--config", str(recipe_path), "--out", str(tmp_path / "worked.jsonl")])

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    protocol = build_protocol("code", None, 500, tokenizer)
    records = read_records(out)
    assert [r["question"] for r in records] == [r["question"] for r in rows[:3]]  # not 0.3..04, not 5 calls
    for record, row in zip(records, rows, strict=False):
        demo = worked.worked(row, big_values=False, seed=0)
        assert record["correct"] is True and sft.why_not(record) is None  # a warm-start example as it stands
        assert [c["request"] for c in record["tool_calls"]] == [f"print({e})" for e, _ in demo.steps]
        assert [worked._number(c["result"]["stdout"]) for c in record["tool_calls"]] == [
            Fraction(v) for _, v in demo.steps]
        ids, mask = record["completion_ids"], record["env_mask"]
        planner = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
        inserted = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if not m])
        assert planner == "".join(worked.segments(demo, protocol))  # the planner's side, token for token
        assert inserted == "".join(protocol.render_result(ExecutionResult(**c["result"]).render(1000))
                                   for c in record["tool_calls"])  # what the sandbox printed, masked
