"""Several processes through accelerate (training/distributed.py): the DDP path on CPU, 2 processes over gloo.

    .venv/bin/python -m pytest tests/test_distributed.py -q

The 2-process runs are real: `prefloop train-dpo --gpus 2` (and train-rm) relaunches itself under `accelerate launch`,
whose workers train the tiny model, and the result is compared with a single-process run of the same config. To see
which pairs each rank trained on, the workers load a sitecustomize module (from a folder put on PYTHONPATH by the
test) that records every batch's input ids before TRL's training step; the single-process run records the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from store import Store
from tests.training_data import register_export
from training.cli import main
from training.distributed import DistributedError, launch_command, split_batch

REPO = Path(__file__).resolve().parent.parent

# Loaded by every Python process that has this folder on PYTHONPATH; records (rank, step, chosen rows' token ids).
RECORDER = '''
import json, os
import transformers.trainer

_original = transformers.trainer.Trainer.training_step

def training_step(self, model, inputs, *args, **kwargs):
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    rows = [ids[i][mask[i].bool()].tolist() for i in range(len(ids))]
    with open(os.path.join(os.environ["RECORD_BATCHES"], f"rank-{os.environ.get('RANK', '0')}.jsonl"), "a") as f:
        f.write(json.dumps({"step": self.state.global_step, "rows": rows}) + "\\n")
    return _original(self, model, inputs, *args, **kwargs)

transformers.trainer.Trainer.training_step = training_step
'''


def test_the_effective_batch_is_kept_over_processes():
    assert split_batch(2, 4, 1) == (2, 4)
    assert split_batch(2, 4, 2) == (2, 2)
    assert split_batch(2, 4, 8) == (1, 1)
    assert split_batch(16, 1, 2) == (8, 1)
    assert split_batch(4, 3, 4) == (3, 1)
    with pytest.raises(DistributedError, match="effective batch 6 .* does not split over 4 processes"):
        split_batch(3, 2, 4)


def test_launch_commands():
    ddp = launch_command(2, "ddp", ["train-dpo", "--gpus", "2"])
    assert ddp[-5:] == ["--multi_gpu", "-m", "training.cli", "train-dpo", "--gpus", "2"][-5:]
    assert ddp[ddp.index("--num_processes") + 1] == "2"
    fsdp = launch_command(4, "fsdp", ["train-rm"])
    assert "--use_fsdp" in fsdp and "--multi_gpu" not in fsdp
    assert fsdp[fsdp.index("--fsdp_version") + 1] == "2"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--distributed", "fsdp", "--backend", "unsloth"], "DDP only"),
        (["--distributed", "fsdp"], "FSDP needs GPUs"),  # accelerate would run DDP on CPU and call it FSDP
        (["--distributed", "zero3"], "distributed must be one of ddp, fsdp"),
        (["--per-device-train-batch-size", "3", "--gradient-accumulation-steps", "1"], "does not split over 2"),
    ],
)
def test_misconfigured_runs_are_refused_before_launching(args, message, db_path, capsys):
    assert main(["--db", str(db_path), "train-dpo", "--gpus", "2", *args]) == 1
    assert message in capsys.readouterr().err


@pytest.fixture
def recorder(tmp_path, monkeypatch):
    """A folder of per-rank batch records, and the env that makes a process write them."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(RECORDER)
    records = tmp_path / "records"
    records.mkdir()
    env = {**os.environ, "RECORD_BATCHES": str(records), "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return records, env


def read_records(folder: Path) -> dict[int, list[dict]]:
    return {
        int(path.stem.removeprefix("rank-")): [json.loads(line) for line in path.read_text().splitlines()]
        for path in sorted(folder.glob("rank-*.jsonl"))
    }


def train_args(kind: str, model_dir: Path, output_dir: Path, *extra: str) -> list[str]:
    """A few steps on the tiny model with an effective batch of 4 pairs (2 per forward x 2 accumulated)."""
    return [kind, "--model", str(model_dir), "--output-dir", str(output_dir), "--max-length", "64", "--lora-r", "4",
            "--lora-alpha", "8", "--per-device-train-batch-size", "2", "--gradient-accumulation-steps", "2",
            "--max-steps", "2", "--warmup-steps", "0", "--gradient-checkpointing", "false", "--report-to", "none",
            "--learning-rate", "1e-2", "--save-steps", "100", *extra]


def run_cli(db: Path, args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training.cli", "--db", str(db), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def adapter_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(output_dir / "adapter" / "adapter_model.safetensors"))


@pytest.mark.parametrize("kind", ["train-dpo", "train-rm"])
def test_two_processes_split_the_data_and_match_one(kind, tiny_model_dir, tmp_path, recorder):
    records, env = recorder
    # Two databases with the same export: in one, the second DPO run would continue the first one's checkpoint.
    db_one, db_two = tmp_path / "one.duckdb", tmp_path / "two.duckdb"
    register_export(Store(db_one), tmp_path, "round-0", train_rows=8, test_rows=4)
    shutil.copy(db_one, db_two)

    single = run_cli(db_one, train_args(kind, tiny_model_dir, tmp_path / "one"), env)
    assert single.returncode == 0, single.stderr[-3000:]
    (one,) = read_records(records).values()
    for path in records.iterdir():
        path.unlink()

    double = run_cli(db_two, train_args(kind, tiny_model_dir, tmp_path / "two", "--gpus", "2"), env)
    assert double.returncode == 0, double.stderr[-3000:]
    assert "launching 2 processes (ddp)" in double.stdout
    ranks = read_records(records)
    assert sorted(ranks) == [0, 1]

    # Each optimizer step: the single process's two accumulated micro-batches are the two ranks' batches.
    def rows(batches: list[dict], step: int) -> list[tuple]:
        return [tuple(row) for batch in batches if batch["step"] == step for row in batch["rows"]]

    for step in range(2):
        rank_0, rank_1, alone = rows(ranks[0], step), rows(ranks[1], step), rows(one, step)
        assert rank_0 and rank_1 and not set(rank_0) & set(rank_1), "both ranks trained on the same pairs"
        assert sorted(rank_0 + rank_1) == sorted(alone)

    # Same optimisation: the adapters agree to float32 reduction-order noise.
    trained_one, trained_two = adapter_weights(tmp_path / "one"), adapter_weights(tmp_path / "two")
    assert trained_one.keys() == trained_two.keys()
    for name in trained_one:
        torch.testing.assert_close(trained_two[name], trained_one[name], rtol=1e-4, atol=1e-5)
    # ...and training moved them (a run that silently did nothing would also "match").
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["global_step"] == 2
    metrics_one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    metrics_two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics_two["first_loss"] == pytest.approx(metrics_one["first_loss"], rel=1e-4)
    assert metrics_two["last_loss"] == pytest.approx(metrics_one["last_loss"], rel=1e-4)
    assert metrics_one["last_loss"] != metrics_one["first_loss"]

    # Rank 0 alone wrote to the store: one finished run and one checkpoint, as for the single process.
    store = Store(db_two)
    assert [c["adapter_path"] for c in store.list_checkpoints()] == [str(tmp_path / "two" / "adapter")]
    assert [r["status"] for r in store.list_training_runs()] == ["finished"]


# A worker's whole life in `worker_process_group`: a collective on tensors Python owns (as DDP's parameters and the
# Trainer's gathered metrics are), then the end of the script and normal interpreter shutdown.
WORKER = '''
import time, torch, torch.distributed as dist
from training.distributed import worker_process_group

with worker_process_group():
    weight = torch.nn.Parameter(torch.ones(1000))
    if dist.get_rank() == 0:
        time.sleep(0.2)  # the other ranks wait inside the collective, as after an uneven step
    with torch.no_grad():
        dist.all_reduce(weight)
    del weight
'''


def test_workers_leave_the_process_group_before_interpreter_shutdown(tmp_path):
    """Left to interpreter shutdown, gloo's worker threads could still be releasing the last collective's tensors;
    one that then needs the GIL aborts the process ("terminate called without an active exception", exit -6) after
    a run that succeeded. Before the fix 6 launches in 10 of 2 such workers aborted on a 2-core machine, so 6 launches
    find it (all 6 clean by chance: 0.4 ** 6, 0.4 %); with the group destroyed in order none may abort."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for launch in range(6):
        done = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
            env=env, capture_output=True, text=True, timeout=300,
        )
        assert done.returncode == 0 and "terminate called" not in done.stderr, f"launch {launch}:\n{done.stderr[-3000:]}"
