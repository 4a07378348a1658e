"""The toy world end to end, on CPU: `delegate demo` or `python -m delegate.training.toy.demo` (`make demo` runs it).

1. Problems: big-number word problems, a training pool and a held-out split that shares none of them.
2. A tokenizer trained on the toy text; a coder and a planner per mode (Qwen2-shaped, about a million
   parameters each) warmed up with TRL's `SFTTrainer` (training.toy.sft).
3. The real pipeline, unchanged: the curriculum (`training.curriculum`), then `training/grpo.py` with
   `training/recipes/toy-<mode>.yaml`, and evaluation on the held-out split before and after.
4. A before/after table (printed, and in `<out>/results.md`), `<out>/results.json` and `<out>/curves.png`, and a
   table of each planner's skills before and after GRPO (training.toy.skills). `--sft-only` stops after SFT and
   the skills of its models.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from delegate.coder.config import PROJECT_ROOT, resolve
from delegate.training.toy import sft, skills
from delegate.training.toy.tasks import Problem, generate, split, write_jsonl

log = logging.getLogger("toy")
RECIPES = PROJECT_ROOT / "training" / "recipes"
DEFAULT_OUT = "runs/toy"  # the recipes' paths start with it; another --out rebases them


@dataclass(frozen=True)
class WorldConfig:
    out: Path = Path(DEFAULT_OUT)
    modes: tuple[str, ...] = ("request", "code")
    seed: int = 0
    sft_problems: int = 5000
    rl_problems: int = 256
    eval_problems: int = 200
    vocab_size: int = 2048
    hidden_size: int = 128
    layers: int = 4
    copy_examples: int = 28000  # copy pre-training of the base model that every toy model starts from
    copy_learning_rate: float = 1e-3
    copy_batch_size: int = 32
    copy_digits: tuple[int, int] = (6, 12)  # number lengths in the copy pre-training
    coder_epochs: float = 2.0
    coder_learning_rate: float = 2e-3  # at 1e-3 the coder miscopies an operator in a quarter of its programs
    planner_epochs: float = 4.0  # the planner's copying (story -> expression, result -> box) is the slow skill
    sft_learning_rate: float = 1e-3
    sft_batch_size: int = 16
    delegate_share: float = 0.4  # of the planner's SFT transcripts; the rest answer from the planner's head
    curriculum_samples: int = 4
    grpo_steps: int | None = None  # None: the recipe's max_steps
    grpo_batch_size: int | None = None  # None: the recipe's per_device_train_batch_size
    device: str = "cpu"  # "cuda" for the GPU-sized variant
    sft_only: bool = False  # stop after the SFT models and their skills (training.toy.skills): no GRPO


# The GPU-sized variant (--gpu): models of about six times the parameters, more data, larger batches.
GPU = dict(device="cuda", hidden_size=256, layers=6, copy_examples=64000, copy_batch_size=64, sft_problems=12000,
           sft_batch_size=64, sft_learning_rate=2e-3, planner_epochs=5.0, rl_problems=512, eval_problems=400,
           curriculum_samples=2, grpo_steps=50, grpo_batch_size=64)


@dataclass(frozen=True)
class Metrics:
    n: int
    accuracy: float
    accuracy_ci95: tuple[float, float]  # Wilson
    tool_call_rate: float
    calls_per_answer: float
    tool_error_rate: float


def evaluate(agent: Any, problems: list[Problem]) -> Metrics:
    """Held-out accuracy (exact, via the `correctness` reward), the share of problems with a tool call, calls per
    problem, and the share of calls that failed (coder or executor)."""
    from delegate.training.rewards import answers_match
    from delegate.training.stats import wilson

    solutions = agent.solve_many([p.question for p in problems])
    correct = [s.answer is not None and answers_match(s.answer, p.answer) for s, p in zip(solutions, problems,
                                                                                            strict=True)]
    calls = [c for s in solutions for c in s.trajectory.tool_calls]
    failed = [c for c in calls if c.result.status != "ok" or c.coder_failure]
    n = len(problems)
    accuracy = sum(correct) / n
    return Metrics(n, accuracy, wilson(sum(correct), n),
                   sum(bool(s.trajectory.tool_calls) for s in solutions) / n, len(calls) / n,
                   len(failed) / len(calls) if calls else 0.0)


def _rebase(value: str, out: Path) -> str:
    return str(out / value[len(DEFAULT_OUT) + 1:]) if value.startswith(DEFAULT_OUT + "/") else value


def load_recipe(mode: str, out: Path, **overrides: Any) -> dict[str, Any]:
    """`training/recipes/toy-<mode>.yaml` as a dict, its `runs/toy/...` paths moved under `out`."""
    recipe = yaml.safe_load((RECIPES / f"toy-{mode}.yaml").read_text())
    recipe["planner"]["model"] = _rebase(recipe["planner"]["model"], out)
    recipe["coder"]["model"] = _rebase(recipe["coder"]["model"], out)
    recipe["data"]["path"] = _rebase(recipe["data"]["path"], out)
    recipe["grpo"]["output_dir"] = _rebase(recipe["grpo"]["output_dir"], out)
    for section, values in overrides.items():
        recipe[section] = {**recipe[section], **values}
    return recipe


class World:
    def __init__(self, config: WorldConfig) -> None:
        self.config = config
        self.out = config.out
        self.started = time.monotonic()
        self.stages: list[tuple[float, str]] = []  # (seconds since start, what began), saved in results.json
        pool = generate(int(1.4 * (config.sft_problems + config.rl_problems)) + 6 * config.eval_problems,
                        seed=config.seed)  # 20 % of it is held out
        train, test = split(pool)
        self.sft_problems = train[: config.sft_problems]
        self.rl_problems = train[config.sft_problems: config.sft_problems + config.rl_problems]
        self.test = test[: config.eval_problems]
        if len(self.rl_problems) < config.rl_problems or len(self.test) < config.eval_problems:
            raise ValueError("the problem pool is too small for the requested splits")

    def stage(self, what: str) -> None:
        self.stages.append((round(time.monotonic() - self.started, 1), what))
        log.info("[%5.0fs] %s", *self.stages[-1])

    def build_tokenizer(self) -> Any:
        from delegate.training.tiny import build_tokenizer

        prompts = [resolve(f"prompts/toy_{name}.txt").read_text()
                   for name in ("planner_request", "planner_code", "coder")]
        text = [p.question for p in self.sft_problems] + [sft.program(p.expression) for p in self.sft_problems]
        return build_tokenizer(self.config.vocab_size, seed=self.config.seed,
                               extra=text + prompts * 50 + ["system user assistant"] * 200)

    def train_base(self, tokenizer: Any) -> Path:
        """A random Qwen2-shaped model pre-trained to copy numbers (`sft.copy_examples`)."""
        from delegate.training.tiny import build_model

        c = self.config
        self.stage(f"copy pre-training of the base model on {c.copy_examples} short examples")
        model = build_model(tokenizer, hidden_size=c.hidden_size, layers=c.layers, heads=4, kv_heads=2,
                            intermediate_size=3 * c.hidden_size, init_std=0.02, seed=c.seed)
        words = sorted({w for p in self.sft_problems for w in p.question.split() if w.isalpha()})
        examples = sft.copy_examples(tokenizer, words, c.copy_examples, seed=c.seed, digits=c.copy_digits)
        self.base = sft.train(model, tokenizer, examples, self.out / "base", epochs=1.0,
                              learning_rate=c.copy_learning_rate, batch_size=c.copy_batch_size, seed=c.seed,
                              use_cpu=c.device == "cpu")
        return self.base

    def new_model(self) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.base)

    def train_coder(self, tokenizer: Any) -> Path:
        self.stage(f"SFT of the coder on {len(self.sft_problems)} (request -> program) pairs")
        prompt = resolve("prompts/toy_coder.txt").read_text()
        examples = [sft.coder_example(tokenizer, prompt, p.expression) for p in self.sft_problems]
        c = self.config
        return sft.train(self.new_model(), tokenizer, examples, self.out / "coder",
                         epochs=c.coder_epochs, learning_rate=c.coder_learning_rate, batch_size=c.sft_batch_size,
                         use_cpu=c.device == "cpu")

    def train_planner(self, tokenizer: Any, mode: str, recipe: dict[str, Any]) -> Path:
        from delegate.planner.protocols import build_protocol

        self.stage(f"SFT of the {mode} planner ({self.config.delegate_share:.0%} of transcripts delegate)")
        protocol = build_protocol(mode, sft.toy_markers(mode), 2000, tokenizer)
        prompt = resolve(recipe["planner"]["prompt"]).read_text()
        examples = sft.planner_examples(tokenizer, protocol, prompt, self.sft_problems, self.config.delegate_share,
                                        seed=self.config.seed)
        c = self.config
        return sft.train(self.new_model(), tokenizer, examples, recipe["planner"]["model"],
                         epochs=c.planner_epochs, learning_rate=c.sft_learning_rate, batch_size=c.sft_batch_size,
                         use_cpu=c.device == "cpu")

    def evaluate_agent(self, recipe: dict[str, Any], adapter: str | None, sandbox: Any) -> dict[str, Metrics]:
        """Sampled at the training temperature, and greedy."""
        from delegate.planner import Agent, AgentConfig

        results = {}
        for name, temperature in (("sampled", recipe["planner"]["temperature"]), ("greedy", 0.0)):
            planner = {**recipe["planner"], "adapter": adapter, "temperature": temperature}
            config = AgentConfig.model_validate({"planner": planner, "coder": recipe["coder"],
                                                 "executor": recipe["executor"]})
            with Agent(config, sandbox=sandbox) as agent:
                results[name] = evaluate(agent, self.test)
        return results

    def measure_skills(self, mode: str, prompt: str, adapter: str | None = None) -> skills.Skills:
        measured = skills.measure(self.out, mode, self.test, adapter, prompt)
        self.stage(f"{mode}: skills of the {'trained' if adapter else 'SFT'} planner {measured}")
        return measured

    def run_mode(self, mode: str, tokenizer: Any, sandbox: Any) -> dict[str, Any]:
        from delegate.training import curriculum, grpo
        from delegate.training.recipe import Recipe

        c = self.config
        fields: dict[str, Any] = {"seed": c.seed}  # the world's seed drives GRPO's too
        fields |= {"max_steps": c.grpo_steps} if c.grpo_steps else {}
        fields |= {"per_device_train_batch_size": c.grpo_batch_size} if c.grpo_batch_size else {}
        overrides: dict[str, dict[str, Any]] = {"grpo": fields}
        if c.device != "cpu":
            overrides |= {"planner": {"device": c.device}, "coder": {"device": c.device},
                          "grpo": {**fields, "use_cpu": False}}
        recipe = load_recipe(mode, self.out, **overrides)
        self.train_planner(tokenizer, mode, recipe)
        skills_before = self.measure_skills(mode, recipe["planner"]["prompt"])
        if self.config.sft_only:
            return {"skills": {"before": skills_before}}
        self.stage(f"{mode}: evaluating the SFT planner on {len(self.test)} held-out problems")
        before = self.evaluate_agent(recipe, None, sandbox)
        self.stage(f"{mode}: before GRPO {before['sampled']}")

        problems = write_jsonl(self.rl_problems, self.out / f"rl-problems-{mode}.jsonl")
        scoring = self.out / f"curriculum-input-{mode}.yaml"
        scoring.write_text(yaml.safe_dump({**recipe, "data": {"path": str(problems)}}))
        self.stage(f"{mode}: curriculum, {c.curriculum_samples} samples of {len(self.rl_problems)} problems")
        curriculum.main(["--config", str(scoring), "--out", recipe["data"]["path"],
                         "--samples", str(c.curriculum_samples)], sandbox=sandbox)

        self.stage(f"{mode}: GRPO, {recipe['grpo']['max_steps']} steps")
        run = grpo.build(Recipe.model_validate(recipe))
        try:
            grpo.train(run)
            history = run.trainer.state.log_history
        finally:
            run.close()
        self.stage(f"{mode}: evaluating the trained planner")
        after = self.evaluate_agent(recipe, recipe["grpo"]["output_dir"], sandbox)
        self.stage(f"{mode}: after GRPO {after['sampled']}")
        skills_after = self.measure_skills(mode, recipe["planner"]["prompt"], recipe["grpo"]["output_dir"])
        return {"before": before, "after": after, "history": history,
                "skills": {"before": skills_before, "after": skills_after}}


# A world small enough for the notebooks and their tests (a minute or two on 2 cores). Its models copy poorly:
# they show the machinery, not the learning that the full demo measures.
QUICK = dict(sft_problems=800, rl_problems=64, eval_problems=40, vocab_size=1024, hidden_size=128, layers=4,
             copy_examples=2000, coder_epochs=2.0, planner_epochs=3.0, delegate_share=0.7, curriculum_samples=2)


def prepare(out: Path, quick: bool = True, seed: int = 0) -> dict[str, Path]:
    """The toy world's models without GRPO (tokenizer, coder, and an SFT planner per mode) and its problem files,
    under `out`; reused when already there. Returns the paths the notebooks use: `recipe-request`,
    `recipe-code` (training recipes rebased to `out`), `held-out` and `rl-problems` (JSONL)."""
    out = Path(out)
    config = replace(WorldConfig(out=out, seed=seed), **(QUICK if quick else {}))
    paths = {f"recipe-{mode}": out / f"toy-{mode}.yaml" for mode in config.modes}
    paths |= {"held-out": out / "held-out.jsonl", "rl-problems": out / "rl-problems.jsonl"}
    if all(p.exists() for p in paths.values()):
        return paths
    world = World(config)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(world.test, paths["held-out"])
    write_jsonl(world.rl_problems, paths["rl-problems"])
    tokenizer = world.build_tokenizer()
    world.train_base(tokenizer)
    world.train_coder(tokenizer)
    for mode in config.modes:
        recipe = load_recipe(mode, out, data={"path": str(paths["rl-problems"])})
        world.train_planner(tokenizer, mode, recipe)
        paths[f"recipe-{mode}"].write_text(yaml.safe_dump(recipe, sort_keys=False))
    world.stage(f"toy world ready in {out}")
    return paths


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| mode | decoding | policy | accuracy | tool-call rate | calls/answer | tool error rate |",
             "|---|---|---|---|---|---|---|"]
    for mode, result in results.items():
        for decoding in ("sampled", "greedy"):
            for policy in ("before", "after"):
                m = result[policy][decoding]
                lines.append(f"| {mode} | {decoding} | {'SFT' if policy == 'before' else 'SFT + GRPO'} | "
                             f"{m.accuracy:.1%} [{m.accuracy_ci95[0]:.1%}, {m.accuracy_ci95[1]:.1%}] | "
                             f"{m.tool_call_rate:.1%} | "
                             f"{m.calls_per_answer:.2f} | {m.tool_error_rate:.1%} |")
    return "\n".join(lines)


def skills_table(results: dict[str, dict[str, Any]]) -> str:
    """Each planner's skills (training.toy.skills), greedy, teacher-forced, on the held-out problems."""
    lines = ["| mode | policy | call written exactly | coder's program exact | result copied to the box | "
             f"same, results of {skills.LONG_RESULT}+ digits | product |", "|---|---|---|---|---|---|---|"]
    for mode, result in results.items():
        for policy, s in result["skills"].items():
            coder = "-" if s.coder is None else f"{s.coder:.1%}"
            lines.append(f"| {mode} | {'SFT' if policy == 'before' else 'SFT + GRPO'} | {s.call:.1%} | {coder} | "
                         f"{s.box:.1%} | {s.box_long:.1%} | {s.pipeline:.1%} |")
    return "\n".join(lines)


