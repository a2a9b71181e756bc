"""Everything after the labels: the loop's stages (`training.loop`), the training algorithms (`training.algorithms`),
the numeric engine they share (`training.engine`), one model loader (`models`), config dataclasses (`config`),
the metrics the dashboard also reads (`metrics`), and the `prefloop` command line on top (`training.cli`)."""
