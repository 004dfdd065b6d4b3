#!/usr/bin/env python
"""Same as ``nnunet-swin demo`` (for a source checkout without the console script):

    python scripts/demo.py [--epochs N] [--workdir DIR] ...
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nnunet_swin.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
