"""The whole loop, headless, with a simulated annotator: generate → judge → export → train-dpo, round after round,
then evaluate every round's checkpoint and report whether the model improved under the judge.

    prefloop loop-sim --rounds 3 --judge training.loop.judges:shorter
    make loop-sim ROUNDS=3 JUDGE=training.loop.judges:contains_word NAME=example-loop
    prefloop loop-sim --name example-loop            # rerun: continues from the last finished stage

Round r samples k responses per prompt (`samples_per_prompt`, 8) with round r's checkpoint and keeps the pair the
pair selection picks (`prefloop generate`, configs/generate.yaml) until the round has `pairs_per_round` train pairs
and `heldout_pairs` held-out pairs; the judge labels them as annotator sim:<judge>; the train pairs of every round so
far are exported and DPO (configs/dpo.yaml: the recipe `make train-dpo` uses, for a fixed `dpo_steps` optimizer
steps) continues round r's checkpoint, which gives the checkpoint of round r + 1. These defaults are the recipe the
GPU sweep of docs/loop.md chose, one for every judge. A health check then samples the new checkpoint and stops the
loop, with the figures, when the policy collapsed (empty answers, answers that never end, or a KL to the base model
beyond a bound). After the last round every checkpoint is evaluated (`prefloop eval`: held-out preference accuracy
on every judged held-out pair, summed and per token, KL to the base model, response length) and, on the same
held-out prompts, k samples of each round compete under the judge with round 0's and with the previous round's. The
table, a plot and a JSON summary go to data/reports/<name>.md, .png and .json, rewritten after each evaluated checkpoint
("partial" in the JSON until the last).

Resumable: each finished stage is recorded, with what it produced and how long it took, in
data/reports/<name>.state.json; a rerun skips finished stages, resumes an interrupted DPO run from its last trainer
checkpoint, generation only tops up, and the evaluation goes on with the checkpoints it has not finished. Nothing
here knows what the judge prefers: it is any `module:function` (see training/loop/judges.py).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from store import Store, StoreError
from training.config import build, opt


class LoopError(RuntimeError):
    """The loop cannot go on (no prompts left, or the policy collapsed); the message has the figures."""


@dataclass
class LoopConfig:
    name: str = opt("loop-sim", "run name: the state, report and checkpoints are kept under this name")
    rounds: int = opt(3, "labeling rounds, each followed by a DPO run (the table has rounds 0..rounds)")
    judge: str = opt("training.loop.judges:shorter", "module:function of the simulated annotator")
    noise: float = opt(0.0, "probability that the simulated annotator flips an a/b choice")
    prompts_file: str = opt("store/seeds/prompts.jsonl", "prompts imported before round 0 (duplicates skipped)")
    pairs_per_round: int = opt(
        256,
        "judged train pairs per round (generation tops up until the round has them); a judge that calls most pairs "
        "a tie still leaves DPO 50-200 decisive ones (at 128, `contains_word` missed the goal of docs/loop.md)",
    )
    heldout_pairs: int = opt(128, "judged held-out pairs per round, for held-out preference accuracy")
    train_on: str = opt(
        "all",
        "each round's DPO run learns from every round's labels so far (all) or that round's only (round): with a "
        "fixed step budget the first round's few labels are seen most often and later rounds spread over more",
    )
    samples_per_prompt: int = opt(
        8, "candidates sampled per prompt, over generate_config's k (0: as it says): more samples, more pairs a "
        "judge can decide"
    )
    dpo_steps: int = opt(
        48,
        "optimizer steps of each round's DPO run whatever the number of labels (its min_steps and max_steps; 0: as "
        "dpo_config says): a round of few decisive pairs still moves the policy, one of many does not overshoot",
    )
    reward_model: bool = opt(
        False,
        "train a reward model on each round's export before its DPO run: generation's auto selection then shows the "
        "next round's annotators its highest- against its lowest-scored sample, and the report gives its held-out "
        "accuracy per round (round r: the model of the labels of rounds 0..r-1)",
    )
    reward_config: str = opt("configs/reward.yaml", "YAML of each round's reward model (with reward_model)")
    reward_min_steps: int = opt(
        32,
        "at least this many optimizer steps of each round's reward model (its min_steps; 0: as reward_config says): "
        "a sparse judge's first round leaves it some 35 decisive pairs, 5 steps of one epoch",
    )
    generate_config: str = opt("configs/generate.yaml", "YAML of candidate generation (decoding, the engine)")
    dpo_config: str = opt("configs/dpo.yaml", "YAML of each round's DPO run: the recipe `make train-dpo` uses")
    eval_config: str = opt("", "YAML of the evaluation (empty: EvalConfig's defaults, 200 prompts x 4 samples)")
    backend: str = opt(
        "transformers",
        "DPO backend of the loop's runs: transformers keeps the loop in one process on the static decoder (Unsloth "
        "patches the model classes it runs); unsloth or auto for models where its speed matters",
    )
    max_empty_share: float = opt(0.5, "health check: stop when more of a new checkpoint's answers are empty")
    max_cut_share: float = opt(
        0.8, "health check: stop when more of its answers run to the token limit (never end; the base model's: ~50%)"
    )
    max_kl: float = opt(
        60.0,
        "health check: stop when a new checkpoint's KL to the base model exceeds this (nats per response; the "
        "healthy loops of docs/loop.md reached 44.5, every collapse there was caught by the two bounds above)",
    )
    health_prompts: int = opt(64, "held-out prompts the health check samples once each")
    seed: int = opt(3407, "seed of generation, the judge's noise and evaluation (DPO's is in its YAML)")
    report_dir: str = opt("data/reports", "where the state file, table, plot and JSON summary are written")


class LoopState:
    """Finished stages, what they produced and how long they took, persisted after every stage."""

    def __init__(self, path: Path, config: LoopConfig):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {"config": asdict(config), "stages": {}}
        self.seconds: dict[str, float] = self.data.setdefault("seconds", {})

    def done(self, stage: str) -> bool:
        return stage in self.data["stages"]

    def get(self, stage: str):
        return self.data["stages"].get(stage)

    def reward_model_for(self, r: int) -> dict | None:
        """The reward model stage whose model learned the labels of rounds 0..r-1 (None for round 0 or without one)."""
        return self.get(f"round-{r - 1}/reward") if r > 0 else None

    def run(self, stage: str, work):
        """The stage's recorded result, or `work()`'s, recorded with its wall time."""
        if not self.done(stage):
            start = time.perf_counter()
            result = work()
            self.seconds[stage] = round(time.perf_counter() - start, 2)
            self.finish(stage, result)
        return self.get(stage)

    def finish(self, stage: str, result) -> None:
        self.data["stages"][stage] = result
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.path)  # a crash leaves the old state or the new one, never half of it


def run_loop(store: Store, config: LoopConfig, log=print) -> list[dict]:
    if config.train_on not in ("round", "all"):
        raise ValueError(f"train_on must be round or all, not {config.train_on!r}")
    from store.importers import import_file
    from training.loop.judges import load_judge
    from training.loop.loop_report import report_rows, write_report

    judge = load_judge(config.judge, store)  # fail before any work when the judge spec is wrong
    report_dir = Path(config.report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    state = LoopState(report_dir / f"{config.name}.state.json", config)

    def import_prompts():
        summary = import_file(store, Path(config.prompts_file), kind="prompts", source=Path(config.prompts_file).name)
        return {"inserted": summary.inserted, "duplicates": summary.duplicates}

    state.run("import", import_prompts)
    stopped = None
    for r in range(config.rounds + 1):
        try:
            _run_round(store, config, state, judge, r, log)
        except LoopError as exc:
            stopped = exc
            break

    def report_so_far(r: int, last: int) -> None:
        # A run cut during the evaluation (a GPU call's time limit) still leaves the figures it measured.
        if r < last:
            rows_so_far = report_rows(store, state, r)
            write_report(config, state, rows_so_far, report_dir, log=lambda *_: None, evaluating_to=last)

    if stopped is None:
        last = config.rounds
        _evaluate(store, config, state, judge, last, "eval", log, report_so_far)
    else:
        # The checkpoints before the one that failed its health check are still worth a report: the lead sees how
        # far the loop got and what the labels did until then. The stages are named after the rounds they cover (the
        # held-out pairs of those rounds), so a resumed run that gets further evaluates again.
        last = r
        if last == 0:
            raise stopped
        log(f"the loop stopped in round {r}; evaluating rounds 0 to {last}")
        _evaluate(store, config, state, judge, last, f"eval-rounds-0-{last}", log, report_so_far)
    rows = report_rows(store, state, last)
    write_report(config, state, rows, report_dir, log, stopped=str(stopped) if stopped else None)
    if stopped is not None:
        raise stopped
    return rows


def _run_round(store: Store, config: LoopConfig, state: LoopState, judge, r: int, log) -> None:
    """Round r's stages; the last round only starts (its checkpoint is evaluated, not labeled)."""
    from training.loop.judges import label_with_judge

    started = state.run(f"round-{r}/start", lambda: _start(store, state, r))
    round_id = started["round"]
    log(f"== round {r} (store round {round_id}, checkpoint {started['checkpoint_id']})")
    if r == config.rounds:
        return
    for split, wanted in (("train", config.pairs_per_round), ("heldout", config.heldout_pairs)):
        if wanted > 0:
            state.run(f"round-{r}/generate-{split}", partial(_generate, store, config, round_id, split, wanted, log))

    def judge_round():
        name = config.judge.partition(":")[2]
        result = label_with_judge(store, judge, name, round_id, config.noise, seed=config.seed + r)
        log(f"sim:{name} judged {result.judged} pairs, {result.decisive} of them a or b ({result.flipped} flipped)")
        return {"judged": result.judged, "decisive": result.decisive, "flipped": result.flipped}

    state.run(f"round-{r}/judge", judge_round)
    state.run(f"round-{r}/export", lambda: _export(store, config, r, round_id))
    if config.reward_model:
        state.run(f"round-{r}/reward", lambda: _train_reward(store, config, r, state))
    trained = state.run(f"round-{r}/train", lambda: _train(store, config, r, state))
    state.run(f"round-{r}/health", lambda: _check_health(store, config, trained["checkpoint_id"], log))


