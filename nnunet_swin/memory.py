"""What a training forward keeps for backward, measured rather than modelled; used by ``nnunet-swin bench``
and by the trainers' log line. Imports torch only, like the network."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import nn

__all__ = ["estimated_saved_bytes", "saved_bytes"]


def _saved_storages(model: nn.Module, x: torch.Tensor, autocast: torch.dtype | None
                    ) -> tuple[dict[int, int], object]:
    """Bytes of every storage autograd saves in one forward, keyed by the storage's own identity (its C++
    object, shared by all views of it; unlike the data pointer it also tells storages apart on the meta
    device and for fake tensors), and the output, whose graph keeps those storages alive."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage._cdata] = storage.nbytes()
        return t

    cast = torch.autocast(x.device.type, dtype=autocast) if autocast is not None else nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), cast:
        out = model(x)
    return seen, out


def saved_bytes(model: nn.Module, x: torch.Tensor, autocast: torch.dtype | None = None) -> tuple[int, int]:
    """Unique storage bytes kept for backward by one forward: activations only, and including the
    parameters that backward also holds on to (bench's "act+weights" column)."""
    seen, _ = _saved_storages(model, x, autocast)
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    return sum(n for key, n in seen.items() if key not in params), sum(seen.values())


def estimated_saved_bytes(model: nn.Module, input_shape: Sequence[int], autocast: torch.dtype | None = None) -> int:
    """``saved_bytes``' activations of one training forward of ``input_shape``, from shapes alone: the forward
    runs on fake tensors (no memory, no arithmetic), so it is cheap for any patch and batch. ``autocast``
    runs it under autocast to that dtype on the model's device type."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    device = next(model.parameters()).device
    was_training = model.training
    model.train()
    try:
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            seen, out = _saved_storages(model, torch.empty(*input_shape, device=device), autocast)
            # backward keeps parameters too, some as they are, some as the fake copies ops made of them (which
            # live, and so are found again by from_tensor, as long as the graph of ``out`` does)
            params = {q.untyped_storage()._cdata for p in model.parameters() for q in (p, mode.from_tensor(p))}
            return sum(n for key, n in seen.items() if key not in params)
    finally:
        model.train(was_training)
