"""Model time per image of an evaluation, measured so that two identical evaluations agree.

The ``* time_per_image_ms`` line (Figure 4 plots it against NFE) is the **median over batches of
the time of ``model_inference`` per image**. It includes the whole forward pass (for a PD trainer:
frozen image features, π, the NFE denoiser calls, the prompted image and text encoders); it
excludes data loading, the transfer to the device and the metrics. On a GPU it is wall time (CUDA
synchronised). On the CPU it is the process's CPU time: wall time there moves with whatever else
runs on the machine (two identical evaluations on a loaded 2-core machine differed 6x), CPU time
does not; with several torch threads it sums them, so it is a cost, comparable between runs with
the same thread count. The first ``WARMUP_BATCHES`` batches are evaluated but not timed (lazy
initialisation, allocator and cache warm-up); the median leaves out batches slowed by page faults
or preemption. With no more batches than that, all are timed.
"""
import statistics
import time
from typing import List

import torch

WARMUP_BATCHES = 1


class InferenceTimer:
    """Times ``model_inference`` batch by batch: ``output = timer.time(lambda: model(x), len(x))``."""

    def __init__(self) -> None:
        self.per_image: List[float] = []  # seconds per image, one entry per batch

    def record(self, seconds: float, images: int) -> None:
        self.per_image.append(seconds / max(images, 1))

    def time(self, run, images: int):
        """``run()`` timed: wall time, CUDA synchronised, when its output is on a GPU, else the
        process's CPU time; returns its output."""
        wall, cpu = time.perf_counter(), time.process_time()
        output = run()
        if isinstance(output, torch.Tensor) and output.is_cuda:
            torch.cuda.synchronize(output.device)
            self.record(time.perf_counter() - wall, images)
        else:
            self.record(time.process_time() - cpu, images)
        return output

    def milliseconds_per_image(self) -> float:
        """Median over the timed batches (all of them when there are no more than the warm-up)."""
        timed = self.per_image[WARMUP_BATCHES:] or self.per_image
        if not timed:
            return 0.0
        return 1000.0 * statistics.median(timed)