def plot(results: dict[str, dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("reward", "reward (weighted sum)"),
            ("rewards/correctness/mean", "correctness (training samples, easiest first)"),
            ("tools/calls_per_rollout", "tool calls per rollout")]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6))
    for index, (mode, result) in enumerate(results.items()):
        color = f"C{index}"
        for ax, (key, title) in zip(axes, keys, strict=True):
            points = [(e["step"], e[key]) for e in result["history"] if key in e]
            if points:
                ax.plot(*zip(*points, strict=True), marker=".", color=color, label=mode)
            ax.set_title(title)
            ax.set_xlabel("GRPO step")
        for policy, style in (("before", ":"), ("after", "--")):
            axes[1].axhline(result[policy]["sampled"].accuracy, color=color, linestyle=style, linewidth=1.2,
                            label=f"{mode}: held-out accuracy {policy}")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(config: WorldConfig) -> dict[str, Any]:
    from delegate.executor import Sandbox, SandboxConfig

    world = World(config)
    config.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(world.test, config.out / "held-out.jsonl")
    with Sandbox(SandboxConfig(timeout_s=5.0)) as sandbox:
        world.stage("tokenizer")
        tokenizer = world.build_tokenizer()
        world.train_base(tokenizer)
        if "request" in config.modes:
            world.train_coder(tokenizer)
        results = {mode: world.run_mode(mode, tokenizer, sandbox) for mode in config.modes}
    report = skills_table(results) if config.sft_only else table(results) + "\n\n" + skills_table(results)
    (config.out / "results.md").write_text(report + "\n")
    summary: dict[str, Any] = {mode: {key: ({p: asdict(m) for p, m in value.items()} if key != "history" else value)
                                      for key, value in r.items()} for mode, r in results.items()}
    summary["config"] = {**asdict(config), "out": str(config.out)}
    summary["seconds"] = time.monotonic() - world.started
    summary["stages"] = world.stages
    (config.out / "results.json").write_text(json.dumps(summary, indent=2))
    if not config.sft_only:
        plot(results, config.out / "curves.png")
    world.stage(f"done: {config.out / 'results.md'}")
    print(report)
    return results


