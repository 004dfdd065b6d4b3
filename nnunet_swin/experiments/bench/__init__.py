"""Side-by-side speed and memory of SwinUnet, nnU-Net's default 2D CNN, the official Swin-Unet and MONAI's
SwinUNETR; with a 3D patch, of the 3D SwinUnet, nnU-Net's 3D CNN and MONAI's 3D SwinUNETR at nnU-Net's plan.

Everything runs in one process on one device so the ratios are fair: the same threads, the same
allocator, the same input. Times are medians over repeats after warm-up (with min and max), CPU
seconds are process time (robust when other processes share the cores), activation memory is the
unique storage saved for backward in one forward of one image, and peak memory is CUDA's max
allocated or, on the CPU, the process's peak RSS since the model's first step. Kernel launches are
the operations one steady training step sends to the device (``count_kernel_launches``); with
compile on, a row also gets ``torch.compile(model)``'s cold compile time and its steady step time.
In 3D no launches are counted and no inference is timed; ``repeats`` 0 or the meta device measure parameters,
GMACs and saved activations only (the large 3D plans take minutes a step on a CPU).

Modules: ``rows`` (what is compared), ``measure`` (how a row is measured, ``run_bench``), ``tables`` (targets,
tables, files), ``complexity`` (global against windowed attention for one stage), ``command`` (the CLI's
``bench_command``). The official Swin-Unet's row uses ``nnunet_swin.experiments.official_swin_unet``, part of
the package, so an installed wheel has it too.
"""

from nnunet_swin.experiments.bench.command import bench_command
from nnunet_swin.experiments.bench.complexity import ComplexityRow, complexity_table, format_complexity
from nnunet_swin.experiments.bench.measure import BenchResult, bench_eager, bench_one, count_kernel_launches, \
    forward_gmacs, fresh_inductor_cache, run_bench
from nnunet_swin.experiments.bench.rows import CNN_ROW, CNN_ROW_3D, OFFICIAL_ROW, SWIN_ROW, SWIN_ROW_3D, Candidate, \
    PadToMultiple, candidates, candidates_3d, nnunet_plain_unet, nnunet_plan, swin_plan_options
from nnunet_swin.experiments.bench.tables import COLUMNS_3D, Target, cpu_targets, format_table, format_targets, \
    write_results

__all__ = ["CNN_ROW", "CNN_ROW_3D", "COLUMNS_3D", "OFFICIAL_ROW", "SWIN_ROW", "SWIN_ROW_3D", "BenchResult", "Candidate",
           "ComplexityRow", "PadToMultiple", "Target", "bench_command", "bench_eager", "bench_one", "candidates",
           "candidates_3d", "complexity_table", "count_kernel_launches", "cpu_targets", "forward_gmacs",
           "format_complexity", "format_table", "format_targets", "fresh_inductor_cache", "nnunet_plain_unet",
           "nnunet_plan", "run_bench", "swin_plan_options", "write_results"]
