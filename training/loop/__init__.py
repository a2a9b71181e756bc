"""The loop's stages, in the order a round runs them: `rounds` (start a round from a checkpoint), `generation`
(sample k responses per prompt and pick the pair worth a judgment, `pair_selection`), labeling (people in the app, or
a simulated annotator from `judges`), `export` (final labels to a Hugging Face dataset), training (`training.algorithms`)
and `evaluation` (win rate, held-out accuracy, KL, length). `loop_sim` runs them all headless; `loop_report` writes its
table and plot."""
