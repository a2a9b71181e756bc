"""SFT on a LoRA adapter with TRL's SFTTrainer: the first stage of the RLHF pipeline.

    prefloop train-sft                                   # the chosen responses of the newest export
    prefloop train-sft --data sft.jsonl                  # an SFT set: one {"messages": [...]} per line
    make train-sft CONFIG=configs/sft.yaml

From an export, each pair becomes prompt -> chosen response, and only the response tokens are learned
(completion_only_loss). From a JSONL file, every line is a conversation ending with the assistant's turn, and all its
tokens are learned (ChatML templates have no {% generation %} markers to mask the user turns with). The adapter is new
on the base model unless --parent names a checkpoint to continue. The checkpoint is registered as kind 'sft', so
`round new` and `train-dpo` start from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from store import Store
from training.algorithms.run import (
    Run,
    TrainConfig,
    TrainingError,
    TrainResult,
    base_model_of,
    choose_parent,
    load_export,
    require_columns,
    round_of,
    trl_config,
    with_min_steps,
)
from training.config import opt
from training.model_source import resolve_model
from training.models import load_trainable


@dataclass
class SFTTrainConfig(TrainConfig):
    parent: int | None = opt(
        None, "checkpoint whose adapter training continues; empty: a new adapter on the base model"
    )
    data: str = opt("", 'SFT JSONL file, one {"messages": [...]} per line; empty: the export\'s chosen responses')


def read_sft_jsonl(path: Path) -> list[dict]:
    """Conversations of an SFT JSONL file; a bad line is reported by file and line number."""
    rows = []
    with Path(path).open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TrainingError(f"{path}:{number}: not JSON ({exc.msg})") from None
            messages = row.get("messages") if isinstance(row, dict) else None
            if (
                not isinstance(messages, list)
                or not messages
                or not all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in messages
                )
            ):
                raise TrainingError(f'{path}:{number}: expected {{"messages": [{{"role": ..., "content": ...}}, ...]}}')
            if messages[-1]["role"] != "assistant":
                raise TrainingError(f"{path}:{number}: the last message must be the assistant's (the text SFT learns)")
            rows.append({"messages": [{"role": m["role"], "content": m["content"]} for m in messages]})
    if not rows:
        raise TrainingError(f"{path}: no conversations")
    return rows


def sft_datasets(store: Store, config: SFTTrainConfig) -> tuple[dict | None, object, object | None]:
    """(export or None, train dataset, held-out dataset or None)."""
    from datasets import Dataset

    if config.data:
        return None, Dataset.from_list(read_sft_jsonl(Path(config.data))), None
    export, data = load_export(store, config.export)

    def as_completion(split):
        require_columns(data[split], ("prompt", "chosen"), f"export {export['name']!r}, split {split}")
        return data[split].select_columns(["prompt", "chosen"]).rename_column("chosen", "completion")

    test = as_completion("test") if "test" in data and len(data["test"]) else None
    return export, as_completion("train"), test


def train(
    store: Store, config: SFTTrainConfig, resume: bool = False, overwrite: bool = False, callbacks: tuple = ()
) -> TrainResult:
    export, train_set, test_set = sft_datasets(store, config)
    config = with_min_steps(config, len(train_set), "examples")
    parent = choose_parent(store, config.parent) if config.parent is not None else None
    base_model = base_model_of(config, parent)
    adapter_path = parent["adapter_path"] if parent else None
    round_id = round_of(store, export) if export else None
    with Run(store, "sft", config, round_id, export, parent, base_model, resume, overwrite) as run:
        loaded = load_trainable(config, resolve_model(base_model), adapter_path, seed=config.seed)
        print(run.describe(loaded))

        from trl import SFTConfig, SFTTrainer  # after load_trainable: Unsloth patches TRL when it is imported first

        from training.algorithms.callbacks import StopOnNonFiniteLoss
        from training.engine.lm_head import install_lm_head

        args = trl_config(SFTConfig, config, run.output_dir, loaded, packing=False)
        trainer = SFTTrainer(
            model=loaded.model,
            args=args,
            train_dataset=train_set,
            eval_dataset=test_set,
            processing_class=loaded.tokenizer,
            callbacks=[StopOnNonFiniteLoss(), *callbacks],
        )
        lm_head = install_lm_head(trainer, config.lm_head, loaded.device)
        print(f"log-probs: {lm_head} LM head")

        metrics = run.train(trainer)
        if config.evaluate and test_set is not None:
            metrics["eval"] = trainer.evaluate()
        checkpoint_id = run.finish(trainer, loaded, metrics)
    return TrainResult(checkpoint_id, metrics, trainer)
