"""GRPO's `rollout_func`: the planner's rollout engine with the trainer's current policy.

TRL calls it with the prompts of this process (each one as many times as the group has samples) and the trainer.
It returns one row per prompt: `prompt_ids`, `completion_ids`, `logprobs`, `env_mask` (TRL multiplies it into the
loss mask, so inserted tool results are out of the loss, KL, entropy and token counts) and the fields the reward
functions read: `predicted`, `planner_text`, `tool_calls`, `finish_reason`, `violations`.

`planner.tools: false` is honoured as `Agent` honours it: no tool calls allowed, and the call marker banned from
generation in every tokenization (`BanText`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, get_args

import torch

from delegate.coder import Coder
from delegate.coder.config import resolve
from delegate.executor import Sandbox
from delegate.executor.result import STATUSES
from delegate.planner import EngineLimits, RolloutEngine, Trajectory, TransformersGeneration
from delegate.planner.ban import BanText
from delegate.planner.config import PlannerConfig
from delegate.planner.protocols import VIOLATIONS, Protocol
from delegate.planner.sync import RankSync, TorchDistributedSync
from delegate.planner.trajectory import FinishReason, segments


def question_of(prompt: Any) -> str:
    """The question in a dataset prompt: a string, or the last user message of a conversation."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise ValueError(f"a prompt with no user message: {prompt!r}")
    return users[-1]


