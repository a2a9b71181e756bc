"""DPO on a LoRA adapter with TRL's DPOTrainer: the command run after every labeling round.

    prefloop train-dpo                                   # newest export, from the newest policy checkpoint
    prefloop train-dpo --export round-2-final --beta 0.05 --loss-type ipo
    prefloop train-dpo --config configs/dpo.yaml --resume   # continue an interrupted run
    make train-dpo CONFIG=configs/dpo.yaml ARGS="--max-steps 20"

Iterative. The policy starts from the parent checkpoint (--parent, or the newest policy checkpoint: the one that
generated the newest round, or an SFT run since) and, with `reference: parent` (the default), the reference model IS
that checkpoint (`reference: base` disables every adapter for the reference instead: the base model):
- parent with an adapter (an earlier DPO or SFT round): the adapter is loaded trainable and training continues it.
  TRL then keeps a frozen copy of it as a second adapter, "ref", and computes the reference log-probs with that
  adapter active, so the reference is exactly the parent: same base weights, same adapter weights, no merge rounding.
  (Disabling the adapter instead, TRL's reference when it creates the adapter itself, would give the base model.)
- parent without an adapter (the base model): a new adapter (LoRA init, B = 0) whose frozen copy equals the base.
Every round's adapter therefore sits on the same base model, so a checkpoint is base_model + adapter_path, loadable
on its own (`load_for_generation`), and the next round continues it. The LoRA shape (r, alpha, targets) is the first
adapter's; those fields apply when a run starts from the base model.

Learning rate: 2e-4 (TrainConfig's default), LoRA on every linear layer, 2 epochs (configs/dpo.yaml): chosen by the
loop sweep on the GPU (docs/loop.md), which ran three labeled rounds per setting and judged the last round's samples
against round 0's. The lower rates that full fine-tuning recipes suggest for DPO (5e-7 to 5e-6; a LoRA step moves each weight by about lr * sqrt(r) /
sqrt(3 * hidden), 10 to 25 times less than a full step) left the policy where it was after three rounds of 128 pairs
(win rate 0.50); 5e-4 with 3 epochs collapsed it in the first round (91% empty answers: the health check stopped it).
DPO has no likelihood target to bound the update, so at high rates the margin runs away while both log-probs fall:
watch KL to the base model in the evaluation, and lower the rate for a large single export.

On CPU, TRL's fused LM head cannot run; `lm_head: auto` swaps in the plain one (training/engine/lm_head.py).

Throughput (bench/dpo_throughput.py measures each lever alone against TRL + PEFT and Unsloth): batches of pairs of
similar length (`group_by_length`, on) cut the padding TRL's collator adds: on the bench's lognormal lengths, 16 pairs
a batch, 63% of the tokens are padding at random and 30% grouped. On the H100 with a Qwen2.5-7B shape that gave 1.83x
Unsloth's real tokens/s at the same peak memory. On a small export it sorts most of the epoch by length, which can
change what a few steps learn (the CPU loop test turns it off for 48 pairs). `length_buckets` N splits each forward pass by row length (computed
padding near 0) but cost more in extra passes than it saved at 0.5B, so it is off. `cache_ref_logps` computes the
reference log-probs once per export and reference and keeps them with the export; `gradient_checkpointing false`
trades memory for a third less compute where the memory allows. The log-probs never materialise the logits: TRL's
fused LM head scores hidden states in vocabulary tiles (with Unsloth imported, through Unsloth's fused-linear kernel).
Unsloth's opt-in fused preference loss (UNSLOTH_FUSED_PREFERENCE_LOSS=1) declines TRL 1.15's loss, which already
calls that head.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
from training.models import TrainableModel, load_trainable


@dataclass
class DPOTrainConfig(TrainConfig):
    beta: float = opt(0.1, "strength of the pull towards the reference model (IPO: its tau)")
    loss_type: list[str] = opt(
        ["sigmoid"],
        "TRL DPO loss(es), comma-separated: sigmoid (DPO), ipo, hinge, robust, exo_pair, nca_pair, bco_pair, "
        "sppo_hard, aot, aot_unpaired, apo_zero, apo_down, discopop, sft, sigmoid_norm",
    )
    loss_weights: list[float] = opt([], "weight of each loss_type when there are several; empty: 1 each")
    label_smoothing: float = opt(0.0, "robust DPO: assumed label-flip probability in [0, 0.5); exo_pair: its epsilon")
    ld_alpha: float | None = opt(
        None,
        "LD-DPO: weight in [0, 1] of each response's tokens past the shorter response's length, in the policy's and "
        "the reference's log-probs (0: compare the shared length only); unset (the default): plain sums. Makes the "
        "implicit reward less sensitive to length, which far from the base model drifts with it (docs/loop.md)",
    )
    reference: str = opt(
        "parent",
        "the reference model: parent (the checkpoint this run continues: each round is pulled towards the last one) "
        "or base (the base model: every round is pulled towards where the loop started)",
    )
    # Throughput levers (training/engine/batching.py, training/engine/reference_logps.py): none changes the objective.
    group_by_length: bool = opt(
        True, "micro-batches of pairs of similar length (seeded; every pair once per epoch): far less padding"
    )
    length_buckets: int = opt(
        1,
        "run each micro-batch as up to N forward passes over rows of similar length (1: one padded pass, TRL's; "
        "4 cut computed padding to ~0 but ran slower on the H100 at 0.5B, see docs/benchmarks.md; 0: 1 on a GPU, "
        "on CPU one per row)",
    )
    cache_ref_logps: bool = opt(
        False,
        "reference log-probs computed once before training and cached with the export (pays off over epochs, "
        "resumes and reruns on the same export and parent)",
    )

    def validate(self) -> None:
        """The settings TRL would reject only once the model is loaded and the run started."""
        if self.reference not in ("parent", "base"):
            raise ValueError(f"reference must be parent or base, not {self.reference!r}")
        if self.ld_alpha is not None and not 0.0 <= self.ld_alpha <= 1.0:
            raise ValueError(f"ld_alpha must be in [0, 1] (or unset), not {self.ld_alpha}")
        if self.loss_weights and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(
                f"loss_weights has {len(self.loss_weights)} entries for {len(self.loss_type)} loss_type "
                f"({','.join(self.loss_type)}): give one weight per loss, or none for 1 each"
            )


def train(
    store: Store, config: DPOTrainConfig, resume: bool = False, overwrite: bool = False, callbacks: tuple = ()
) -> TrainResult:
    config.validate()  # before the export, the model and the run record
    export, data = load_export(store, config.export)
    for split in data:
        require_columns(data[split], PREFERENCE_COLUMNS, f"export {export['name']!r}, split {split}")
    config = with_min_steps(config, len(data["train"]))
    parent = choose_parent(store, config.parent)
    base_model = base_model_of(config, parent)
    adapter_path = parent["adapter_path"] if parent else None
    with Run(store, "dpo", config, round_of(store, export), export, parent, base_model, resume, overwrite) as run:
        loaded = load_trainable(config, resolve_model(base_model), adapter_path, seed=config.seed)
        print(run.describe(loaded))

        test = data["test"].select_columns(list(PREFERENCE_COLUMNS)) if "test" in data else None
        # What cached reference log-probs depend on besides the numerics (build_trainer adds those).
        reference = {"export": export["name"], "export_id": export["id"], "base": base_model,
                     "adapter": adapter_path if config.reference == "parent" else None}
        trainer = build_trainer(
            config,
            loaded,
            run.output_dir,
            data["train"].select_columns(list(PREFERENCE_COLUMNS)),
            test if test is not None and len(test) else None,
            callbacks,
            reference_cache=(Path(export["path"]) / "ref-logps", reference),
        )
        print("reference model: " + ("the parent's adapter (frozen copy)" if reference["adapter"] else "the base model"))

        metrics = run.train(trainer)
        metrics |= last_epoch_rewards(trainer.state.log_history)
        if "train_reward_accuracy" in metrics:
            print(
                f"train reward accuracy {metrics['train_reward_accuracy']:.3f}, margin "
                f"{metrics['train_reward_margin']:.4f} (implicit reward, mean over the last epoch's steps)"
            )
        if config.evaluate and trainer.eval_dataset is not None:
            metrics["eval"] = trainer.evaluate()
            # Share of held-out pairs whose implicit reward ranks the chosen response first.
            metrics["heldout_reward_accuracy"] = metrics["eval"].get("eval_rewards/accuracies")
        checkpoint_id = run.finish(trainer, loaded, metrics)
    return TrainResult(checkpoint_id, metrics, trainer)


def last_epoch_rewards(log_history: list[dict]) -> dict:
    """Share of pairs whose implicit reward ranks the chosen response first, and the mean reward margin, over the
    logged steps of the last epoch: each pair counted once, as the policy stood when it reached that pair."""
    logs = [entry for entry in log_history if "rewards/accuracies" in entry and "epoch" in entry]
    if not logs:
        return {}
    last = [entry for entry in logs if entry["epoch"] > logs[-1]["epoch"] - 1]
    return {
        "train_reward_accuracy": sum(entry["rewards/accuracies"] for entry in last) / len(last),
        "train_reward_margin": sum(entry["rewards/margins"] for entry in last) / len(last),
    }


def build_trainer(
    config: DPOTrainConfig,
    loaded: TrainableModel,
    output_dir: Path,
    train_dataset,
    eval_dataset=None,
    callbacks: tuple = (),
    reference_cache: tuple[Path, dict] | None = None,
):
    """TRL's DPOTrainer on `loaded`, with the config's LM head and throughput levers installed: what `train` runs,
    and what bench/dpo_throughput.py measures. `reference_cache` is (folder, what the reference is) for
    cache_ref_logps; without it the reference log-probs are precomputed but not kept."""
    from trl import DPOConfig, DPOTrainer  # after load_trainable: Unsloth patches TRL when it is imported first

    from training.algorithms.callbacks import SaveOnlyTrainedAdapter, StopOnNonFiniteLoss
    from training.engine.batching import use_length_buckets, use_length_grouped_sampler
    from training.engine.lm_head import install_lm_head
    from training.engine.reference_logps import attach_reference_logps

    config.validate()  # the benches build a trainer without `train`
    args = trl_config(DPOConfig, config, output_dir, loaded, loss_weights=config.loss_weights or None)
    trainer = DPOTrainer(
        model=loaded.model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=loaded.tokenizer,
        callbacks=[StopOnNonFiniteLoss(), SaveOnlyTrainedAdapter(), *callbacks],
    )
    if config.reference == "base" and "ref" in trainer.model.peft_config:
        # TRL computes the reference with the "ref" adapter (its frozen copy of the parent's) active, and with every
        # adapter disabled when there is none: without it, the reference is the base model.
        trainer.model.delete_adapter("ref")
    levers = [f"{install_lm_head(trainer, config.lm_head, loaded.device)} LM head"]
    # 0: on CPU one pass per row length (compute grows with the padded tokens; an extra pass costs next to nothing).
    buckets = config.length_buckets or (1 if loaded.device == "cuda" else 2 * args.per_device_train_batch_size)
    if buckets > 1 and not trainer.is_fsdp_enabled:  # FSDP would gather the weights once per pass
        use_length_buckets(trainer.model, buckets)  # after the LM head, whose forward it splits
        levers.append(f"forward passes split into up to {buckets} length buckets")
    if args.gradient_checkpointing:
        levers.append("activations recomputed (gradient checkpointing)")
    if config.group_by_length:
        micro_batch = config.per_device_train_batch_size
        use_length_grouped_sampler(trainer, micro_batch, micro_batch * config.gradient_accumulation_steps, config.seed)
        levers.append("length-grouped batches")
    if config.cache_ref_logps:
        folder, reference = reference_cache or (None, {})
        numerics = {"max_length": args.max_length, "truncation_mode": args.truncation_mode}
        numerics |= {"backend": loaded.backend, "dtype": str(loaded.dtype), "lm_head": levers[0]}
        if args.ld_alpha is not None:  # LD-DPO weights the reference's tail tokens too (absent: the keys of before)
            numerics["ld_alpha"] = args.ld_alpha
        status = attach_reference_logps(trainer, folder, reference | numerics, args.per_device_train_batch_size)
        levers.append("reference log-probs " + ", ".join(f"{split} {how}" for split, how in status.items()))
    print("throughput: " + "; ".join(levers))
    return trainer
