"""The toy world's fast parts: exact answers, a disjoint held-out split, and SFT data whose loss mask covers
exactly what the model writes (the slow end-to-end run is tests/test_toy_world.py)."""

from __future__ import annotations

import re
from fractions import Fraction

import pytest
import sympy
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from delegate.executor import ExecutionResult
from delegate.planner.protocols import build_protocol
from delegate.training.tiny import build_model
from delegate.training.toy import sft
from delegate.training.toy.tasks import format_exact, generate, held_out, split

PROBLEMS = generate(400, seed=3)


def test_answers_are_exact_recomputed_independently():
    for problem in PROBLEMS:
        exact = sympy.sympify(problem.expression.replace("//", "/"), rational=True)  # '//' only where it divides
        assert exact.is_Rational and Fraction(int(exact.p), int(exact.q)) == Fraction(problem.answer), problem
        assert sft.printed(problem.expression) == problem.answer or Fraction(sft.printed(problem.expression)) == \
            Fraction(problem.answer)


def test_stories_state_every_quantity_of_the_expression():
    for problem in PROBLEMS:
        in_question = re.findall(r"\d+(?:\.\d+)?", problem.question)
        assert sorted(re.findall(r"\d+(?:\.\d+)?", problem.expression)) == sorted(in_question), problem
        big = [q for q in in_question if "." not in q and len(q) >= 9]
        assert problem.decimal or big  # integer stories carry 9- to 11-digit quantities


def test_difficulty_and_seed():
    assert {p.ops for p in generate(100, seed=1, max_ops=1)} == {1}
    assert {p.ops for p in PROBLEMS} == {1, 2, 3}
    assert generate(50, seed=7) == generate(50, seed=7) != generate(50, seed=8)
    assert any(p.decimal for p in PROBLEMS) and any(not p.decimal for p in PROBLEMS)


def test_held_out_split_shares_no_problem_whatever_the_seed():
    train, test = split(generate(2000, seed=0))
    other_train, other_test = split(generate(2000, seed=1))
    questions = lambda ps: {p.question for p in ps}  # noqa: E731
    assert 0.1 < len(test) / 2000 < 0.3
    assert not questions(train) & questions(test)
    assert not (questions(train) | questions(other_train)) & (questions(test) | questions(other_test))
    assert all(held_out(p) for p in test) and not any(held_out(p) for p in train)


@pytest.mark.parametrize(("value", "text"), [(Fraction(5), "5"), (Fraction(-7, 4), "-1.75"),
                                             (Fraction(123456789012, 1000), "123456789.012")])
def test_format_exact(value, text):
    assert format_exact(value) == text
    with pytest.raises(ValueError, match="terminating"):
        format_exact(Fraction(1, 3))


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize("mode", ["request", "code"])
def test_planner_transcript_masks_exactly_the_inserted_result(tokenizer, mode):
    protocol = build_protocol(mode, None, 2000, tokenizer)
    problem = next(p for p in PROBLEMS if p.decimal)
    example = sft.planner_example(tokenizer, protocol, "Solve.", problem, delegate=True)
    prompt = sft.encode(tokenizer, protocol.prompt_text(tokenizer, "Solve.", problem.question))
    assert example.input_ids[: len(prompt)] == prompt and not any(example.completion_mask[: len(prompt)])
    completion = example.input_ids[len(prompt):]
    mask = example.completion_mask[len(prompt):]
    masked = [t for t, m in zip(completion, mask, strict=True) if not m]
    rendered = ExecutionResult(status="ok", stdout=problem.answer + "\n").render()
    assert masked == sft.encode(tokenizer, protocol.render_result(rendered))  # the engine's insertion, on its own
    trained = tokenizer.decode([t for t, m in zip(completion, mask, strict=True) if m])
    call = problem.expression if mode == "request" else f"\n{sft.program(problem.expression)}\n"
    m = protocol.markers
    assert trained == f"{m.open}{call}{m.close}\\boxed{{{sft.printed(problem.expression)}}}{tokenizer.eos_token}"
    head = sft.planner_example(tokenizer, protocol, "Solve.", problem, delegate=False)
    assert tokenizer.decode(head.input_ids[len(prompt):]) == f"\\boxed{{{problem.answer}}}{tokenizer.eos_token}"
    assert all(head.completion_mask[len(prompt):])


