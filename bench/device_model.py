"""Get a real model onto the lent GPU machine, which reaches no registry, in about a minute.

A device call carries at most 64 MiB of the working tree, but what a call writes outside the checkout (under
/root) stays while the machine is warm (30 s between calls). So the GGUF travels in pieces of under 60 MiB, one
piece a call, each call copying its piece to /root/delegate-gguf; the last call joins them, checks the pinned
hash and dequantizes with `python -m delegate.training.models fetch NAME --gguf ...` into $DELEGATE_MODELS there.

Here (the registry is reachable):
    python bench/device_model.py split qwen2.5-coder-0.5b          # .carry/gguf/NAME.partNN, and the calls to make
On the device, one call per piece, in quick succession (carry .carry/gguf/NAME.partNN):
    python3 bench/device_model.py receive .carry/gguf/NAME.partNN
Then, in the call that needs the model (wheels installed, PYTHONPATH set, see the device README):
    python3 bench/device_model.py build qwen2.5-coder-0.5b     # joins, checks the hash, dequantizes (once)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # `python bench/x.py`: the repository first on the path, in place of bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # (whose files would shadow installed packages)

PIECE_BYTES = 56 << 20
CARRY = Path(".carry/gguf")
RECEIVED = Path("/root/delegate-gguf")


def split(name: str) -> list[Path]:
    from delegate.training.models import MODELS, assemble, download

    model = MODELS[name]
    CARRY.mkdir(parents=True, exist_ok=True)
    for old in CARRY.glob(f"{name}.part*"):
        old.unlink()
    with tempfile.TemporaryDirectory() as work:
        gguf = Path(work) / f"{name}.gguf"
        assemble(model, download(model, Path(work)), gguf)
        pieces = []
        with gguf.open("rb") as file:
            while chunk := file.read(PIECE_BYTES):
                pieces.append(CARRY / f"{name}.part{len(pieces):02d}")
                pieces[-1].write_bytes(chunk)
    return pieces


def receive(piece: Path) -> None:
    RECEIVED.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(piece, RECEIVED / piece.name)
    print(f"received {piece.name}: {sum(p.stat().st_size for p in RECEIVED.iterdir())} bytes so far")


def build(name: str) -> Path:
    from delegate.training.models import fetch, model_dir

    if (model_dir(name) / "delegate-model.json").is_file():
        return model_dir(name)
    pieces = sorted(RECEIVED.glob(f"{name}.part*"))
    if not pieces:
        raise SystemExit(f"no pieces of {name} in {RECEIVED}: send them first (receive)")
    gguf = RECEIVED / f"{name}.gguf"
    with gguf.open("wb") as out:
        for piece in pieces:
            out.write(piece.read_bytes())
    return fetch(name, gguf_from=gguf)


def main() -> None:
    # training.models is imported by `split` and `build` only: `receive` runs before the wheels are installed
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("split").add_argument("name", help="a model of training.models, e.g. qwen2.5-coder-0.5b")
    sub.add_parser("receive").add_argument("piece", type=Path)
    sub.add_parser("build").add_argument("name", help="a model of training.models, e.g. qwen2.5-coder-0.5b")
    args = parser.parse_args()
    if args.command == "split":
        for piece in split(args.name):
            print(f"carry {piece}: python3 bench/device_model.py receive {piece}")
    elif args.command == "receive":
        receive(args.piece)
    else:
        print(build(args.name))


if __name__ == "__main__":
    main()
