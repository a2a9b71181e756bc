"""A tiny random chat model for tests: ChatML template, EOS <|im_end|>, PAD <|endoftext|>, as the embedded model."""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b",
    "Paris is the capital of France. Water boils at 100 degrees.",
    "Write a short poem about the sea and the sky.",
    "Explain why the sky is blue in one sentence.",
    "yes no maybe hello world thanks please sorry",
]


def build_tiny_model(directory: Path, vocab_size: int = 384, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory = Path(directory)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_stopping_model(tiny_model_dir: Path, directory: Path) -> Path:
    """The tiny model with a bias towards the end-of-turn token, so responses both stop and get cut at the limit.

    Embedding dimension 0 is set to 1 for every token, which makes it dominate the normalised hidden state; an untied
    output head whose EOS row is larger in that dimension then adds a constant to the EOS logit (about 15% per step).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        embedding = model.get_input_embeddings().weight
        embedding[:, 0] = 1.0
        head = embedding.clone()
        head[tokenizer.eos_token_id, 0] = 1.75
    model.config.tie_word_embeddings = False
    model.lm_head = torch.nn.Linear(head.shape[1], head.shape[0], bias=False)
    model.lm_head.weight = torch.nn.Parameter(head)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return Path(directory)


def build_chat_model(tiny_model_dir: Path, directory: Path, steps: int = 300, seed: int = 0) -> Path:
    """The tiny model taught, by a few seconds of full fine-tuning, to answer a chat prompt with 1 to 16 words of its
    corpus and then end its turn: a model whose end-of-turn token is learned like any other, so preference training
    can move where its answers stop (the loop's tests need answers of many lengths that mostly finish)."""
    import json
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    seeds = Path(__file__).resolve().parents[1] / "store" / "seeds" / "prompts.jsonl"
    prompts = [json.loads(line)["messages"] for line in seeds.read_text().splitlines()[:200]]
    words = " ".join(CORPUS).split()
    rng = random.Random(seed)
    torch.manual_seed(seed)

    def example() -> tuple[list[int], list[int]]:
        messages = rng.choice(prompts)
        answer = " ".join(rng.choice(words) for _ in range(rng.randint(1, 16)))
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": answer}], tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"][-48:]
        completion = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
        completion = completion[: completion.index(tokenizer.eos_token_id) + 1]
        return prompt_ids + completion, [-100] * len(prompt_ids) + completion

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        batch = [example() for _ in range(16)]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.tensor([ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids, _ in batch])
        labels = torch.tensor([labels + [-100] * (width - len(labels)) for _, labels in batch])
        attention = (input_ids != tokenizer.pad_token_id).long()
        model(input_ids=input_ids, attention_mask=attention, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return Path(directory)
