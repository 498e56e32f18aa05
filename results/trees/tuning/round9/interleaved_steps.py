"""Interleaved train steps of several (config, opts) variants; median per-step ratio vs the first."""
import os
import sys, time, statistics, json, torch
sys.path.insert(0, os.path.abspath(__file__).rsplit('/results/', 1)[0] + '/benchmarks'); sys.path.insert(0, os.path.abspath(__file__).rsplit('/results/', 1)[0])
import bench_train_step as b
from detectron2.utils.events import EventStorage
from detectron2.data import transforms as T
variants = json.loads(sys.argv[1]); steps = int(sys.argv[2]) if len(sys.argv) > 2 else 10
built = {name: b.build(cfg, opts, augmentations=[T.RandomCrop('absolute', (400, 400))]) for name, (cfg, opts) in variants.items()}
times = {n: [] for n in built}
with EventStorage():
    for i in range(steps + 2):
        for n, (m, o, batch) in built.items():
            t = time.perf_counter(); b.train_step(m, o, batch); times[n].append(time.perf_counter() - t)
ref = next(iter(times))
for n, t in times.items():
    r = [a / c for a, c in zip(t[2:], times[ref][2:])]
    print(f"{n:40s} median {statistics.median(t[2:])*1000:6.0f} ms  ratio vs {ref}: {statistics.median(r):.3f}")
