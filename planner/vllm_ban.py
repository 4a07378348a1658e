"""The no-tools ban inside vLLM: `BanText` as a vLLM logits processor.

vLLM's own `SamplingParams(bad_words=...)` bans only the tokenization vLLM gives the marker, which a real BPE
sidesteps (`<`, `request`, `>The`); this bans every tokenization, as the transformers backend does. Written against
vLLM's documented per-request adapter (`vllm.v1.sample.logits_processor.AdapterLogitsProcessor`, in vLLM 0.22 to
0.31, the range pyproject allows; the V1 model runner): the class is given to `LLM(logits_processors=[...])` and a
request opts in with `SamplingParams(extra_args={BAN_ARG: text, PROMPT_TAIL_ARG: ids})`. Not run on our machines
(vLLM is too large for them); the per-request function it returns (`BanText.for_request`) is tested on the real
Qwen2.5 tokenizer.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoTokenizer
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from delegate.planner.ban import BAN_ARG, PROMPT_TAIL_ARG, BanText


class BanTextLogitsProcessor(AdapterLogitsProcessor):
    """One per engine; builds each banned text's tables once, from the engine's own tokenizer."""

    def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool) -> None:
        super().__init__(vllm_config, device, is_pin_memory)
        model_config = vllm_config.model_config
        self.tokenizer = AutoTokenizer.from_pretrained(model_config.tokenizer,
                                                       trust_remote_code=model_config.trust_remote_code)
        self.bans: dict[str, BanText] = {}

    def is_argmax_invariant(self) -> bool:
        return False  # it removes tokens, greedy ones included

    def new_req_logits_processor(self, params: Any) -> Any:
        extra = params.extra_args or {}
        text = extra.get(BAN_ARG)
        if not text:
            return None
        if text not in self.bans:
            self.bans[text] = BanText(self.tokenizer, text)
        return self.bans[text].for_request(list(extra.get(PROMPT_TAIL_ARG, [])))
