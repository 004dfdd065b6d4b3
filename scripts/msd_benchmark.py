#!/usr/bin/env python
"""Thin wrapper: ``python scripts/msd_benchmark.py TASK_DIR_OR_TAR ...`` == ``nnunet-swin benchmark-msd TASK_DIR_OR_TAR ...``."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nnunet_swin.experiments.msd_benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
