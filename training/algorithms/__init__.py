"""One readable file per training algorithm, each a config dataclass and a `train` function over the same pieces:
`sft`, `reward` (reward model), `dpo`, `ppo` and `rloo`, plus `merge` (adapter into base). `run` is what they share:
the export a run reads, its parent checkpoint, the output directory, TRL's arguments, and registering the result;
`callbacks` holds the trainer callbacks. Nothing imports from an algorithm file but the command line."""
