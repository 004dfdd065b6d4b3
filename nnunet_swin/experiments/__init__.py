"""Experiments that drive nnU-Net and read its result files: benchmarks and ablations."""
