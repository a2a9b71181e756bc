"""The training commands: train-sft, train-rm, train-dpo, train-ppo, train-rloo, merge. Each parses its algorithm's
config (defaults < --config YAML < options) and runs its library function in `training.algorithms`; the TRL trainers'
commands (sft, rm, dpo) relaunch themselves once per GPU with --gpus N."""

from __future__ import annotations

import argparse
import functools
from contextlib import nullcontext

from training.algorithms import dpo, merge, ppo, reward, rloo, sft
from training.cli.console import store_of
from training.config import add_arguments, from_args
from training.distributed import check_strategy, relaunch, split_batch, worker_process_group, world_size

# (command, module, config class, library function, help). Every function takes (store, config, resume=, overwrite=)
# but merge, which takes (store, config), and PPO, which does not resume.
COMMANDS = [
    ("train-sft", sft, sft.SFTTrainConfig, sft.train,
     "SFT on a LoRA adapter: the chosen responses of the newest export, or an SFT JSONL (--data)"),
    ("train-rm", reward, reward.RewardTrainConfig, reward.train,
     "reward model (sequence classifier + LoRA) on the newest export; records held-out accuracy"),
    ("train-dpo", dpo, dpo.DPOTrainConfig, dpo.train,
     "DPO on a LoRA adapter from the newest export, continuing the newest policy checkpoint"),
    ("train-ppo", ppo, ppo.PPOConfig, ppo.train_ppo,
     "PPO on a LoRA adapter against the registered reward model, continuing the newest policy checkpoint"),
    ("train-rloo", rloo, rloo.RLOOTrainConfig, rloo.train_rloo,
     "RLOO (TRL) on a LoRA adapter against the registered reward model, from the newest policy checkpoint"),
    ("merge", merge, merge.MergeConfig, merge.merge,
     "merge a checkpoint's LoRA adapter into its base model (16-bit HF checkpoint, kind 'merged')"),
]
MULTI_GPU = {"train-sft", "train-rm", "train-dpo"}  # TRL trainers that run under accelerate launch


def register(subparsers: argparse._SubParsersAction) -> None:
    for name, module, config_class, function, help_text in COMMANDS:
        p = subparsers.add_parser(name, help=help_text, description=module.__doc__.split("\n\n")[0])
        add_arguments(p, config_class)
        if name != "merge":
            p.add_argument("--overwrite", action="store_true", help="delete an unfinished run's directory and start over")
        if name not in ("merge", "train-ppo"):
            p.add_argument("--resume", action="store_true", help="continue the interrupted run in the output directory")
        run = run_training_command if name in MULTI_GPU else run_in_process
        p.set_defaults(run=functools.partial(run, function, config_class))


def run_in_process(function, config_class, args: argparse.Namespace) -> int:
    """Run the command's library function on the store with the parsed config, and the run options it takes."""
    options = {key: getattr(args, key) for key in ("resume", "overwrite") if hasattr(args, key)}
    function(store_of(args), from_args(config_class, args), **options)
    return 0


def run_training_command(function, config_class, args: argparse.Namespace) -> int:
    """What `train-sft`, `train-rm` and `train-dpo` do: train in this process, or with --gpus N above 1 relaunch the
    same command in N processes (training/distributed.py), each of which then trains its share."""
    config = from_args(config_class, args)
    check_strategy(config.gpus, config.distributed, config.backend)
    split_batch(config.per_device_train_batch_size, config.gradient_accumulation_steps, config.gpus)  # fail early
    if config.gpus > 1 and world_size() == 1:
        return relaunch(config.gpus, config.distributed, args.argv)
    with worker_process_group() if world_size() > 1 else nullcontext():
        function(store_of(args), config, resume=args.resume, overwrite=args.overwrite)
    return 0
