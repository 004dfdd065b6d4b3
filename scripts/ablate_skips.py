#!/usr/bin/env python
"""Thin wrapper: ``python scripts/ablate_skips.py -d DATASET ...`` == ``nnunet-swin ablate-skips -d DATASET ...``."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nnunet_swin.experiments.ablation import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
