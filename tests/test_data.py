"""Data loaders on small local files in each source's hub schema, and the seed's filters."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from delegate.training.data import drop_reason, load_problems


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_gsm8k_answer_is_what_follows_the_hashes(tmp_path):
    path = write_jsonl(tmp_path / "gsm8k.jsonl", [
        {"question": "Tom has 1,200 apples and buys 34 more. How many?", "answer": "1200 + 34 = 1234\n#### 1,234"},
        {"question": "What is 6 times 7?", "answer": "6*7=42\n#### 42"}])
    data = load_problems(str(path))  # the schema is detected from the columns
    assert data["answer"] == ["1234", "42"] and data["source"] == ["gsm8k", "gsm8k"]
    assert data["prompt"][1] == "What is 6 times 7?"


def test_math_levels_and_boxed_answer(tmp_path):
    rows = [{"problem": f"Problem at level {lv}", "level": f"Level {lv}", "type": "Intermediate Algebra",
             "solution": f"Work... so the answer is $\\boxed{{\\frac{{{lv}}}{{2}}}}$."} for lv in (1, 2, 3, 4, 5)]
    rows.append({"problem": "No level", "level": "Level ?", "type": "Algebra", "solution": "\\boxed{3}"})
    path = tmp_path / "math.parquet"
    pd.DataFrame(rows).to_parquet(path)
    data = load_problems(str(path), schema="math", levels=[3, 4, 5])
    assert data["prompt"] == ["Problem at level 3", "Problem at level 4", "Problem at level 5"]
    assert data["answer"][0] == "\\frac{3}{2}" and data["source"][0] == "math/intermediate_algebra"


def test_math_levels_need_a_level_column(tmp_path):
    path = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": "1+1?", "answer": "2"}])
    with pytest.raises(ValueError, match="no 'level' column"):
        load_problems(str(path), levels=[5])


def test_big_value_gsm_fields_are_detected(tmp_path):
    path = write_jsonl(tmp_path / "bvg.jsonl", [
        {"id": 1, "Problem": "A farm has 123456789012 hens and sells 2 of them. How many are left?",
         "final_answer": "123456789010"}])
    data = load_problems(str(path), schema="big-value-gsm")
    assert data["answer"] == ["123456789010"] and data["source"] == ["big-value-gsm"]
    assert data["prompt"][0].startswith("A farm has 123456789012")


def test_an_undetectable_schema_fails_listing_the_columns(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"text": "2 + 2?", "value": "4"}])
    with pytest.raises(ValueError, match="columns found: text, value"):
        load_problems(str(path), schema="big-value-gsm")


def test_a_file_lacking_the_named_schema_fails_clearly(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "2 + 2?", "answer": "4"}])
    with pytest.raises(ValueError, match="not in the gsm8k schema"):
        load_problems(str(path), schema="gsm8k")


def test_numinamath_uses_its_answer_column_and_drops_mcq_and_proofs(tmp_path):
    rows = [
        {"problem": "Compute $3^4$.", "solution": "So $\\boxed{81}$.", "answer": "81", "problem_type": "Algebra",
         "question_type": "math-word-problem", "source": "olympiads"},
        {"problem": "Which is largest? (A) 1 (B) 2 (C) 3 (D) 4", "solution": "\\boxed{D}", "answer": "D",
         "problem_type": "Algebra", "question_type": "MCQ", "source": "amc_aime"},
        {"problem": "Prove that $\\sqrt{2}$ is irrational.", "solution": "Suppose...", "answer": "proof",
         "problem_type": "Number Theory", "question_type": "proof", "source": "olympiads"},
    ]
    path = tmp_path / "numina.parquet"
    pd.DataFrame(rows).to_parquet(path)
    data = load_problems(str(path), schema="numinamath")
    assert data["answer"] == ["81"] and data["source"] == ["numina/olympiads"]
    assert "question_type" not in data.column_names
    assert len(load_problems(str(path), schema="numinamath", filters=False)) == 3


def test_numinamath_cot_takes_the_boxed_answer_of_the_solution(tmp_path):
    path = write_jsonl(tmp_path / "cot.jsonl", [
        {"source": "cn_k12", "problem": "Find $x$ if $2x = 10$.", "solution": "Divide: $x = \\boxed{5}$.",
         "messages": []}])
    assert load_problems(str(path), schema="numinamath")["answer"] == ["5"]


def test_openthoughts_keeps_math_rows_with_a_boxed_ground_truth(tmp_path):
    rows = [{"problem": "What is $7 \\cdot 8$?", "ground_truth_solution": "It is $\\boxed{56}$.", "domain": "math",
             "source": "numina_math", "deepseek_reasoning": "...", "deepseek_solution": "56"},
            {"problem": "Write a sort.", "ground_truth_solution": "def sort(x): ...", "domain": "code",
             "source": "apps", "deepseek_reasoning": "...", "deepseek_solution": "..."},
            {"problem": "Describe a group.", "ground_truth_solution": "A group is a set...", "domain": "math",
             "source": "numina_math", "deepseek_reasoning": "...", "deepseek_solution": "..."}]
    path = write_jsonl(tmp_path / "ot.jsonl", rows)
    data = load_problems(str(path))  # detected: problem + ground_truth_solution
    assert data["prompt"] == ["What is $7 \\cdot 8$?"] and data["answer"] == ["56"]
    assert data["source"] == ["openthoughts/numina_math"]


def test_a_folder_in_hub_layout_loads_through_the_hub_path(tmp_path):
    repo = tmp_path / "gsm8k-clone"
    (repo / "data").mkdir(parents=True)
    pd.DataFrame([{"question": "What is 2 + 3?", "answer": "2+3=5\n#### 5"}]).to_parquet(
        repo / "data" / "test-00000-of-00001.parquet")
    data = load_problems(str(repo), schema="gsm8k", split="test")
    assert data["answer"] == ["5"] and data["source"] == ["gsm8k"]


def test_a_name_that_is_neither_file_nor_hub_id_is_refused():
    with pytest.raises(ValueError, match="known sources: gsm8k"):
        load_problems("gsm9k")


def test_limit_and_plain_files_keep_their_source(tmp_path):
    path = write_jsonl(tmp_path / "held-out.jsonl", [{"prompt": f"{i} + 1?", "answer": str(i + 1)} for i in range(5)]
                       + [{"prompt": "x?", "answer": "1", "source": "toy"}])
    assert load_problems(str(path), limit=2)["source"] == ["held-out", "held-out"]
    assert load_problems(str(path))["source"][-1] == "toy"


@pytest.mark.parametrize("question, answer, reason", [
    ("What is 123456789 * 987654321?", "121932631112635269", None),
    ("Find $x$ such that $x^2 = 4$ and $x > 0$.", "2", None),
    ("Simplify $\\frac{6}{8}$.", "\\frac{3}{4}", None),
    ("Solve for the interval where $f$ is positive.", "(-\\infty, 3]", None),
    ("How long is the side?", "5 \\text{ cm}", None),
    ("Which of the following is prime?\n(A) 4\n(B) 6\n(C) 7\n(D) 9", "C", "multiple_choice"),
    ("The value is\nA. 1\nB. 2\nC. 3", "B", "multiple_choice"),
    ("Pick one.", "(B)", "multiple_choice"),
    ("Prove that there are infinitely many primes.", "2", "proof"),
    ("Show that $n^2 + n$ is even for every integer $n$.", "even", "proof"),
    ("Explain why the derivative of a constant is zero.", "0", "concept"),
    ("Describe the set of solutions.", "1", "concept"),
    ("Is the function increasing?", "The function is increasing on the whole interval", "no_verifiable_answer"),
    ("What is it?", "", "no_verifiable_answer"),
    ("What is it?", "x" * 100, "no_verifiable_answer"),
])
def test_drop_reason(question, answer, reason):
    assert drop_reason(question, answer) == reason


def test_drop_reason_reads_a_question_type():
    assert drop_reason("Compute the sum.", "4", "proof") == "proof"
    assert drop_reason("Compute the sum.", "4", "MCQ") == "multiple_choice"
