#!/usr/bin/python3
"""bench_train_torch.py - the PyTorch side of bench_train: unet-28 training
images/s and peak RSS, with the same step as scorediff's sd_trainer_step.

    OPENBLAS_NUM_THREADS=1 /usr/bin/python3 bench_train_torch.py --batch 128

The network is torch_mirror.UNet("unet-28") (same architecture and
parameter count as models/unet.c). One step, as models/trainer.c and
models/objective.c do it under the default VE family (sigma_min 0.01,
sigma_max 50, eps 1e-5), denoising score matching with variance weighting:

    t ~ U[eps, 1],  sigma = sigma_min (sigma_max / sigma_min)^t,  z ~ N(0, I)
    x_t = x_0 + sigma z,  target = -z / sigma
    loss = sum_i 0.5 sigma_i^2 ||s(x_t, log sigma, sigma)_i - target_i||^2 / B
    backward; clip the global gradient norm to 1; Adam (lr 2e-4 after a
    linear warm-up of 5000 steps, sd_lr_at's schedule for the bench's
    100000-step config; betas 0.9/0.999, eps 1e-8); EMA with decay 0.999.

PyTorch at its best on this machine: torch.set_num_threads(2) and
OPENBLAS_NUM_THREADS=1 (else its OpenMP and OpenBLAS threads oversubscribe
the two cores); the gradient buffers are dropped between steps
(zero_grad(set_to_none=True)) and Adam and the EMA use the foreach kernels.

Timing and output match bench_train --run: BENCH_WARMUP (2) untimed steps,
BENCH_WINDOWS (5) windows of BENCH_STEPS (2) steps, median images/s over the
windows; peak RSS is ru_maxrss of this process (it includes the Python
interpreter and libtorch, which is part of what PyTorch costs). Prints one
"RESULT key=value ..." line.
"""
import argparse
import math
import os
import resource
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_mirror import UNet, trainable_count, unet_preset  # noqa: E402

SIGMA_MIN, SIGMA_MAX, EPS = 0.01, 50.0, 1e-5


def status_bytes(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return 1024.0 * float(line.split()[1])
    except OSError:
        pass
    return -1.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    warm = int(os.environ.get("BENCH_WARMUP", "2"))
    windows = int(os.environ.get("BENCH_WINDOWS", "5"))
    steps = int(os.environ.get("BENCH_STEPS", "2"))
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    B = args.batch

    net = UNet(unet_preset("unet-28"))
    params = [p for p in net.parameters()]
    opt = torch.optim.Adam(params, lr=2e-4, betas=(0.9, 0.999), eps=1e-8, foreach=True)
    ema = [p.detach().clone() for p in params]
    x0 = torch.rand(B, 1, 28, 28)
    log_ratio = math.log(SIGMA_MAX / SIGMA_MIN)
    base_rss = status_bytes("VmRSS:")

    WARMUP, LR = 5000, 2e-4
    state = {"step": 0}

    def step():
        k = state["step"]
        for group in opt.param_groups:
            group["lr"] = LR * (k + 1) / WARMUP if k < WARMUP else LR
        state["step"] = k + 1
        t = EPS + (1.0 - EPS) * torch.rand(B)
        sigma = SIGMA_MIN * torch.exp(t * log_ratio)
        z = torch.randn_like(x0)
        s4 = sigma[:, None, None, None]
        xt = x0 + s4 * z
        target = -z / s4
        out = net(xt, torch.log(sigma), sigma)
        w = torch.sqrt(0.5 * sigma * sigma / B)[:, None, None, None]
        loss = ((out - target) * w).pow(2).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_mul_(ema, 0.999)
            torch._foreach_add_(ema, [p.detach() for p in params], alpha=1.0 - 0.999)
        return loss.item()

    for _ in range(warm):
        loss = step()
    ips = []
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = step()
        ips.append(steps * B / (time.perf_counter() - t0))
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_ms = 1e3 * ((ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)) / (windows * steps * B)
    ips.sort()
    peak = status_bytes("VmHWM:")
    if peak < 0:
        peak = 1024.0 * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mib = 1024.0 * 1024.0
    print("RESULT impl=torch batch=%d img_s=%.2f img_s_min=%.2f img_s_max=%.2f cpu_ms_img=%.2f peak_rss_mib=%.1f "
          "base_rss_mib=%.1f arena_mib=-1 params=%d threads=%d loss=%.4g torch=%s"
          % (B, ips[len(ips) // 2], ips[0], ips[-1], cpu_ms, peak / mib, base_rss / mib,
             trainable_count(net), torch.get_num_threads(), loss, torch.__version__))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
