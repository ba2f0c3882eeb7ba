#!/usr/bin/python3
"""bench_sample_torch.py - the PyTorch side of bench_sample: score
evaluations per second of unet-28 (torch_mirror.UNet) in inference, the
operation every sampler step performs.

    OPENBLAS_NUM_THREADS=1 /usr/bin/python3 bench_sample_torch.py --batch 256 --threads 2

One evaluation of a batch is net(x, cond, sigma) under torch.no_grad() with
x ~ N(0, 1) [B, 1, 28, 28] and one VE noise level per sample (cond = log
sigma), as scorediff's sd_model_score does. BENCH_WARMUP (1) untimed calls,
then --windows (5) timed windows of --calls (2) calls each; reports the
median over windows of evaluations (points) per second, and CPU ms per
evaluation (user + system time of all threads, less sensitive to other load
on a shared machine). Prints one "RESULT key=value ..." line.
"""
import argparse
import math
import os
import resource
import statistics
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_mirror import UNet, unet_preset  # noqa: E402


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--calls", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=int(os.environ.get("BENCH_WARMUP", "1")))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = UNet(unet_preset("unet-28")).eval()
    B = a.batch
    x = torch.randn(B, 1, 28, 28)
    t = torch.rand(B) * (1 - 1e-5) + 1e-5
    sigma = 0.01 * (50.0 / 0.01) ** t
    cond = torch.log(sigma)
    with torch.no_grad():
        for _ in range(a.warmup):
            net(x, cond, sigma)
        rates, cpus = [], []
        for _ in range(a.windows):
            c0, t0 = cpu_seconds(), time.perf_counter()
            for _ in range(a.calls):
                out = net(x, cond, sigma)
            dt = time.perf_counter() - t0
            rates.append(a.calls * B / dt)
            cpus.append(1e3 * (cpu_seconds() - c0) / (a.calls * B))
    assert math.isfinite(float(out.abs().sum()))
    print("RESULT impl=torch-%s batch=%d threads=%d evals_per_s=%.1f cpu_ms_per_eval=%.3f"
          % (torch.__version__, B, a.threads, statistics.median(rates), statistics.median(cpus)))


if __name__ == "__main__":
    main()
