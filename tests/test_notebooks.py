"""The notebooks run top to bottom (nbclient, a real Jupyter kernel) on a small toy world; git keeps them stripped."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from delegate.training.toy.demo import prepare

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_the_three_notebooks_are_there_and_stripped():
    assert [n.name for n in NOTEBOOKS] == ["evaluate_and_compare.ipynb", "quickstart.ipynb",
                                           "training_walkthrough.ipynb"]
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert code and all(not cell.outputs and cell.execution_count is None for cell in code), path.name


@pytest.fixture(scope="module")
def toy_world(tmp_path_factory):
    """Built once for the three notebooks, as their own first run would build it."""
    out = tmp_path_factory.mktemp("notebook-toy")
    prepare(out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, toy_world, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("DELEGATE_NOTEBOOK_TOY", str(toy_world))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()  # raises on any cell error
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    expected = {"quickstart": "answer:", "training_walkthrough": "inserted (masked):",
                "evaluate_and_compare": "accuracy"}
    assert expected[path.stem] in text
    if path.stem != "quickstart":  # the plots were drawn
        assert any("image/png" in o.get("data", {}) for o in outputs if o.output_type == "display_data")
