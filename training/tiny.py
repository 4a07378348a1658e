"""Tiny local stand-ins for Qwen2.5: a byte-level BPE tokenizer and Qwen2-shaped causal LMs, built from nothing.

No weights or tokenizers can be downloaded on our machines, so tests and the toy world use these. The tokenizer
matches what matters of Qwen2.5's: byte-level BPE, digits split one per token, ChatML special tokens and a
ChatML chat template with tool calls (Qwen2.5's template, with a neutral default system message).

```
python -m delegate.training.tiny OUT_DIR            # tokenizer + a random tiny model, loadable with from_pretrained
```
"""

from __future__ import annotations

import argparse
import itertools
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

CHAT_TEMPLATE = (Path(__file__).with_name("chatml_tools.jinja")).read_text()
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ADDED_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
_WORD_TEXT = (
    "the of and to a in is that for it as with was on be at by this had not are but from or have an they "
    "which one you were all we when there can more if out so what up about into than them only other new "
    "some could time these two may then do first any like now my such make over our even most after also "
    "did many before must through back years where much your way well down should because each just those "
    "how too little state good very long world still own see men work here both take while might great "
    "old year off come since against go came right used three himself few house use during without again "
    "place number total price each apples boxes shop sold bought costs dollars cents percent times sum "
    "product difference quotient remainder multiply divide add subtract compute calculate answer question "
    "result request code print import math value least common multiple greatest divisor square root power"
)
_WORDS = _WORD_TEXT.split()
_CODE = [
    "import math\nprint(math.lcm(38, 16))\n",
    "from fractions import Fraction\nprint(Fraction(3, 7) + Fraction(2, 5))\n",
    "from decimal import Decimal, getcontext\ngetcontext().prec = 50\nprint(Decimal('1.25') * Decimal('3.5'))\n",
    "import sympy as sp\nx = sp.Symbol('x')\nprint(sp.solve(x**2 - 5*x + 6, x))\n",
    "def f(n):\n    return n * (n + 1) // 2\n\nprint(f(123456789))\n",
    "result = 0\nfor i in range(10):\n    result += i ** 2\nprint(result)\n",
]


def _corpus(seed: int = 0, lines: int = 4000) -> Iterator[str]:
    rng = random.Random(seed)
    for _ in range(lines):
        words = rng.choices(_WORDS, k=rng.randint(5, 20))
        number = str(rng.randint(0, 10**rng.randint(1, 11)))
        yield " ".join([*words[:3], number, *words[3:]]).capitalize() + rng.choice([".", "?", "!", ":"])
        yield rng.choice(_CODE)
        yield (f"<request>{' '.join(rng.choices(_WORDS, k=6))} {number}</request>\n<result>\n{number}\n</result>\n"
               f"The answer is \\boxed{{{number}}}.")


def build_tokenizer(vocab_size: int = 1024, seed: int = 0, extra: Iterable[str] = ()):
    """A trained byte-level BPE tokenizer as a `PreTrainedTokenizerFast`, in a second or two. `extra` text joins
    the training corpus (the toy world adds its stories and prompts, so their words become single tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(itertools.chain(_corpus(seed), extra), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", additional_special_tokens=SPECIAL_TOKENS[1:],
                                        padding_side="left", clean_up_tokenization_spaces=False)
    tokenizer.add_tokens(ADDED_TOKENS)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(tokenizer, hidden_size: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                intermediate_size: int = 128, max_positions: int = 4096, init_std: float = 0.2, seed: int = 0):
    """A randomly initialised Qwen2-shaped causal LM sized to `tokenizer`.

    `init_std` is ten times Qwen's 0.02: at that scale a tiny random model's greedy output depends on its input
    (at 0.02 it prints the same newline for every prompt), which tests that compare outputs need.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=max_positions, tie_word_embeddings=True, initializer_range=init_std,
                         bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def build_tiny(out_dir: str | Path, **model_kwargs) -> Path:
    """Write a tokenizer and a random tiny model to `out_dir`; return it."""
    out = Path(out_dir)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, **model_kwargs)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    args = parser.parse_args()
    print(build_tiny(args.out_dir))


if __name__ == "__main__":
    main()
