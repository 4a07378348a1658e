"""The tiny-model fixture loads like a hub model and tokenizes like Qwen2.5 where it matters."""

from __future__ import annotations

from transformers import AutoModelForCausalLM, AutoTokenizer


def test_loads_with_auto_classes(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.model_type == "qwen2"
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)


def test_digits_are_one_token_each(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("x 9876543210 y")["input_ids"])
    digits = [t for t in tokens if any(ch.isdigit() for ch in t)]
    assert digits == list("9876543210")


def test_chatml_special_tokens_are_single_tokens(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for token in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<tool_call>", "</tool_call>"):
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1, token
    assert tokenizer.eos_token == "<|im_end|>"


def test_chat_template_renders_tool_calls_and_results(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tool = {"type": "function", "function": {"name": "ask_coder", "description": "Ask the coder.",
                                             "parameters": {"type": "object",
                                                            "properties": {"request": {"type": "string"}}}}}
    messages = [
        {"role": "user", "content": "lcm?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "ask_coder", "arguments": {"request": "lcm of 38 and 16"}}}]},
        {"role": "tool", "content": "304"},
    ]
    text = tokenizer.apply_chat_template(messages, tools=[tool], tokenize=False, add_generation_prompt=True)
    assert '<tool_call>\n{"name": "ask_coder", "arguments": {"request": "lcm of 38 and 16"}}\n</tool_call>' in text
    assert "<tool_response>\n304\n</tool_response><|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_model_generates_and_round_trips_text(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    text = "print(2**100)  # 1267650600228229401496703205376"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    batch = tokenizer(["a", "a longer prompt"], return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 4)