def _start(store: Store, state: LoopState, r: int) -> dict:
    from training.loop.rounds import start_round
    from training.model_source import default_model

    if r == 0:
        checkpoint_id = store.register_checkpoint("base", default_model())
    else:
        checkpoint_id = state.get(f"round-{r - 1}/train")["checkpoint_id"]
    round_id, checkpoint = start_round(store, checkpoint_id)
    return {"round": round_id, "checkpoint_id": checkpoint["id"]}


def _generate(store: Store, config: LoopConfig, round_id: int, split: str, wanted: int, log) -> dict:
    """Generate until the round has `wanted` pairs of the split (prompts whose samples give no pair are used up)."""
    from training.loop.generation import GenerateConfig, generate

    produced = prompts = responses = 0
    selection = ""
    while (missing := wanted - store.count_pairs(round_id, split, "samples")) > 0:
        # A quarter more prompts than pairs missing: some prompts' samples allow no pair.
        overrides = dict(num_prompts=math.ceil(missing * 1.25), seed=config.seed, round=round_id, split=split,
                         strategy="samples")
        if config.samples_per_prompt:
            overrides["samples_per_prompt"] = config.samples_per_prompt
        try:
            summary = generate(store, build(GenerateConfig, _yaml(config.generate_config), overrides), progress=False)
        except StoreError as exc:  # every prompt of the split used: the round stays short, and says so
            log(f"round {round_id}: {exc}; {wanted - missing} of {wanted} {split} pairs")
            break
        produced, prompts, responses = produced + summary.pairs, prompts + summary.prompts, responses + summary.responses
        selection = summary.selection
        log(f"round {round_id} {split}: {summary.pairs} pairs from {summary.prompts} prompts "
            f"({summary.unpaired_prompts} without a pair, {summary.truncated} responses cut off) in {summary.seconds:.0f} s")
        if summary.pairs == 0:  # nothing this model samples makes a pair (all cut off, say): more prompts won't help
            log(f"round {round_id}: no {split} pair from {summary.prompts} prompts; {wanted - missing} of {wanted}")
            break
    return {"pairs": store.count_pairs(round_id, split, "samples"), "new_pairs": produced, "prompts": prompts,
            "responses": responses, "selection": selection}