class PlannerRollout:
    """`planner`: the recipe's planner section (system prompt, limits, sampling); the objects the run holds
    (protocol, tokenizer, sandbox, coder); `logits_processors` reach the planner's generation (tests script
    tool calls with them; the list is read when generation is built, so items added later still count). With
    `planner.tools: false` no call is allowed and `ban` keeps the call marker out of generation."""

    def __init__(self, planner: PlannerConfig, protocol: Protocol, tokenizer: Any, sandbox: Sandbox,
                 coder: Coder | None, logits_processors: list[Any] | None = None) -> None:
        self.protocol = protocol
        self.tokenizer = tokenizer
        self.system_prompt = resolve(planner.prompt_file).read_text()
        self.sandbox = sandbox
        self.coder = coder
        self.tools = planner.tools
        self.limits = EngineLimits(planner.max_completion_tokens, planner.max_tool_calls if planner.tools else 0,
                                   planner.max_result_chars, planner.stop_at_answer)
        self.tool_chunks = planner.tool_chunks
        self.logits_processors = logits_processors  # the caller's list, read at each generation's construction
        self.ban = None if planner.tools else BanText(tokenizer, protocol.markers.open)
        self.sampling = dict(temperature=planner.temperature, top_p=planner.top_p, batch_size=planner.batch_size,
                             cache_implementation=planner.cache_implementation, reuse_cache=planner.reuse_cache)
        self.cuda_graph = planner.cuda_graph
        self._graph: Any = None  # the graphed planner decoder: its captured steps serve every training step
        self.last: list[Trajectory] = []  # the latest batch, for logging and the trainer's samples
        self.rounds = self.idle_rounds = 0  # of the latest batch: generation rounds, and those this rank sat out
        self.seconds: dict[str, float] = {}  # of the latest batch, this process: wall time per engine phase

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, list[Any]]:
        from trl.models import unwrap_model_for_generation

        questions = [question_of(p) for p in prompts]
        sync = self.rank_sync(trainer)
        if getattr(trainer.args, "use_vllm", False):
            self.last = self.run_vllm(trainer, questions, sync)
            return self._finish(trainer, "train" if trainer.model.training else "eval")
        gather = trainer.args.ds3_gather_for_generation
        with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator,
                                         gather_deepspeed3_params=gather,
                                         gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs
                                         ) as model, torch.no_grad():
            was_training = model.training
            model.eval()
            try:
                # ZeRO-3 without gathered weights, and FSDP (its forward all-gathers each layer's shards): every
                # forward pass is a collective, so ranks generate in step.
                sharded = (zero_stage(trainer) == 3 and not gather) or is_fsdp(trainer)
                lockstep = sync if sharded else None
                self.last = self.run(model, questions, sync, lockstep)
            finally:
                model.train(was_training)
        return self._finish(trainer, "train" if was_training else "eval")

    @staticmethod
    def rank_sync(trainer: Any) -> RankSync | None:
        """With several processes: the collective that keeps every rank making the same generation rounds."""
        accelerator = trainer.accelerator
        return TorchDistributedSync(accelerator.device) if accelerator.num_processes > 1 else None

    def run_vllm(self, trainer: Any, questions: list[str], sync: RankSync | None = None) -> list[Trajectory]:
        """Generation on TRL's vLLM engine: colocated (each rank drives its own `vllm.LLM`) or a server (prompts
        gathered to the main process; `training.vllm_server`). TRL pushes the current weights before calling us.
        Not run on our machines: vLLM is too large for them; this follows vLLM's and TRL's documented APIs."""
        from delegate.planner.vllm_generation import VLLMGeneration
        from delegate.training.vllm_server import ServerGeneration

        if not self.tools:
            raise NotImplementedError("planner.tools: false with vLLM in training: the call marker must be banned in "
                                      "every tokenization, which needs the vLLM engine built with "
                                      "planner.vllm_ban.BanTextLogitsProcessor, and TRL builds it; train without "
                                      "tools on the transformers backend")
        vllm = trainer.vllm_generation
        if getattr(vllm, "enable_sleep_mode", False):
            raise NotImplementedError("vllm_enable_sleep_mode with Delegate's rollouts: turn it off for now")
        temperature, top_p = self.sampling["temperature"], self.sampling["top_p"]
        if vllm.mode == "server":
            eos = ending_ids(trainer, self.tokenizer)
            return self._roll(ServerGeneration(vllm.vllm_client, trainer.accelerator, eos, temperature, top_p),
                              questions, sync)
        return self._roll(VLLMGeneration(vllm.llm, temperature, top_p), questions, sync)

    def _finish(self, trainer: Any, mode: str) -> dict[str, list[Any]]:
        counts = rollout_counts(self.last, self.coder)
        accelerator = trainer.accelerator
        if accelerator.num_processes > 1:  # every process's rollouts, as TRL gathers its own metrics
            local = torch.tensor([*counts.values(), self.rounds, self.idle_rounds], dtype=torch.float64,
                                 device=accelerator.device)
            everything = accelerator.gather(local.unsqueeze(0))
            summed = everything.sum(0).tolist()
            counts = dict(zip(counts, summed[: len(counts)], strict=True))
            trainer._metrics[mode]["sync/rounds"].append(everything[:, -2].max().item())
            trainer._metrics[mode]["sync/idle_rounds_max"].append(everything[:, -1].max().item())
        for name, value in metrics_from_counts(counts, self.coder is not None).items():
            trainer._metrics[mode][name].append(value)
        for phase, seconds in self.seconds.items():  # where this process's rollout time went
            trainer._metrics[mode][f"time/rollout_{phase}"].append(seconds)
        eos_ids = list(getattr(trainer, "eos_token_ids", None) or [self.tokenizer.eos_token_id])
        return to_trl(self.last, eos_ids, self.tokenizer.pad_token_id, self.tokenizer)

    def processors(self) -> list[Any]:
        """The planner's logits processors: the caller's, then the no-tools ban."""
        return [*(self.logits_processors or []), *([self.ban] if self.ban is not None else [])]

    def run(self, model: Any, questions: list[str], sync: RankSync | None = None,
            lockstep: RankSync | None = None) -> list[Trajectory]:
        # Ranks that step together keep `generate`'s synced calls; on a CPU there is no graph to replay.
        if self.cuda_graph and lockstep is None and model.device.type == "cuda":
            return self._roll(self.graph_generation(model), questions, sync)
        return self._roll(TransformersGeneration(model, self.tokenizer, **self.sampling,
                                                 logits_processors=self.processors(), sync=lockstep), questions, sync)

    def graph_generation(self, model: Any) -> Any:
        """One graphed decoder per model, kept across steps (the optimizer updates the weights it reads in place)."""
        from delegate.planner.graph_generation import GraphGeneration

        if self._graph is None or self._graph.model is not model:
            s = self.sampling
            self._graph = GraphGeneration(model, self.tokenizer, s["temperature"], s["top_p"], s["batch_size"],
                                          self.processors(), reuse_cache=s["reuse_cache"])
        return self._graph

    def _roll(self, generator: Any, questions: list[str], sync: RankSync | None = None) -> list[Trajectory]:
        engine = RolloutEngine(self.protocol, generator, self.tokenizer, self.sandbox, self.coder, self.limits,
                               sync, self.tool_chunks)
        trajectories = engine.run(questions, [engine.prompt_ids(self.system_prompt, q) for q in questions])
        self.rounds, self.idle_rounds = engine.rounds, engine.idle_rounds
        self.seconds = dict(engine.seconds)
        return trajectories


def ending_ids(trainer: Any, tokenizer: Any) -> set[int]:
    """Every id that ends a reply: the trainer's (the model's generation config's: Qwen's `<|endoftext|>` as well
    as `<|im_end|>`) and the tokenizer's."""
    return {*(getattr(trainer, "eos_token_ids", None) or []), tokenizer.eos_token_id} - {None}


def is_fsdp(trainer: Any) -> bool:
    from accelerate.utils import DistributedType

    return trainer.accelerator.distributed_type == DistributedType.FSDP


def zero_stage(trainer: Any) -> int | None:
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return getattr(plugin, "zero_stage", None) if plugin is not None else None


FINISH_REASONS: tuple[str, ...] = get_args(FinishReason)
ENGINE_VIOLATIONS = tuple(VIOLATIONS)


