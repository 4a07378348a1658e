"""The `delegate` command: one entry point for what users do, and the one `--config`/`--set` parser they share.

    delegate fetch qwen2.5-coder-0.5b                     # a real small model into $DELEGATE_MODELS
    delegate solve --config RECIPE.yaml [--set F=V] [--seed N] [--show] "What is 123456789 * 987654321?"
    delegate eval --config RECIPE.yaml --data DATA [--set F=V] [--limit N]
    delegate train --config RECIPE.yaml [--set F=V] [--resume]      # also: accelerate launch training/grpo.py ...
    delegate view TRAJECTORIES.jsonl -o report.html
    delegate demo [--set FIELD=VALUE]                     # the toy world on CPU (what `make demo` runs)

Each subcommand is the `main(argv)` of the module that owns the job (`training.models`, `planner.solve`,
`training.evaluate`, `training.grpo`, `training.view`, `training.toy.demo`), so `python -m delegate.<module>` stays
a thin alias of the same parser. Those parsers, and the other commands that read a recipe (`training.curriculum`,
`training.worked`, `training.sft`, `bench.real_chat_speed`), take `--config` and `--set` from
`add_recipe_arguments` here, and read them through `load_config`: the overrides are applied by
`planner.config.apply_overrides` and checked by the recipe's own pydantic models, and a wrong field ends the command
with status 2 and one line naming it.

`delegate train` runs GRPO in this process, which is what `accelerate launch` starts in each of its processes too:
`accelerate launch -m delegate.cli train --config ...` and `accelerate launch training/grpo.py --config ...` are the
same run. This module imports nothing heavy until a subcommand is chosen, so `delegate --help` is immediate.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

# name -> (module, function, one line for `delegate --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "fetch": ("delegate.training.models", "fetch_main", "download, check and dequantize a real small model (once)"),
    "solve": ("delegate.planner.solve", "main", "solve one question with an agent recipe"),
    "eval": ("delegate.training.evaluate", "main",
             "evaluate a recipe on a data set (--compare two runs; --suite unseen: the generalization table)"),
    "train": ("delegate.training.grpo", "main", "GRPO training from a recipe (accelerate launch-able)"),
    "view": ("delegate.training.view", "main", "one self-contained HTML page from trajectory records"),
    "demo": ("delegate.training.toy.demo", "main", "the toy world end to end on CPU (what `make demo` runs)"),
}

SET_HELP = "override a recipe field, e.g. --set executor.isolation=none (repeatable; the value is read as YAML)"


def add_set_argument(parser: argparse.ArgumentParser, help: str = SET_HELP) -> None:
    """`--set FIELD=VALUE`, repeatable: the same flag in every command."""
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help=help)


def add_recipe_arguments(parser: argparse.ArgumentParser, *, required: bool = True,
                         config_help: str = "a recipe (YAML with planner, coder and executor sections)") -> None:
    """`--config RECIPE.yaml` and `--set`, read back with `load_config`."""
    parser.add_argument("--config", required=required, metavar="RECIPE.yaml", help=config_help)
    add_set_argument(parser)


def describe(exc: BaseException, *, config: str | None = None, overrides: Sequence[str] = ()) -> str:
    """One line for a recipe that cannot be loaded: which flag (`--config PATH` or the `--set` that named the
    field), the field's dotted name and pydantic's message; a missing file or bad YAML in the same one line."""
    from pydantic import ValidationError

    where = f"--config {config}" if config is not None else "--set"
    if isinstance(exc, ValidationError):
        errors = exc.errors()
        first = errors[0]
        field = ".".join(str(part) for part in first["loc"])
        for override in overrides:
            key = override.partition("=")[0].strip()
            if field and (key == field or field.startswith(key + ".") or key.startswith(field + ".")):
                where = f"--set {override}"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return f"{where}: {field or 'recipe'}: {first['msg']}{more}"
    if isinstance(exc, FileNotFoundError):
        return f"{where}: no such file"
    text = " ".join(str(exc).split())
    return text if text.startswith("--set") else f"{where}: {text}"


def load_config(parser: argparse.ArgumentParser, args: argparse.Namespace,
                loader: Callable[[str, Sequence[str]], T], *, extra: Sequence[str] = ()) -> T:
    """`loader(args.config, [*args.set, *extra])` (e.g. `AgentConfig.from_yaml`, `Recipe.from_yaml`); a recipe that
    cannot be loaded (a missing file, bad YAML, a wrong field or value) exits with status 2 and `describe`'s one
    line on stderr: it is the user's to fix, and a traceback would hide the field's name."""
    import yaml

    overrides = [*args.set, *extra]
    try:
        return loader(args.config, overrides)
    except (OSError, ValueError, yaml.YAMLError) as exc:  # pydantic's ValidationError is a ValueError
        parser.exit(2, f"{parser.prog}: error: {describe(exc, config=args.config, overrides=overrides)}\n")
    raise AssertionError("unreachable")  # parser.exit raises SystemExit


def setup_logging(level: int = logging.INFO, fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s") -> None:
    """The commands' one logging set-up (a no-op where the caller configured logging already)."""
    logging.basicConfig(level=level, format=fmt)


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name:{width}s}  {summary}" for name, (_, _, summary) in COMMANDS.items()]
    first, examples = __doc__.split("\n\n")[:2]
    return ("usage: delegate {" + ",".join(COMMANDS) + "} [--help] ...\n\n" + first + "\n\ncommands:\n"
            + "\n".join(lines) + "\n\nfor example:\n" + examples
            + "\n\n`delegate COMMAND --help` lists a command's arguments.\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch `delegate COMMAND ARGS...` to that command's `main(ARGS)`; its return value becomes the exit
    status where it is an int (0 otherwise)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        sys.stderr.write(f"delegate: error: unknown command {name!r} (choose from {', '.join(COMMANDS)})\n")
        return 2
    module, function, _ = COMMANDS[name]
    if name == "eval" and any(arg.partition("=")[0] == "--suite" for arg in rest):  # the generalization table
        module, function, name = "delegate.training.generalization", "main", "eval --suite"
    entry: Callable[..., Any] = getattr(importlib.import_module(module), function)
    result = entry(rest, prog=f"delegate {name}")
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


if __name__ == "__main__":
    sys.exit(main())