def _export(store: Store, config: LoopConfig, r: int, round_id: int) -> dict:
    from training.loop.export import ExportConfig, export

    name = f"{config.name}-round-{r}"
    if name not in {e["name"] for e in store.list_exports()}:  # an export registered before a crash is reused
        scope = str(round_id) if config.train_on == "round" else "all"  # the loop's database holds its rounds only
        export(store, build(ExportConfig, None, {"name": name, "round": scope}))
    return {"export": name}


def _train(store: Store, config: LoopConfig, r: int, state: LoopState) -> dict:
    from training.algorithms.dpo import DPOTrainConfig, train  # before transformers: Unsloth patches it on import

    overrides = dict(
        export=state.get(f"round-{r}/export")["export"],
        parent=state.get(f"round-{r}/start")["checkpoint_id"],
        output_dir=str(Path("checkpoints") / config.name / f"round-{r}" / "dpo"),
        backend=config.backend,
    )
    if config.dpo_steps:
        overrides |= dict(min_steps=config.dpo_steps, max_steps=config.dpo_steps)
    keep = ("train_loss", "first_loss", "last_loss", "global_step", "train_runtime", "heldout_reward_accuracy")
    result, trained = _run_trainer(store, train, build(DPOTrainConfig, _yaml(config.dpo_config), overrides), keep)
    last = result.metrics.get("last_log", {})
    trained["metrics"] |= {k: v for k, v in last.items() if k.startswith("rewards/")}
    return trained


