#!/usr/bin/env python3
"""Same as `nnunet-swin bench ...` (a thin wrapper for running from a checkout)."""
import sys

from nnunet_swin.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