def main(argv: list[str] | None = None, prog: str | None = None) -> dict[str, Any]:
    from delegate.cli import add_set_argument, setup_logging

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT))
    parser.add_argument("--modes", nargs="+", choices=["request", "code"], default=["request", "code"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gpu", action="store_true", help="the GPU-sized variant (larger models, more steps)")
    parser.add_argument("--sft-only", action="store_true", help="stop after SFT and the skills of its models")
    parser.add_argument("--device", help="where the models train and run (default: cpu; cuda with --gpu)")
    add_set_argument(parser, help="override a WorldConfig field, e.g. --set planner_epochs=5 "
                                  "--set copy_digits=[6,20] (repeatable; the value is read as YAML)")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.set)
    except ValueError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    setup_logging()
    config = WorldConfig(out=args.out, modes=tuple(args.modes), seed=args.seed, sft_only=args.sft_only)
    if args.gpu:
        config = replace(config, **GPU)
    config = replace(config, **overrides, **({"device": args.device} if args.device else {}))
    return run(config)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`FIELD=VALUE` pairs read by the commands' shared `--set` reading (`planner.config.apply_overrides`), then
    checked against WorldConfig's fields and types by pydantic, as a recipe's fields are. A ValueError names the
    `--set` item and the field in one line."""
    from pydantic import TypeAdapter, ValidationError

    from delegate.planner.config import apply_overrides

    own_flags = ("out", "modes", "seed", "device", "sft_only")
    settable = [f.name for f in dataclasses.fields(WorldConfig) if f.name not in own_flags]
    overrides: dict[str, Any] = {}
    adapter = TypeAdapter(WorldConfig)
    for item in items:
        values = apply_overrides({}, [item])
        name = next(iter(values))
        if name in own_flags:
            raise ValueError(f"--set {item}: {name} has its own flag, --{name.replace('_', '-')}")
        if name not in settable:
            raise ValueError(f"--set {item}: {name} is not a WorldConfig field (one of {', '.join(settable)})")
        default = getattr(WorldConfig(), name)
        try:
            value = getattr(adapter.validate_python(values), name)
        except ValidationError as exc:
            raise ValueError(f"--set {item}: {name}: {exc.errors()[0]['msg']} (like {default!r})") from None
        if isinstance(values[name], bool) != isinstance(default, bool):  # pydantic's lax mode reads true as 1
            raise ValueError(f"--set {item}: {name} takes a value like {default!r}")
        overrides[name] = value
    return overrides


if __name__ == "__main__":
    main()
