"""Saved-for-backward memory: the real count (bench's) and the fake-tensor estimate (the trainers' log)."""

import pytest
import torch

from nnunet_swin import SwinUnet
from nnunet_swin.memory import estimated_saved_bytes, saved_bytes
from nnunet_swin.network import strides_from_pooling


def test_saved_activation_memory_of_the_default_model():
    """The memory target, parameters that backward holds included: the official model saves 303 MB per
    224x224 image, ours must save <= 250 MB."""
    act, total = saved_bytes(SwinUnet(1, 9), torch.randn(1, 1, 224, 224))
    assert total / 2**20 <= 250
    ckpt_act, _ = saved_bytes(SwinUnet(1, 9, gradient_checkpointing=True), torch.randn(1, 1, 224, 224))
    assert ckpt_act <= act / 2


@pytest.mark.parametrize("checkpointing", [False, True])
def test_estimate_equals_a_real_forward_and_leaves_the_network_usable(checkpointing):
    """The fake-tensor count is the real forward's unique saved storage; the stage geometries it builds on
    fake tensors are shared as real ones are, and do not stay for the real forward after it."""
    net = SwinUnet(1, 3, spatial_dims=3, embed_dim=12, depths=(2, 1, 1, 1), num_heads=(1, 2, 2, 4),
                   gradient_checkpointing=checkpointing,
                   **strides_from_pooling([[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]]))
    shape = (2, 1, 4, 96, 32)  # a size no other test meets: its geometries are first built on fake tensors
    fake = estimated_saved_bytes(net.eval(), shape)
    assert not net.training  # mode restored
    torch.manual_seed(0)
    real, _ = saved_bytes(net.train(), torch.randn(*shape))
    assert fake == real > 0


def test_swinunet_is_measured_on_the_meta_device_as_on_the_cpu():
    """Large 3D patches are measured on ``meta`` (shapes only): the count must be the CPU's."""
    torch.manual_seed(0)
    net = SwinUnet(1, 2, embed_dim=12, num_heads=(1, 2, 2, 4))
    cpu = saved_bytes(net, torch.randn(1, 1, 64, 96))
    meta = saved_bytes(net.to("meta"), torch.empty(1, 1, 64, 96, device="meta"))
    assert meta == cpu