def test_sft_trainer_labels_follow_the_mask(tokenizer, tmp_path):
    """What TRL's SFTTrainer makes of our examples: labels are -100 exactly where the mask is 0."""
    protocol = build_protocol("request", None, 2000, tokenizer)
    examples = sft.planner_examples(tokenizer, protocol, "Solve.", PROBLEMS[:8], delegate_share=0.5)
    examples += [sft.coder_example(tokenizer, "Write code.", p.expression) for p in PROBLEMS[:4]]
    examples += sft.copy_examples(tokenizer, ["the", "farm"], 4)
    dataset = Dataset.from_dict({"input_ids": [e.input_ids for e in examples],
                                 "completion_mask": [e.completion_mask for e in examples]})
    config = SFTConfig(output_dir=str(tmp_path), completion_only_loss=True, max_length=None, report_to="none",
                       use_cpu=True)
    trainer = SFTTrainer(model=build_model(tokenizer), args=config, train_dataset=dataset,
                         processing_class=tokenizer)
    for example, row in zip(examples, trainer.train_dataset, strict=True):
        assert row["input_ids"] == example.input_ids
        assert [label != -100 for label in row["labels"]] == [bool(m) for m in example.completion_mask]


def test_copy_examples_ask_for_the_numbers_or_the_expression_again(tokenizer):
    kinds = set()
    for example in sft.copy_examples(tokenizer, ["the", "farm", "holds"], 40, seed=1):
        text = tokenizer.decode(example.input_ids)
        target = tokenizer.decode([t for t, m in zip(example.input_ids, example.completion_mask, strict=True) if m])
        if "\n" not in text:
            source = text.split(" =")[0]
            assert target.split() == re.findall(r"\d+(?:\.\d+)?", source)
            kinds.add("numbers")
        else:
            assert text.startswith(target + "\n") and text.endswith(target)
            kinds.add("verbatim")
    assert kinds == {"numbers", "verbatim"}


def test_copy_examples_number_lengths_follow_the_digits_setting(tokenizer):
    for low, high in ((6, 12), (14, 20)):
        texts = [tokenizer.decode(e.input_ids) for e in sft.copy_examples(tokenizer, ["farm"], 60, seed=2,
                                                                          digits=(low, high))]
        lengths = {len(n.replace(".", "")) for t in texts for n in re.findall(r"\d[\d.]*\d", t)}
        assert min(lengths) >= low and max(lengths) <= high and max(lengths) - min(lengths) >= (high - low) // 2


def test_demo_overrides_are_checked_against_the_world_config():
    from delegate.training.toy.demo import WorldConfig, parse_overrides

    overrides = parse_overrides(["planner_epochs=5", "copy_digits=[6, 20]", "grpo_steps=80", "delegate_share=0.3"])
    assert overrides == {"planner_epochs": 5.0, "copy_digits": (6, 20), "grpo_steps": 80, "delegate_share": 0.3}
    assert WorldConfig(**overrides).copy_digits == (6, 20)
    for bad in ("planner_epochs=many", "copy_digits=[6]", "hidden_size=1.5", "no_such_field=1", "seed=3", "x"):
        with pytest.raises(ValueError, match="--set"):
            parse_overrides([bad])


def test_skill_scores_are_what_greedy_decoding_writes(tokenizer):
    """training.toy.skills scores a piece by teacher forcing; it must count a piece as right exactly when greedy
    decoding from the tokens before it writes it, also with examples of several lengths padded in one batch."""
    import torch

    from delegate.training.toy import skills

    model = build_model(tokenizer, seed=5).eval()
    examples, pieces = [], []
    for question in ("What is 12 + 345?", "A farm holds 987654321 bolts. How many bolts?", "7 *"):
        prompt = sft.encode(tokenizer, question)
        ids = torch.tensor([prompt])
        with torch.no_grad():
            written = model.generate(ids, attention_mask=torch.ones_like(ids), min_new_tokens=6, max_new_tokens=6,
                                     do_sample=False, pad_token_id=tokenizer.pad_token_id)
        piece = written[0, len(prompt):].tolist()
        wrong = [*piece[:3], (piece[3] + 1) % len(tokenizer), *piece[4:]]
        for continuation in (piece, wrong):
            examples.append(sft.Example(prompt + continuation, [0] * len(prompt) + [1] * len(continuation)))
            pieces.append(skills._segments(examples[-1].completion_mask))
    assert pieces[0] == [(len(sft.encode(tokenizer, "What is 12 + 345?")), len(examples[0].input_ids))]
    assert skills._exact(model, examples, pieces, batch_size=4) == [[True], [False]] * 3
