"""The trajectory viewer: a self-contained page, checked in Debian's headless Chromium (through chromedriver)."""

from __future__ import annotations

import shutil

import pytest
from transformers import AutoTokenizer

from delegate.executor import ExecutionResult
from delegate.planner.trajectory import ToolCall, Trajectory
from delegate.training import view
from delegate.training.records import record, write_records

HOSTILE = "</script><script>window.pwned = 1</script><!-- <img src=x onerror=window.pwned=2>"


def trajectory(tokenizer, question, parts, calls=(), answer=None):
    """A trajectory made of (text, sampled?) parts, tokenized part by part as the engine does."""
    t = Trajectory(question=question, prompt_ids=tokenizer.encode(question), answer=answer,
                   tool_calls=list(calls), finish_reason="answer" if answer else "eos")
    for text, sampled in parts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        t.completion_ids += ids
        t.env_mask += [int(sampled)] * len(ids)
        t.logprobs += [-0.1 if sampled else 0.0] * len(ids)
        t.text += text
    return t


@pytest.fixture
def records(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ok = ToolCall("6 times 7", "print(6 * 7)", ExecutionResult("ok", stdout="42\n"))
    bad = ToolCall("10 over 0", "print(10 / 0)", ExecutionResult("error", error="ZeroDivisionError: division by zero"))
    return [
        record(trajectory(tok, "What is 6 times 7?", [("<request>6 times 7</request>", True),
                                                      ("<result>\n42\n</result>\n", False), ("\\boxed{42}", True)],
                          [ok], "42"), tok, reference="42", source="easy", rewards={"correctness": 1.0}, step=3),
        record(trajectory(tok, "What is 10 over 0?", [("<request>10 over 0</request>", True),
                                                      ("<result>\nZeroDivisionError\n</result>\n", False),
                                                      ("\\boxed{0}", True)], [bad], "0"), tok, reference="10",
               source="hard"),
        record(trajectory(tok, f"A hostile question {HOSTILE}", [(HOSTILE, True)]), tok, reference="7",
               source="hard"),
    ]


def test_records_cut_the_completion_where_the_mask_changes(records):
    first = records[0]
    assert [s["trained"] for s in first["segments"]] == [True, False, True]
    assert first["segments"][1]["text"] == "<result>\n42\n</result>\n"
    assert sum(s["tokens"] for s in first["segments"]) == len(first["completion_ids"])
    assert [r["correct"] for r in records] == [True, False, False]


def test_the_page_embeds_every_record_and_no_raw_markup_from_them(tmp_path, records):
    write_records(tmp_path / "t.jsonl", records)
    page = view.main([str(tmp_path / "t.jsonl"), "-o", str(tmp_path / "report.html")]).read_text()
    assert page.count("</script>") == 2  # the page's own two script elements; none from the records
    assert "http://" not in page and "https://" not in page and "src=" not in page.split("<script")[0]


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    driver_path = shutil.which("chromedriver")
    if driver_path is None or shutil.which("chromium") is None:
        pytest.fail("Debian's chromium and chromium-driver are needed (make test installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1200,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    yield driver
    driver.quit()


def test_the_viewer_loads_in_chromium_without_errors_and_filters(tmp_path, records, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    write_records(tmp_path / "t.jsonl", records)
    page = view.main([str(tmp_path / "t.jsonl"), "-o", str(tmp_path / "report.html")])
    browser.get(page.resolve().as_uri())
    errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
    assert errors == []
    items = browser.find_elements(By.CSS_SELECTOR, "article.item")
    assert len(items) == 3 and browser.find_element(By.ID, "count").text == "3 of 3 shown"
    assert browser.execute_script("return window.pwned === undefined")  # hostile text stayed text
    assert HOSTILE in items[2].text
    inserted = items[0].find_elements(By.CSS_SELECTOR, ".seg.inserted")
    assert [s.text for s in inserted] == ["<result>\n42\n</result>"]
    assert "print(6 * 7)" in items[0].text and "correctness 1.000" in items[0].text
    browser.save_screenshot(str(tmp_path / "viewer.png"))

    Select(browser.find_element(By.ID, "filter-correct")).select_by_value("wrong")
    assert browser.find_element(By.ID, "count").text == "2 of 3 shown"
    browser.find_element(By.ID, "filter-error").click()
    shown = [i for i in browser.find_elements(By.CSS_SELECTOR, "article.item") if i.is_displayed()]
    assert len(shown) == 1 and "ZeroDivisionError: division by zero" in shown[0].text
    Select(browser.find_element(By.ID, "filter-correct")).select_by_value("all")
    browser.find_element(By.ID, "filter-error").click()
    Select(browser.find_element(By.ID, "filter-source")).select_by_value("easy")
    assert browser.find_element(By.ID, "count").text == "1 of 3 shown"
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