def _train_reward(store: Store, config: LoopConfig, r: int, state: LoopState) -> dict:
    """A reward model of the round's export (the labels DPO learns from next), from the base model."""
    from training.algorithms.reward import RewardTrainConfig, train

    overrides = dict(export=state.get(f"round-{r}/export")["export"], parent=state.get("round-0/start")["checkpoint_id"],
                     output_dir=str(Path("checkpoints") / config.name / f"round-{r}" / "reward"),
                     backend=config.backend)
    if config.reward_min_steps:
        overrides["min_steps"] = config.reward_min_steps
    keep = ("train_loss", "global_step", "train_runtime", "heldout_accuracy", "heldout_pairs")
    return _run_trainer(store, train, build(RewardTrainConfig, _yaml(config.reward_config), overrides), keep)[1]


def _run_trainer(store: Store, train, train_config, keep: tuple[str, ...]) -> tuple:
    """(the run's result, the stage's record: its checkpoint and the metrics named in `keep`). A run interrupted
    before left a trainer checkpoint in its output_dir: it is continued, not started over."""
    resume = any(Path(train_config.output_dir).glob("checkpoint-*"))
    result = train(store, train_config, resume=resume, overwrite=not resume)
    metrics = {k: result.metrics[k] for k in keep if k in result.metrics}
    return result, {"checkpoint_id": result.checkpoint_id, "metrics": metrics}


