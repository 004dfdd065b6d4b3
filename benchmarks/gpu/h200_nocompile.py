"""The H200 table of benchmarks/README.md: `nnunet-swin bench` rows without torch.compile (its compile did not
fit the lease), at 224 and 512, batch 24; results to $OUT/bench_<size>_b24.{csv,json}."""
import os, time, torch
import nnunet_swin.experiments.bench as b
keep = {"nnU-Net PlainConvUNet (DS)", "SwinUnet 3 skips", "SwinUnet bf16", "nnU-Net PlainConvUNet bf16", "SwinUnet grad checkpointing"}
orig = b.candidates
b.candidates = lambda *a, **k: [c for c in orig(*a, **k) if c.name in keep]
for hw in (224, 512):
    t = time.time()
    res = b.run_bench("cuda", (hw, hw), 24, 1, 9, 2, 6)
    print(b.format_table(res), f"\n[{time.time() - t:.0f} s]", flush=True)
    b.write_results(res, os.path.join(os.environ["OUT"], f"bench_{hw}_b24"), {"device": "cuda", "card": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "batch": 24, "patch": hw})