def rollout_counts(trajectories: list[Trajectory], coder: Coder | None) -> dict[str, float]:
    """Sums over this process's rollouts, under keys that are the same on every process (so they can be summed
    across processes in one collective)."""
    calls = [call for t in trajectories for call in t.tool_calls]
    statuses = Counter(call.result.status for call in calls)
    violations = Counter(v if v in ENGINE_VIOLATIONS else "other" for t in trajectories for v in t.violations)
    finishes = Counter(t.finish_reason for t in trajectories)
    counts = {"rollouts": len(trajectories), "calls": len(calls), "rounds": sum(t.rounds for t in trajectories),
              "inserted": sum(t.inserted_tokens for t in trajectories),
              "tokens": sum(len(t.env_mask) for t in trajectories),
              "answered": sum(t.answer is not None for t in trajectories),
              "coder_requests": coder.stats.requests if coder is not None else 0,
              "coder_served": coder.stats.cache_hits + coder.stats.deduplicated if coder is not None else 0}
    counts |= {f"status_{s}": statuses[s] for s in STATUSES}
    counts |= {f"format_{v}": violations[v] for v in (*ENGINE_VIOLATIONS, "other")}
    counts |= {f"finish_{r}": finishes[r] for r in FINISH_REASONS}
    return {key: float(value) for key, value in counts.items()}


def metrics_from_counts(c: dict[str, float], has_coder: bool) -> dict[str, float]:
    """What TRL does not log: tool use, tool errors by executor status, format violations by kind, rounds, the
    share of inserted tokens, and the coder's cache hit rate (so far), from `rollout_counts` (summed over
    processes)."""
    n = max(c["rollouts"], 1.0)
    metrics = {
        "tools/calls_per_rollout": c["calls"] / n,
        "tools/error_rate": (c["calls"] - c["status_ok"]) / c["calls"] if c["calls"] else 0.0,
        "rollout/mean_rounds": c["rounds"] / n,
        "rollout/inserted_token_frac": c["inserted"] / c["tokens"] if c["tokens"] else 0.0,
        "rollout/answered": c["answered"] / n,
    }
    metrics |= {f"tools/status_{s}": c[f"status_{s}"] / n for s in STATUSES if c[f"status_{s}"]}
    metrics |= {f"format/{v}": c[f"format_{v}"] / n for v in (*ENGINE_VIOLATIONS, "other") if c[f"format_{v}"]}
    metrics |= {f"finish/{r}": c[f"finish_{r}"] / n for r in FINISH_REASONS if c[f"finish_{r}"]}
    if has_coder:
        metrics["coder/cache_hit_rate"] = c["coder_served"] / c["coder_requests"] if c["coder_requests"] else 0.0
    return metrics


# What TRL must see, by finish reason. TRL calls a completion truncated when its last token is not one of its EOS
# (or pad) ids, and with `mask_truncated_completions` drops it from the loss. Only a rollout that ran out of tokens
# is truncated. One that ended at its answer, or that the engine stopped for a format violation or at the tool
# limit, ended: it keeps its reward in the loss (a penalised rollout must stay there to be discouraged), so it
# gets an EOS appended as an environment token (masked, log-probability 0) unless it already ends in one.
TRUNCATED_FINISHES = frozenset({"length"})


def planner_text(trajectory: Trajectory, tokenizer: Any) -> str:
    """The completion's text without what the environment inserted: each run of planner-sampled tokens decoded
    on its own (`planner.trajectory.segments`), never re-tokenized. The format reward grades this."""
    return "".join(run["text"] for run in segments(trajectory, tokenizer) if run["trained"])


def to_trl(trajectories: list[Trajectory], eos_ids: list[int], pad_id: int | None = None,
           tokenizer: Any = None) -> dict[str, list[Any]]:
    """TRL's rollout output (`TRUNCATED_FINISHES` says which rollouts stay truncated). `eos_ids`: the trainer's
    own (`GRPOTrainer.eos_token_ids`, from the model's generation config); the first is what is appended. With a
    `tokenizer`, each row also gets its `planner_text`."""
    ends, eos_id = {*eos_ids, pad_id} - {None}, eos_ids[0]
    keys = ("prompt_ids", "completion_ids", "logprobs", "env_mask", "predicted", "tool_calls", "finish_reason",
            "violations", *(("planner_text",) if tokenizer is not None else ()))
    out: dict[str, list[Any]] = {key: [] for key in keys}
    for t in trajectories:
        ended = t.finish_reason not in TRUNCATED_FINISHES and (not t.completion_ids
                                                               or t.completion_ids[-1] not in ends)
        out["prompt_ids"].append(list(t.prompt_ids))
        out["completion_ids"].append(t.completion_ids + [eos_id] * ended)
        out["logprobs"].append(t.logprobs + [0.0] * ended)
        out["env_mask"].append(t.env_mask + [0] * ended)
        out["predicted"].append(t.answer)
        out["tool_calls"].append([call.to_dict() for call in t.tool_calls])
        out["finish_reason"].append(t.finish_reason)
        out["violations"].append(list(t.violations))
        if tokenizer is not None:
            out["planner_text"].append(planner_text(t, tokenizer))
    return out
