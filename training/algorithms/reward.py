"""Reward model: a sequence classifier with one output, LoRA plus a trained score head, with TRL's RewardTrainer.

    prefloop train-rm                                    # newest export, from the base model
    prefloop train-rm --export round-2-final --num-train-epochs 2
    make train-rm CONFIG=configs/reward.yaml

The model is the base model's AutoModelForSequenceClassification (num_labels=1): its new score head is a full
trainable copy (PEFT's modules_to_save for SEQ_CLS), the transformer gets LoRA. It reads prompt + response through
the chat template and scores the last token that is not padding, which it finds through pad_token_id: the pad token
must differ from EOS (checked when the tokenizer loads), or the score would be read at the first EOS. The loss is
Bradley-Terry, -log sigmoid(r_chosen - r_rejected); held-out accuracy (share of test pairs ranked right) goes into
the metrics, the run record and the checkpoint's config. PPO, RLOO and evaluation load the registered checkpoint as
AutoModelForSequenceClassification(base_model, num_labels=1) + the adapter at adapter_path.

Pairs longer than max_length are dropped (TRL's RewardTrainer), not truncated: a truncated pair could lose exactly
the tokens that differ.
"""

from __future__ import annotations

from dataclasses import dataclass

from store import Store
from training.algorithms.run import (
    PREFERENCE_COLUMNS,
    Run,
    TrainConfig,
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
class RewardTrainConfig(TrainConfig):
    parent: int | None = opt(None, "checkpoint whose base model is used (its adapter is not); empty: --model")
    learning_rate: float = opt(1e-4, "peak learning rate: LoRA needs about 10x the full fine-tuning rate (TRL's 1e-5)")
    center_rewards_coefficient: float = opt(0.0, "weight of a penalty on (r_chosen + r_rejected)^2 that centres scores")
    use_margin: bool = opt(False, "subtract the export's margin (0.5 slight, 1 clear) inside the loss, as Llama 2 did")


def train(
    store: Store, config: RewardTrainConfig, resume: bool = False, overwrite: bool = False, callbacks: tuple = ()
) -> TrainResult:
    export, data = load_export(store, config.export)
    columns = PREFERENCE_COLUMNS + (("margin",) if config.use_margin else ())
    for split in data:
        require_columns(data[split], columns, f"export {export['name']!r}, split {split}")
    config = with_min_steps(config, len(data["train"]))
    # A reward model starts from a base model; a policy parent only says which base model.
    parent = choose_parent(store, config.parent) if config.parent is not None else None
    base_model = base_model_of(config, parent)
    with Run(store, "reward", config, round_of(store, export), export, parent, base_model, resume, overwrite) as run:
        loaded = load_trainable(config, resolve_model(base_model), task="reward", seed=config.seed)
        print(run.describe(loaded))

        from trl import RewardConfig, RewardTrainer  # after load_trainable: Unsloth patches TRL when imported first

        from training.algorithms.callbacks import StopOnNonFiniteLoss

        args = trl_config(
            RewardConfig, config, run.output_dir, loaded,
            center_rewards_coefficient=config.center_rewards_coefficient or None,
        )
        test = data["test"].select_columns(list(columns)) if "test" in data else None
        trainer = RewardTrainer(
            model=loaded.model,
            args=args,
            train_dataset=data["train"].select_columns(list(columns)),
            eval_dataset=test if test is not None and len(test) else None,
            processing_class=loaded.tokenizer,
            callbacks=[StopOnNonFiniteLoss(), *callbacks],
        )
        metrics = run.train(trainer)
        if config.evaluate and trainer.eval_dataset is not None:
            metrics["eval"] = trainer.evaluate()
            metrics["heldout_accuracy"], metrics["heldout_pairs"] = heldout_accuracy(trainer)
            print(f"held-out accuracy: {metrics['heldout_accuracy']:.3f} on {metrics['heldout_pairs']} pairs")
        checkpoint_id = run.finish(trainer, loaded, metrics)
    return TrainResult(checkpoint_id, metrics, trainer)


def heldout_accuracy(trainer) -> tuple[float, int]:
    """(share of held-out pairs scored chosen > rejected, pairs scored), counted pair by pair.

    The trainer's own eval_accuracy averages per-batch means, which weighs a short last batch too much. With several
    processes each scores its shard and gather_for_metrics collects every pair once (the padding repeats dropped).
    """
    import torch

    correct = total = 0
    model = trainer.model.eval()
    with torch.no_grad():
        for batch in trainer.get_eval_dataloader():  # [chosen..., rejected...] per batch
            rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
            chosen, rejected = rewards.chunk(2)
            ranked_right = trainer.accelerator.gather_for_metrics(chosen > rejected)
            correct += int(ranked_right.sum())
            total += len(ranked_right)
    return correct / total, total
