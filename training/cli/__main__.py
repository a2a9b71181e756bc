"""`python -m training.cli ...` = `prefloop ...` (what a multi-GPU run relaunches in each process)."""

import sys

from training.cli import main

sys.exit(main())
