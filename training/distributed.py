"""Training on several GPUs through accelerate: `--gpus N` relaunches the same command under `accelerate launch`.

    prefloop train-dpo --gpus 2                      # DDP on 2 GPUs: one process per GPU, gradients all-reduced
    prefloop train-rm --gpus 4 --distributed fsdp    # FSDP: parameters, gradients and optimizer state sharded
    make train-dpo GPUS=2                            # the same through the Makefile (DISTRIBUTED=fsdp for FSDP)

How a run is spread:
- `--gpus N` in a plain process execs `accelerate launch --multi_gpu --num_processes N -m training.cli <same args>`
  (FSDP: `--use_fsdp`, FSDP2 wrapping each decoder layer). The N workers see WORLD_SIZE=N and train; the Trainer
  wraps the model in DDP/FSDP and gives each rank its own shard of every batch (accelerate's dataloader).
- The effective batch is the config's, as on one GPU: per_device_train_batch_size x gradient_accumulation_steps
  examples per optimizer step, split over the N ranks (`split_batch`). So a config gives the same optimisation on
  1 or N GPUs, only faster; a batch that does not split evenly is refused rather than silently changed.
- Only rank 0 writes: it prepares the run directory, records the run and the checkpoint in the store, and saves the
  adapter; the others wait at a barrier. The Trainer itself saves resumable checkpoints from rank 0 as well.
- Unsloth runs under DDP (its supported multi-GPU mode: one model copy per GPU); FSDP uses transformers + PEFT.
- Without GPUs the same path runs on CPU processes over gloo, which is how the test suite checks it.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

STRATEGIES = ("ddp", "fsdp")


class DistributedError(ValueError):
    """A multi-process run is misconfigured; the message names the field."""


def world_size() -> int:
    """Processes in this run (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def split_batch(per_device: int, accumulation: int, processes: int) -> tuple[int, int]:
    """(per-device batch, accumulation steps) on `processes` ranks that keep per_device x accumulation examples per
    optimizer step. The per-device batch never grows (memory); it shrinks only when the step has fewer examples per
    rank than it holds."""
    total = per_device * accumulation
    if total % processes:
        raise DistributedError(
            f"effective batch {total} (per_device_train_batch_size {per_device} x gradient_accumulation_steps "
            f"{accumulation}) does not split over {processes} processes; make it a multiple of {processes}"
        )
    per_rank = total // processes
    # The largest batch that fits in the old one and divides this rank's share of the step.
    per_device = max(size for size in range(1, min(per_device, per_rank) + 1) if per_rank % size == 0)
    return per_device, per_rank // per_device


def check_strategy(gpus: int, strategy: str, backend: str) -> None:
    if gpus < 1:
        raise DistributedError(f"gpus must be at least 1, not {gpus}")
    if strategy not in STRATEGIES:
        raise DistributedError(f"distributed must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    if strategy == "fsdp" and backend == "unsloth":
        raise DistributedError("Unsloth trains on several GPUs with DDP only: use --distributed ddp, or --backend "
                               "transformers for FSDP")
    if strategy == "fsdp" and gpus > 1:
        import torch

        if not torch.cuda.is_available():  # accelerate would quietly run DDP instead
            raise DistributedError("FSDP needs GPUs; on CPU processes use --distributed ddp")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(gpus: int, strategy: str, cli_args: list[str]) -> list[str]:
    """The `accelerate launch` command that runs `prefloop <cli_args>` in `gpus` processes."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(gpus),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port())]
    if strategy == "fsdp":
        # FSDP2, one unit per decoder layer (accelerate reads the class from the model's _no_split_modules), the full
        # adapter gathered on rank 0 when saving; use_orig_params keeps PEFT's frozen/trainable split per parameter.
        command += ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
                    "--fsdp_state_dict_type", "FULL_STATE_DICT", "--fsdp_cpu_ram_efficient_loading", "false"]
    else:
        command += ["--multi_gpu"]
    return command + ["-m", "training.cli", *cli_args]


def relaunch(gpus: int, strategy: str, cli_args: list[str]) -> int:
    """Run the command again under accelerate in `gpus` processes; returns the launcher's exit status."""
    command = launch_command(gpus, strategy, cli_args)
    print(f"launching {gpus} processes ({strategy}): {' '.join(command[1:])}", flush=True)
    env = dict(os.environ)
    # On CPU each process would otherwise start one thread per core, N x oversubscribing the machine.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // gpus)))
    return subprocess.call(command, env=env)


@contextmanager
def worker_process_group() -> Iterator[None]:
    """In a launched worker, around the whole run: join the process group first (`barrier` needs it before the
    Trainer exists), turn the launcher's SIGTERM (another rank failed) into an exception so the run is recorded
    as failed, and when the run succeeds leave the group in order: every rank waits at a barrier, then destroys it.

    Destroying the group joins its gloo worker threads while the interpreter is still whole. Left to interpreter
    shutdown instead, a worker thread that is still releasing a finished collective's tensors (a loaded machine
    deschedules it between completing the work and dropping it) needs the GIL during finalization; CPython ends such
    a thread with a forced unwind that hits a noexcept frame, so a run that trained and saved everything aborted with
    "terminate called without an active exception" (exit -6). After a failure the group is left alone: another rank
    may still be inside a collective, and destroying would wait for it.
    """
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())

    def stop(signum, frame):
        raise SystemExit(f"stopped by signal {signum}: another process of the run failed or was interrupted")

    signal.signal(signal.SIGTERM, stop)
    yield
    # The finished run's trainer sits in reference cycles, and with it DDP's reducer, which holds the process group
    # and its work: freed only by the collector, that could happen during interpreter shutdown. Free it now.
    gc.collect()
    state.wait_for_everyone()  # the last collective of every rank: none is in flight when the group goes
    state.destroy_process_group()
    gc.collect()  # the group's last references, while the interpreter is whole


def barrier() -> None:
    """Wait until every rank gets here (no-op in a single process)."""
    if world_size() > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def describe(trainer) -> str:
    """How the trainer spreads the run, e.g. '2 processes (FSDP), 2 per device x 1 accumulation'."""
    args = trainer.args
    processes = trainer.accelerator.num_processes
    strategy = "FSDP" if trainer.is_fsdp_enabled else "DDP" if processes > 1 else "one process"
    return (f"{processes} process{'es' if processes > 1 else ''} ({strategy}), {args.per_device_train_batch_size} per "
            f"device x {args.gradient_accumulation_steps} accumulation = "
            f"{args.per_device_train_batch_size * args.gradient_accumulation_steps * processes} examples per step")
