"""torch.compile(network) with inductor, as nnU-Net calls it (default backend and mode, not fullgraph): no
graph breaks, a bounded number of graphs, no recompilation over nnU-Net's train -> eval + no_grad validation
-> train cycle, and the compiled step computes what eager computes."""

import copy

import pytest
import torch
from torch._dynamo.utils import counters

from nnunet_swin import SwinUnet

# tiny but complete: shifted blocks, padded windows (64x96 -> 16x24 at window 7), masks, drop path, deep supervision
TINY = dict(embed_dim=16, depths=(2, 1, 1, 1), num_heads=(1, 2, 2, 4), drop_path_rate=0.1, deep_supervision=True)


def _grads(model):
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _train_step(net, model, x):
    model.train()
    model.decoder.deep_supervision = True  # nnU-Net's trainer turns deep supervision on for training
    model.zero_grad(set_to_none=True)
    outs = net(x)
    sum(o.float().mean() / (i + 1) for i, o in enumerate(outs)).backward()
    return outs


def _validate(net, model, x):
    model.eval()
    model.decoder.deep_supervision = False  # ... and off for validation
    with torch.no_grad():
        return net(x)


# drop path draws what eager draws; config.patch restores the setting (monkeypatch's undo deletes it from
# inductor's config module, which breaks every later compile in the same process)
@torch._inductor.config.patch(fallback_random=True)
def test_inductor_compile_without_graph_breaks_or_recompiles():
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = SwinUnet(1, 3, **TINY)
    eager = copy.deepcopy(model)
    net = torch.compile(model)  # exactly nnU-Net's call
    x = torch.randn(2, 1, 64, 96)

    torch.manual_seed(1)
    outs = _train_step(net, model, x)
    torch.manual_seed(1)
    ref = _train_step(eager, eager, x)
    for a, b in zip(outs, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(_grads(model), _grads(eager)):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(_validate(net, model, x), _validate(eager, eager, x), rtol=1e-4, atol=1e-5)

    graphs = counters["stats"]["unique_graphs"]
    assert graphs <= 2, dict(counters["stats"])  # one per mode: training (deep supervision) and validation
    for _ in range(2):  # nnU-Net's cycle, twice: nothing new compiles
        _train_step(net, model, x)
        _validate(net, model, x)
    assert counters["stats"]["unique_graphs"] == graphs, dict(counters["stats"])
    assert not counters["recompiles"], dict(counters["recompiles"])
    assert not counters["graph_break"], dict(counters["graph_break"])
