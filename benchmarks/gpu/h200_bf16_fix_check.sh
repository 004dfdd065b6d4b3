#!/usr/bin/env bash
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# Check after the autocast fix (c992673): bf16 forward+backward on CUDA, then the H200 bench table.
python3 -c "
import torch
from nnunet_swin.network import SwinUnet
m = SwinUnet(1, 9, deep_supervision=False).cuda(); x = torch.randn(2, 1, 224, 224, device='cuda')
with torch.autocast('cuda', dtype=torch.bfloat16): y = m(x)
y.float().mean().backward(); print('bf16 fwd+bwd ok', torch.isfinite(m.encoder.patch_embed.proj.weight.grad).all().item())
"
timeout 150 python3 benchmarks/gpu/h200_nocompile.py 2>&1 | grep -v -i warn | grep "|"
