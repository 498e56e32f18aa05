#!/usr/bin/env python
"""Focal-loss forward+backward time and peak memory: focal_rpn vs torchvision and fvcore.

    python benchmarks/bench_losses.py            # full table (1.6M x 80 takes a few minutes)
    python benchmarks/bench_losses.py --quick    # 100k x 80 and the softmax shapes only
    python benchmarks/bench_losses.py --device cuda   # on a GPU (torch.compile through Triton)

Timing: the variants run interleaved (A, B, C, A, B, C, ...) in one process, and each reported
ratio is the median over repeats of reference time / focal_rpn time measured side by side, so
that load from other processes affects both alike. Peak memory: each variant in a fresh process;
the extra resident memory (peak RSS, see peak_rss.py) of one forward+backward above the inputs
and their preallocated gradient; on a GPU, the peak of CUDA memory allocated above them
(torch.cuda.max_memory_allocated, exact), with a synchronize closing each timed step.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torchvision
from fvcore.nn import sigmoid_focal_loss_jit
from torch.nn import functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from focal_rpn import losses  # noqa: E402


def softmax_focal_composite(logits, labels, gamma=2.0):
    """The usual composite softmax focal loss (what users write today), for reference."""
    logp = F.log_softmax(logits, dim=1).gather(1, labels[:, None])[:, 0]
    return (-(1 - logp.exp()) ** gamma * logp).sum()


def make_variants(kind):
    if kind == "sigmoid":
        return {
            "focal_rpn": lambda x, t: losses.sigmoid_focal_loss(x, t, 0.25, 2.0, "sum"),
            "focal_rpn(eager)": lambda x, t: _eager(losses.sigmoid_focal_loss, x, t, 0.25, 2.0, "sum"),
            "torchvision": lambda x, t: torchvision.ops.sigmoid_focal_loss(x, t, 0.25, 2.0, "sum"),
            "fvcore_jit": lambda x, t: sigmoid_focal_loss_jit(x, t, 0.25, 2.0, "sum"),
        }
    return {
        "focal_rpn": lambda x, y: losses.softmax_focal_loss(x, y, None, 2.0, "sum"),
        "focal_rpn(eager)": lambda x, y: _eager(losses.softmax_focal_loss, x, y, None, 2.0, "sum"),
        "composite": softmax_focal_composite,
        "cross_entropy(γ=0)": lambda x, y: F.cross_entropy(x, y, reduction="sum"),
    }


def _eager(fn, *args):
    losses.set_compile(False)
    try:
        return fn(*args)
    finally:
        losses.set_compile(True)


def make_inputs(kind, n, k, seed=0, device="cpu"):
    """Logits (n, k) and targets, built in place so that no temporary raises the memory baseline."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=g).mul_(3)
    if kind == "sigmoid":
        t = torch.rand(n, k, generator=g).lt_(0.01)  # 0/1 targets, 1% positives
    else:
        t = torch.randint(0, k, (n,), generator=g)
    return x.to(device), t.to(device)


def step(fn, x, t):
    x = x.detach().requires_grad_()
    fn(x, t).backward()
    if x.is_cuda:  # the kernels run asynchronously: a step ends when they have
        torch.cuda.synchronize()
    return x.grad


def time_case(kind, n, k, repeats, device="cpu"):
    variants = make_variants(kind)
    x, t = make_inputs(kind, n, k, device=device)
    for fn in variants.values():  # warm-up (compilation, allocator)
        step(fn, x[:4000], t[:4000])
        step(fn, x, t)
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            step(fn, x, t)
            times[name].append(time.perf_counter() - t0)
    return times


def peak_memory(kind, n, k, name, device="cpu"):
    """Extra MB of resident memory for one forward+backward, and the peak MB of live tensors of
    another one (exact, see peak_rss.py), measured in a fresh process. On a GPU: (nan, the peak MB
    of CUDA memory allocated above the inputs and their gradient; main() leaves the RSS out)."""
    setup = (
        "import sys, json; sys.argv=['x']; "
        f"sys.path.insert(0, {HERE!r}); "
        "import bench_losses as b, torch; "
        f"v=b.make_variants({kind!r})[{name!r}]; x,t=b.make_inputs({kind!r},{n},{k},device={device!r}); "
        "b.step(v, x[:4000], t[:4000]); "
        "x=x.detach().requires_grad_(); x.grad=torch.zeros_like(x); "
    )
    if device == "cuda":
        measure = (
            "torch.cuda.synchronize(); base=torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats(); "
            "v(x,t).backward(); torch.cuda.synchronize(); "
            "print(json.dumps([float('nan'), (torch.cuda.max_memory_allocated()-base)/2**20]))"
        )
    else:
        measure = (
            "import peak_rss; r0=peak_rss.reset_peak(); "
            "v(x,t).backward(); rss=(peak_rss.peak_kb()-r0)/1024; "
            "live=peak_rss.tensor_peak_bytes(lambda: v(x,t).backward())/2**20; "
            "print(json.dumps([rss, live]))"
        )
    out = subprocess.run([sys.executable, "-c", setup + measure], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="skip the 1.6M x 80 case")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = ap.parse_args()
    cases = [("sigmoid", 100_000, 80), ("sigmoid", 1_600_000, 80), ("softmax", 512, 81), ("softmax", 100_000, 2)]
    if args.quick:
        cases = [c for c in cases if c[1] != 1_600_000]
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}, focal_rpn compile "
          f"{'on' if losses._COMPILE else 'off'}; fwd+bwd, median of {args.repeats} interleaved repeats")
    host = args.device == "cpu"  # on a GPU the host's resident memory says nothing about the loss
    header = (f"{'case':<22}{'variant':<20}{'ms':>9}{'ref/focal_rpn':>15}"
              + (f"{'RSS MB':>9}{'RSS ratio':>11}{'tensor MB':>11}" if host else f"{'CUDA MB':>11}")
              + f"{'tensor ratio':>14}")
    print(header)
    print("-" * len(header))
    for kind, n, k in cases:
        times = time_case(kind, n, k, args.repeats, args.device)
        ours = times["focal_rpn"]
        mem = {name: peak_memory(kind, n, k, name, args.device) for name in times}
        for name, ts in times.items():
            ratio = statistics.median(r / o for r, o in zip(ts, ours))
            rss, live = mem[name]
            rss_ratio = rss / mem["focal_rpn"][0] if mem["focal_rpn"][0] > 0 else float("nan")
            print(f"{kind + f' {n}x{k}':<22}{name:<20}{statistics.median(ts) * 1e3:>9.2f}{ratio:>14.2f}x"
                  + (f"{rss:>9.1f}{rss_ratio:>10.2f}x" if host else "")
                  + f"{live:>11.2f}{live / mem['focal_rpn'][1]:>13.2f}x")
        print()


if __name__ == "__main__":
    main()
