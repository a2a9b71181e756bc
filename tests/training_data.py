"""Preference data, registered exports and tiny-model configs shared by the training tests."""

from __future__ import annotations

from pathlib import Path

from store import Store

PROMPTS = [
    "Name a colour.",
    "Say something kind.",
    "What is two plus two?",
    "Greet me.",
    "Tell me about the sea.",
    "Write a word.",
    "Describe the sky.",
    "Give me a number.",
]


def preference_rows(n: int, offset: int = 0) -> list[dict]:
    """Pairs in the export's format: chosen says yes, rejected says no (trivially separable)."""
    return [
        {
            "prompt": [{"role": "user", "content": PROMPTS[(i + offset) % len(PROMPTS)] + f" ({i + offset})"}],
            "chosen": [{"role": "assistant", "content": "yes thanks please hello world"}],
            "rejected": [{"role": "assistant", "content": "no sorry maybe"}],
            "pair_id": i + offset,
            "round": 0,
            "num_judgments": 1,
            "agreement": 1.0,
            "margin": 1.0,
        }
        for i in range(n)
    ]


def register_export(store: Store, root: Path, name: str, train_rows: int = 8, test_rows: int = 4, round_id=0) -> int:
    """Build an export as `prefloop export` writes it (save_to_disk DatasetDict) and register it."""
    from datasets import Dataset, DatasetDict

    data = DatasetDict(
        {
            "train": Dataset.from_list(preference_rows(train_rows)),
            "test": Dataset.from_list(preference_rows(test_rows, 100)),
        }
    )
    path = root / "exports" / name
    data.save_to_disk(str(path))
    return store.register_export(name, str(path), round_id, {"test": True}, {"train": train_rows, "test": test_rows})


def tiny(cls, model_dir: Path, output_dir: Path, **overrides):
    """A config for the tiny model: a few steps of batch 2, no gradient checkpointing, no TensorBoard unless asked."""
    values = dict(
        model=str(model_dir),
        output_dir=str(output_dir),
        max_length=64,
        lora_r=4,
        lora_alpha=8,
        per_device_train_batch_size=2,
        per_device_eval_batch_size=4,
        gradient_accumulation_steps=1,
        max_steps=6,
        warmup_steps=0,
        gradient_checkpointing=False,
        report_to=["none"],
        save_steps=100,
    )
    values.update(overrides)
    return cls(**values)