def _check_health(store: Store, config: LoopConfig, checkpoint_id: int, log) -> dict:
    """Sample the new checkpoint on a few held-out prompts: stop the loop if its answers are mostly empty or its KL
    to the base model ran past the bound (what a learning rate too high for the data does to a policy)."""
    from training.loop.evaluation import EvalConfig, Evaluator, spec_of

    eval_config = build(EvalConfig, _yaml(config.eval_config), {"prompts": config.health_prompts, "seed": config.seed})
    eval_config.samples_per_prompt = 1
    evaluator = Evaluator(store, eval_config, log=lambda *_: None)
    if not evaluator.prompts:
        return {"checked": False}
    checkpoint = store.get_checkpoint(checkpoint_id)
    spec = spec_of(checkpoint)
    samples = [s for row in evaluator.samples(spec) for s in row]
    empty = sum(not s.text.strip() for s in samples) / len(samples)
    cut = sum(not s.stopped for s in samples) / len(samples)
    kl = evaluator.kl_to_base(spec, evaluator.base_spec(checkpoint))["value"]
    health = {"checked": True, "empty_share": empty, "cut_share": cut, "kl_to_base": kl, "prompts": len(samples)}
    log(f"health of checkpoint {checkpoint_id}: {empty:.0%} empty answers, {cut:.0%} cut at the token limit, "
        f"KL to base {kl:.2f} nats per response")
    broken = empty > config.max_empty_share or cut > config.max_cut_share
    if broken or kl > config.max_kl:
        # A policy whose answers still read (and end) but moved far from the base is not "collapsed": say which.
        what = "collapsed" if broken else "moved past the KL bound"
        raise LoopError(
            f"checkpoint {checkpoint_id} {what}: of {len(samples)} held-out answers {empty:.0%} are empty "
            f"(bound {config.max_empty_share:.0%}) and {cut:.0%} never end (bound {config.max_cut_share:.0%}); "
            f"its KL to the base model is {kl:.1f} nats per response (bound {config.max_kl:g}). Lower the DPO "
            f"learning rate in {config.dpo_config} or --dpo-steps, raise beta, or start again from an earlier "
            "checkpoint; the loop stops here."
        )
    return health


def _evaluate(
    store: Store, config: LoopConfig, state: LoopState, judge, last: int, stage: str, log, evaluated=None
) -> None:
    """`prefloop eval` over the checkpoints of rounds 0..last, plus each round's judge win rates over round 0 and the
    previous round, on the same samples. One stage per checkpoint (`<stage>/round-<r>`), so a run cut short during
    the evaluation resumes with the checkpoints it has not finished; `evaluated(r, last)` is called after each newly
    evaluated one."""
    from training.loop.evaluation import EvalConfig, Evaluator, evaluate, judged_outcome, spec_of

    eval_config = build(EvalConfig, _yaml(config.eval_config), {"seed": config.seed})
    evaluator = Evaluator(store, eval_config, log)
    if not evaluator.prompts:
        raise StoreError("no held-out prompts: the win rates need some (import more prompts)")
    checkpoints = [store.get_checkpoint(state.get(f"round-{r}/start")["checkpoint_id"]) for r in range(last + 1)]
    outcome = judged_outcome(judge, evaluator.prompts)

    def evaluate_round(r: int) -> dict:
        checkpoint = checkpoints[r]
        reward = state.reward_model_for(r)
        reward_models = [store.get_checkpoint(reward["checkpoint_id"])] if reward else []
        evaluate(store, eval_config, [checkpoint, *reward_models], log, evaluator)
        rows = []
        comparisons = [("judge_win_rate_vs_round0", 0), ("judge_win_rate_vs_previous", r - 1)] if r > 0 else []
        for metric, other in comparisons:
            estimate = evaluator.win_rate(spec_of(checkpoint), spec_of(checkpoints[other]), outcome)
            rows.append(estimate.row(metric, judge=config.judge, other_checkpoint=checkpoints[other]["id"],
                                     prompts=len(evaluator.prompts)))
            log(f"round {r} vs round {other} under {config.judge}: {estimate.value:.3f} "
                f"[{estimate.ci_low:.3f}, {estimate.ci_high:.3f}] n={estimate.n}")
        if rows:
            store.add_eval_results(checkpoint["id"], state.get(f"round-{r}/start")["round"], rows)
        return {"checkpoint": checkpoint["id"], "win_rates": rows}

    for r in range(last + 1):
        if state.done(f"{stage}/round-{r}"):  # a resumed run: evaluated and reported before
            continue
        state.run(f"{stage}/round-{r}", partial(evaluate_round, r))
        if evaluated:
            evaluated(r, last)


def _yaml(path: str) -> Path | None:
    return Path(path) if path else None
