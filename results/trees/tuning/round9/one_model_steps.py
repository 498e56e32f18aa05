"""Median train-step time of CONFIG in a process of its own (outside: backward outside autocast, as bench_train_step; inside: as the Trainer). step_time.json."""
import os
import sys, time, statistics, torch
sys.path.insert(0, os.path.abspath(__file__).rsplit('/results/', 1)[0] + '/benchmarks'); sys.path.insert(0, os.path.abspath(__file__).rsplit('/results/', 1)[0])
import bench_train_step as b
from detectron2.utils.events import EventStorage
from detectron2.data import transforms as T
cfg = sys.argv[1]
m, o, batch = b.build(cfg, [], augmentations=[T.RandomCrop('absolute', (400, 400))])
def inside():
    m.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = sum(m(batch).values()); o.zero_grad(); loss.backward(); o.step()
def outside():
    b.train_step(m, o, batch)
ta, tb = [], []
with EventStorage():
    for i in range(12):
        t = time.perf_counter(); outside(); ta.append(time.perf_counter() - t)
        t = time.perf_counter(); inside(); tb.append(time.perf_counter() - t)
print(cfg, 'outside', round(statistics.median(ta[2:])*1000), 'inside', round(statistics.median(tb[2:])*1000), 'ratio', round(statistics.median([y/x for x, y in zip(ta[2:], tb[2:])]), 3))
