"""The numeric engine the loop and the algorithms share: `sampling` (the one sampler: token ids, texts, masks;
`decode` is its static-cache CUDA-graph engine on a GPU), `logprobs` (per-token log-probs of given completions),
`reward_scoring` (load a reward model and score responses), and the trainers' throughput levers: `batching`
(length-grouped batches), `lm_head` (the plain LM head for CPU), `reference_logps` (cached reference log-probs)."""
