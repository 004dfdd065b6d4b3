"""Every plugin trainer's network (one per distinct network) trains under DDP exactly as nnU-Net wraps it (``DDP(network)``, no
``find_unused_parameters``), deep supervision off and on, with the trainer's own loss: two gloo processes on
the CPU, several iterations, gradients identical on both ranks.

nnU-Net's multi-GPU path is nccl on CUDA; the wrapping, the reducer's unused-parameter check and the
trainer's loss (``_build_loss`` with ``is_ddp`` set by nnU-Net itself) are the same on gloo.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trainer_test_helpers import TINY_NETWORK, dataset_json, small_plans

WORLD = 2
ITERATIONS = 3
PATCH = (64, 64)  # tiny network, stages 16, 8, 4, 2 tokens: fast, and every deep-supervision scale exists


def _check_trainer(trainer_cls, deep_supervision: bool, rank: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    cls = type(f"{trainer_cls.__name__}_ddp_ds{int(deep_supervision)}", (trainer_cls,),
               {"network_options": {**trainer_cls.network_options, **TINY_NETWORK}, "deep_supervision": deep_supervision})
    trainer = cls(small_plans(PATCH), "2d", 0, dataset_json(2), torch.device("cpu"))
    assert trainer.is_ddp  # nnU-Net's own detection: the loss is built as for -num_gpus 2
    net = cls.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1,
                                         trainer.label_manager.num_segmentation_heads,
                                         enable_deep_supervision=trainer.enable_deep_supervision)
    net = DDP(torch.nn.SyncBatchNorm.convert_sync_batchnorm(net))  # nnU-Net: DDP(network, device_ids=[rank])
    loss_fn = trainer._build_loss()
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.01)
    scales = trainer._get_deep_supervision_scales()
    gen = torch.Generator().manual_seed(1000 + rank)  # each rank its own batch, as a DistributedSampler gives
    agree = []  # checked after the loop, so a reducer error of the second iteration shows first
    for _ in range(ITERATIONS):
        data = torch.randn(2, 1, *PATCH, generator=gen)
        labels = torch.randint(0, 3, (2, 1, *PATCH), generator=gen).float()
        target = labels if scales is None else [
            torch.nn.functional.interpolate(labels, scale_factor=s[0], mode="nearest-exact") for s in scales]
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(data), target)
        loss.backward()  # DDP's reducer raises in the next iteration if a parameter got no gradient
        trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
        missing = [n for n, p in trainable if p.grad is None]
        grads = torch.cat([p.grad.flatten() for _, p in trainable if p.grad is not None])
        gathered = [torch.empty_like(grads) for _ in range(WORLD)]
        dist.all_gather(gathered, grads)
        agree.append(all(torch.equal(g, gathered[0]) for g in gathered))
        optimizer.step()
    assert not missing, f"{cls.__name__}: no gradient for {missing}"
    assert all(agree), f"{cls.__name__}: gradients differ between ranks in iterations {agree}"
    frozen = sorted(n for n, p in net.named_parameters() if not p.requires_grad)
    return {"trainer": cls.__name__, "loss": float(loss.detach()), "frozen": frozen,
            "weights": list(getattr(loss_fn, "weight_factors", []))}


def distinct_networks() -> list[tuple[type, bool]]:
    """One trainer per distinct (network options, deep supervision) among all plugin trainers, DS off and
    on: trainers that differ only in their recipe or schedule build the same network."""
    from nnunet_swin.trainers import TRAINERS

    chosen: dict[str, tuple[type, bool]] = {}
    for trainer in TRAINERS:
        for ds in (False, True):
            chosen.setdefault(json.dumps([trainer.network_kwargs(), ds], sort_keys=True), (trainer, ds))
    return list(chosen.values())


def _worker(rank: int, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        rows = [_check_trainer(t, ds, rank) for t, ds in distinct_networks()]
        if rank == 0:
            with open(out_file, "w") as f:
                json.dump(rows, f)
    finally:
        dist.destroy_process_group()


def test_every_trainer_trains_under_ddp_with_and_without_deep_supervision(tmp_path, monkeypatch):
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / var).mkdir()
        monkeypatch.setenv(var, str(tmp_path / var))  # the spawned ranks inherit it (trainer log files)
    # Under DDP nnU-Net's trainer believes it is on CUDA and would compile the Dice loss with inductor
    # (minutes on the CPU); the loss weights do not depend on it (see test_units' loss-weight test).
    monkeypatch.setenv("nnUNet_compile", "f")
    out = tmp_path / "rows.json"
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(out)), nprocs=WORLD, join=True)
    rows = json.loads(out.read_text())
    kinds = distinct_networks()
    assert len(rows) == len(kinds) == 12  # skips 0-3, bilinear, transposed conv; DS off and on
    heads = [f"module.decoder.seg_layers.{i}.weight" for i in range(4)]
    for row in rows:
        ds_on = row["trainer"].endswith("_ds1")
        assert row["frozen"] == (heads[3:] if ds_on else heads[1:]), row  # exactly the heads the loss ignores
        assert row["weights"] == (pytest.approx([4 / 7, 2 / 7, 1 / 7, 0.0]) if ds_on else [])
        assert row["loss"] == row["loss"] and row["loss"] > 0  # finite and real
