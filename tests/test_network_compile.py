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
#: (options, input, backend): 2D as above with inductor; 3D with an anisotropic plan (depth kept by the embedding,
#: merged twice; 4x16x8 padded windows). Graph breaks, graph counts and recompiles are decided by dynamo, the
#: same for every backend; 3D under inductor as well takes minutes of C++ compilation, too long for the suite, so
#: 3D lowers through AOT autograd's graphs (aot_eager) without C++ codegen.
CASES = {"2d": ({}, (2, 1, 64, 96), "inductor"),
         "3d": (dict(spatial_dims=3, patch_size=(1, 4, 4), merge_strides=[(2, 2, 2), (2, 2, 2), (1, 2, 2)],
                     window_size=(3, 7, 7)), (2, 1, 4, 64, 32), "aot_eager")}


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
@pytest.mark.parametrize("case", CASES)
@torch._inductor.config.patch(fallback_random=True)
def test_inductor_compile_without_graph_breaks_or_recompiles(case):
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    options, shape, backend = CASES[case]
    model = SwinUnet(1, 3, **TINY, **options)
    eager = copy.deepcopy(model)
    net = torch.compile(model, backend=backend)  # nnU-Net's call (inductor is the default backend)
    x = torch.randn(*shape)

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
