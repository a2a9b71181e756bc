"""Candidate-generation throughput: transformers' `generate` against training/engine/decode.py's static decoder.

    # GPU box, with bench/gpu_check.sh's environment (PYTHONPATH=/root/devcarry/site:/root/work/pkg:$PWD,
    # PREFLOOP_CACHE=/root/work/cache, HF_HUB_OFFLINE=1) and the embedded model converted (`python3 -m training.cli
    # model`); the JSON goes to $OUT/gen_throughput.json:
    python3 bench/gen_throughput.py
    python3 bench/gen_throughput.py --batch-sizes 512 --hf-batch-sizes 32 --no-graphs   # the decoder, no graphs
    # CPU, a tiny random model, seconds (tests/test_generate.py runs this):
    .venv/bin/python bench/gen_throughput.py --smoke --out /tmp/gen_throughput.json

Workload: the first 256 prompts of store/seeds/prompts.jsonl (taken again from the start if it has fewer), with the chat
template and the generation prompt; each is sampled 2 times (temperature 1, top-p 0.95, top-k off: `prefloop
generate`'s settings), 256 new tokens per sequence. For the throughput figures both paths ignore the end-of-turn
token, so every sequence gets exactly 256 tokens and both do the same work: tokens/s = sequences x 256 / seconds.
Prompts are sorted by length into batches of batch / samples prompts, the same batches for both paths.

Paths, each at every batch size asked for (default 32, the kind of batch `prefloop generate` ran with, and 512, all
sequences at once), in the model's dtype (bfloat16 on a GPU):
  hf      model.generate (transformers, SDPA attention, dynamic cache); warm-up: one short call, not timed
  static  training.engine.decode.StaticDecoder: static KV cache and the decode step captured as a CUDA graph (--no-graphs:
          the same steps eagerly). Its first pass over the batches (graph capture included) is reported apart from
          the second pass, the steady state that tokens/s is computed from.
Greedy identity: every prompt once, greedy, stopping at the end-of-turn token, all prompts in one batch for both
paths: the share of sequences whose tokens match transformers' exactly, and where the others first differ. In the
model's dtype and, on a GPU, in float32 as well (bfloat16 ties and rounding let long greedy runs drift apart).
Each measurement that fails is recorded with its error and the rest still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SEED_PROMPTS = REPO / "store" / "seeds" / "prompts.jsonl"
SMOKE = dict(prompts=8, samples=2, new_tokens=12, batch_sizes="8,16", hf_batch_sizes="8,16")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="HF id or path (default: the embedded model; --smoke: tiny)")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--samples", type=int, default=2, help="sequences per prompt")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--batch-sizes", default="32,512", help="sequences per batch for the static decoder")
    parser.add_argument("--hf-batch-sizes", default="32,512", help="sequences per batch for transformers' generate")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0, help="batch i is seeded with seed + i")
    parser.add_argument("--no-graphs", action="store_true", help="run the static decoder without CUDA graphs")
    parser.add_argument("--skip-identity", action="store_true", help="no greedy identity check")
    parser.add_argument("--out", type=Path, help="JSON results (default: $OUT/gen_throughput.json when $OUT is set)")
    parser.add_argument("--smoke", action="store_true", help=f"CPU-sized run on a tiny random model: {SMOKE}")
    args = parser.parse_args()
    if args.smoke:
        for key, value in SMOKE.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    if args.out is None and os.environ.get("OUT"):
        args.out = Path(os.environ["OUT"]) / "gen_throughput.json"
    return args


def seed_conversations(n: int) -> list[list[dict]]:
    seeds = [json.loads(line)["messages"] for line in SEED_PROMPTS.read_text().splitlines() if line.strip()]
    return [seeds[i % len(seeds)] for i in range(n)]


def encode_prompts(tokenizer, conversations: list[list[dict]]) -> list[list[int]]:
    """Each conversation's prompt tokens, unpadded (batches are padded again once they are formed)."""
    from training.engine.sampling import chat_inputs

    inputs = chat_inputs(tokenizer, conversations)
    return [ids[mask.bool()].tolist() for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"])]


def left_pad(prompts: list[list[int]], pad_id: int):
    """(input_ids, attention_mask) of the prompts, padded on the left."""
    import torch

    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


class Bench:
    """The measurements, on one model and one list of encoded prompts."""

    def __init__(self, args, model, tokenizer, prompts: list[list[int]]):
        import torch

        self.args, self.model, self.prompts = args, model, prompts
        self.eos, self.pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        self.cuda = model.device.type == "cuda"
        self.torch = torch

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def reset_memory(self) -> None:
        if self.cuda:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        return round(self.torch.cuda.max_memory_allocated() / 2**30, 2) if self.cuda else None

    def batches(self, batch_size: int, samples: int):
        """(input_ids, attention_mask) of the prompts, batch_size // samples at a time, longest prompts first."""
        from training.engine.decode import length_buckets

        for indices in length_buckets([len(p) for p in self.prompts], max(1, batch_size // samples)):
            yield left_pad([self.prompts[i] for i in indices], self.pad)

    def hf(self, model, ids, mask, samples: int, greedy: bool, eos: int | None, seed: int, new_tokens: int):
        torch = self.torch
        sampling = dict(do_sample=True, temperature=self.args.temperature, top_p=self.args.top_p, top_k=0)
        if greedy:
            sampling = dict(do_sample=False)
        torch.manual_seed(seed)
        with torch.no_grad():
            output = model.generate(
                input_ids=ids.to(model.device),
                attention_mask=mask.to(model.device),
                max_new_tokens=new_tokens,
                num_return_sequences=samples,
                eos_token_id=eos,  # None: never stop, whatever the model's generation config says
                pad_token_id=self.pad,
                **sampling,
            )
        return output[:, ids.shape[1] :].cpu()

    def static(self, decoder, ids, mask, samples: int, greedy: bool, eos: int | None, seed: int, new_tokens: int):
        return decoder.generate(
            ids.repeat_interleave(samples, dim=0),
            mask.repeat_interleave(samples, dim=0),
            new_tokens,
            greedy=greedy,
            temperature=self.args.temperature,
            top_p=self.args.top_p,
            eos_token_id=eos,
            pad_token_id=self.pad,
            seed=seed,
        )

    def timed_pass(self, generate, batch_size: int) -> float:
        """Seconds for every prompt x samples x new tokens, EOS ignored, in batches of `batch_size` sequences."""
        args = self.args
        self.sync()
        start = time.perf_counter()
        for i, (ids, mask) in enumerate(self.batches(batch_size, args.samples)):
            tokens = generate(ids, mask, args.samples, False, None, args.seed + i, args.new_tokens)
            expected = (ids.shape[0] * args.samples, args.new_tokens)
            if tuple(tokens.shape) != expected:
                raise RuntimeError(f"generated {tuple(tokens.shape)} tokens, expected {expected}")
        self.sync()
        return time.perf_counter() - start

    def throughput(self, path: str, batch_size: int) -> dict:
        from training.engine.decode import StaticDecoder

        args = self.args
        tokens = len(self.prompts) * args.samples * args.new_tokens
        result = dict(path=path, batch=batch_size, sequences=len(self.prompts) * args.samples, tokens=tokens)
        self.reset_memory()
        if path == "hf":
            ids, mask = next(self.batches(batch_size, args.samples))
            start = time.perf_counter()
            self.hf(self.model, ids, mask, args.samples, False, None, args.seed, 4)
            result["warmup_s"] = round(time.perf_counter() - start, 3)
            seconds = self.timed_pass(lambda *a: self.hf(self.model, *a), batch_size)
        else:
            decoder = StaticDecoder(self.model, cuda_graphs=self.cuda and not args.no_graphs)
            generate = lambda *a: self.static(decoder, *a)  # noqa: E731
            result["first_pass_s"] = round(self.timed_pass(generate, batch_size), 3)
            seconds = self.timed_pass(generate, batch_size)
            result["cuda_graphs"] = decoder.cuda_graphs
            if decoder.cuda_graphs:
                result.update(capture_s=round(decoder.capture_seconds, 3), captures=decoder.captures)
        result.update(seconds=round(seconds, 3), tokens_per_s=round(tokens / seconds, 1), peak_gib=self.peak_gib())
        return result

    def identity(self, model, dtype: str) -> dict:
        """Greedy, EOS respected, every prompt once in one batch: our tokens against transformers'."""
        from training.engine.decode import StaticDecoder

        args = self.args
        ids, mask = next(self.batches(len(self.prompts), 1))
        expected = self.hf(model, ids, mask, 1, True, self.eos, 0, args.new_tokens).tolist()
        decoder = StaticDecoder(model, cuda_graphs=self.cuda and not args.no_graphs)
        got = self.static(decoder, ids, mask, 1, True, self.eos, 0, args.new_tokens).tolist()
        divergences = []
        for ours, theirs in zip(got, expected):
            ours, theirs = until_eos(ours, self.eos), until_eos(theirs, self.eos)
            if ours != theirs:
                first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
                divergences.append(min(len(ours), len(theirs)) if first is None else first)  # None: one is a prefix
        return dict(
            dtype=dtype,
            sequences=len(got),
            identical=len(got) - len(divergences),
            identical_share=round(1 - len(divergences) / len(got), 4),
            first_divergence_min=min(divergences, default=None),
            first_divergence_median=statistics.median(divergences) if divergences else None,
            mean_tokens=round(statistics.mean(len(until_eos(row, self.eos)) for row in expected), 1),
        )


def load_float32(path: str):
    """The model again in float32 on the GPU, for the identity check without bfloat16 rounding."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to("cuda").eval()


def until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def report(results: dict) -> str:
    lines = [
        f"{results['device']}, {results['dtype']}, torch {results['torch']}, transformers {results['transformers']}; "
        f"{results['prompts']} prompts x {results['samples']} samples x {results['new_tokens']} new tokens "
        f"(EOS ignored), prompt tokens {results['prompt_tokens']}",
        "",
        "| path | batch | warm-up s | capture s | first pass s | steady s | tokens/s | peak GiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["throughput"]:
        if "error" in r:
            lines.append(f"| {r['path']} | {r['batch']} | failed: {r['error'].splitlines()[0][:80]} ||||||")
            continue
        name = r["path"] + ("" if r.get("cuda_graphs", True) else " (no graphs)")
        cells = [r.get("warmup_s", ""), r.get("capture_s", ""), r.get("first_pass_s", ""), r["seconds"]]
        lines.append(
            f"| {name} | {r['batch']} | " + " | ".join(str(c) for c in cells) + f" | {r['tokens_per_s']:,.0f} | "
            f"{r['peak_gib'] if r['peak_gib'] is not None else '-'} |"
        )
    if results["speedups"]:
        speedups = ", ".join(f"{key} {value}x" for key, value in results["speedups"].items())
        lines += ["", f"Speedup, static tokens/s over hf tokens/s: {speedups}"]
    if results["identity"]:
        lines += [
            "",
            "| greedy identity | sequences | identical | first divergence (min / median) | mean tokens |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in results["identity"]:
            if "error" in r:
                lines.append(f"| {r['dtype']} | failed: {r['error'].splitlines()[0][:80]} ||||")
                continue
            divergence = f"{r['first_divergence_min']} / {r['first_divergence_median']}"
            share = f"{r['identical']} ({r['identical_share']:.1%})"
            lines.append(f"| {r['dtype']} | {r['sequences']} | {share} | {divergence} | {r['mean_tokens']} |")
    return "\n".join(lines)


def attempt(errors: list[str], record: dict, fn, *args) -> dict:
    """fn(*args), or `record` with the error when it fails (printed now, counted for the exit status)."""
    print(" ".join(f"{key} {value}" for key, value in record.items()), "...", file=sys.stderr, flush=True)
    try:
        return fn(*args)
    except Exception as exc:  # one failed measurement must not lose the others
        traceback.print_exc()
        error = f"{type(exc).__name__}: {exc}"
        errors.append(f"{record}: {error}")
        return dict(record, error=error)


def main() -> int:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    from training.model_source import EMBEDDED_NAME, resolve_model
    from training.models import load_for_generation

    with tempfile.TemporaryDirectory() as scratch:
        model_name = args.model
        if model_name is None and args.smoke:
            from tests.tiny_model import build_tiny_model

            model_name = str(build_tiny_model(Path(scratch) / "tiny"))
        model_name = resolve_model(model_name or EMBEDDED_NAME)
        checkpoint = {"id": None, "base_model": model_name, "adapter_path": None}
        model, tokenizer = load_for_generation(checkpoint, unsloth=False)
        prompts = encode_prompts(tokenizer, seed_conversations(args.prompts))
        bench = Bench(args, model, tokenizer, prompts)
        lengths = [len(p) for p in prompts]
        results = dict(
            device=torch.cuda.get_device_name() if bench.cuda else f"CPU, {torch.get_num_threads()} threads",
            dtype=str(model.dtype).removeprefix("torch."),
            torch=torch.__version__,
            transformers=transformers.__version__,
            model=model_name,
            prompts=len(prompts),
            samples=args.samples,
            new_tokens=args.new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            prompt_tokens=dict(min=min(lengths), mean=round(statistics.mean(lengths), 1), max=max(lengths)),
            throughput=[],
            speedups={},
            identity=[],
        )
        errors: list[str] = []
        runs = [("hf", int(b)) for b in args.hf_batch_sizes.split(",")]
        runs += [("static", int(b)) for b in args.batch_sizes.split(",")]
        for path, batch in runs:
            results["throughput"].append(attempt(errors, dict(path=path, batch=batch), bench.throughput, path, batch))
        speeds = {(r["path"], r["batch"]): r["tokens_per_s"] for r in results["throughput"] if "error" not in r}
        for (path, batch), speed in speeds.items():
            if path == "static":
                for (other, hf_batch), hf_speed in speeds.items():
                    if other == "hf":
                        results["speedups"][f"static@{batch} / hf@{hf_batch}"] = round(speed / hf_speed, 2)
        if not args.skip_identity:
            dtype = results["dtype"]
            results["identity"].append(attempt(errors, dict(identity=dtype), bench.identity, model, dtype))
            if bench.cuda and model.dtype != torch.float32:
                reload = lambda: bench.identity(load_float32(model_name), "float32")  # noqa: E731
                results["identity"].append(attempt(errors, dict(identity="float32"), reload))
        results["errors"] = errors
    print(report(results))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
