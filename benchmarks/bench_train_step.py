#!/usr/bin/env python
"""Train-step and inference time and peak memory of a focal_rpn model vs its Detectron2 reference.

    python benchmarks/bench_train_step.py                         # FocalRetinaNet vs RetinaNet
    python benchmarks/bench_train_step.py --opts MODEL.RETINANET.NUM_CLASSES 80   # COCO-like head
    python benchmarks/bench_train_step.py --pair rpn              # FocalRPN vs the 1:1 RPN
    python benchmarks/bench_train_step.py --pair ohem             # OHEM vs StandardROIHeads
    python benchmarks/bench_train_step.py --pair precision        # bf16 autocast, channels_last vs fp32
    python benchmarks/bench_train_step.py --pair precision --config configs/trees/rpn_ce.yaml
    python benchmarks/bench_train_step.py --pair image_threads --crop 400   # MODEL.IMAGE_THREADS 2 vs 1
    python benchmarks/bench_train_step.py --pair roi_align --crop 400       # MODEL.ROI_ALIGN_IMPL gather vs torchvision
    python benchmarks/bench_train_step.py --pair recipes --crop 400   # rpn_ce.yaml's step vs retinanet.yaml's

Both variants are built from the same config, seed and batch (identical weights). Training steps
and inference calls alternate A, B, A, B in one process; the reported ratio is the median of the
per-step ratios after warm-up. Peak memory: fresh processes per variant (``--repeats``), each of
which builds the model, runs two warm-up steps, then reports the peak resident memory of three more
training steps above the memory held before them, and the peak of live tensor bytes of one more
step (see peak_rss.py). RSS varies by several percent from process to process with what the C
allocator keeps; the tensor peak is exact and the same every time. ``--memory-only`` skips timing.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

ROOT = __file__.rsplit("/benchmarks/", 1)[0]
sys.path.insert(0, ROOT)

# name -> (config overrides, name of the reference it is compared with); a variant given as a
# (config, overrides) tuple is built from its own config instead of the pair's
PAIRS = {
    "retinanet": {
        "config": "configs/trees/retinanet.yaml",
        "variants": {
            "FocalRetinaNet": ["MODEL.META_ARCHITECTURE", "FocalRetinaNet"],
            "d2 RetinaNet": ["MODEL.META_ARCHITECTURE", "RetinaNet"],
        },
        "reference": "d2 RetinaNet",
    },
    "rpn": {
        "config": "configs/trees/rpn_ce.yaml",
        "variants": {
            "RPN 1:1 CE": [],
            "FocalRPN sigmoid": ["MODEL.PROPOSAL_GENERATOR.NAME", "FocalRPN"],
            "FocalRPN softmax": ["MODEL.PROPOSAL_GENERATOR.NAME", "FocalRPN", "MODEL.RPN.HEAD_NAME",
                                 "SoftmaxRPNHead", "MODEL.FOCAL_RPN.FORM", "softmax"],
        },
        "reference": "RPN 1:1 CE",
    },
    "ohem": {
        "config": "configs/trees/rpn_ce.yaml",
        "variants": {
            "StandardROIHeads": [],
            "OHEMROIHeads": ["MODEL.ROI_HEADS.NAME", "OHEMROIHeads"],
            "OHEM 1:3": ["MODEL.ROI_HEADS.NAME", "OHEMROIHeads", "MODEL.OHEM.NEG_POS_RATIO", "3.0"],
        },
        "reference": "StandardROIHeads",
    },
    # The training step as Trainer runs it: SOLVER.AMP.ENABLED is bfloat16 autocast on a CPU.
    "precision": {
        "config": "configs/trees/retinanet.yaml",
        "variants": {
            "fp32": ["SOLVER.AMP.ENABLED", "False", "MODEL.CHANNELS_LAST", "False"],
            "bf16 autocast": ["SOLVER.AMP.ENABLED", "True", "MODEL.CHANNELS_LAST", "False"],
            "channels_last": ["SOLVER.AMP.ENABLED", "False", "MODEL.CHANNELS_LAST", "True"],
            "bf16 + ch_last": ["SOLVER.AMP.ENABLED", "True", "MODEL.CHANNELS_LAST", "True"],
        },
        "reference": "fp32",
    },
    # RoIAlign's backward and the RPN's proposal selection split by image over threads
    "image_threads": {
        "config": "configs/trees/rpn_ce.yaml",
        "variants": {
            "1 thread": ["MODEL.IMAGE_THREADS", "1"],
            "2 threads": ["MODEL.IMAGE_THREADS", "2"],
        },
        "reference": "1 thread",
    },
    # RoIAlign as a weighted gather (both with the config's MODEL.IMAGE_THREADS)
    "roi_align": {
        "config": "configs/trees/rpn_ce.yaml",
        "variants": {
            "torchvision": ["MODEL.ROI_ALIGN_IMPL", "torchvision"],
            "gather": ["MODEL.ROI_ALIGN_IMPL", "gather"],
        },
        "reference": "torchvision",
    },
    # The two trees recipes as shipped, each in its own config: #14's wall-time bar is the
    # RetinaNet's training (the same 650 iterations, so the step time decides). Across two
    # different models interleaving is biased: it slows the lighter one's steps (the RetinaNet's
    # took 329 ms alone in a process, 382-440 ms interleaved with the Faster R-CNN's), so this
    # pair reads ~1.28x where whole trainings run in turn measure ~1.5x (README, ninth round):
    # for training time between different models use bench_trainings.py.
    "recipes": {
        "config": "configs/trees/retinanet.yaml",
        "variants": {
            "retinanet.yaml": [],
            "rpn_ce.yaml": ("configs/trees/rpn_ce.yaml", []),
        },
        "reference": "retinanet.yaml",
    },
}


def variant_config(pair, name, opts):
    """(config path, overrides) of variant ``name`` of ``pair``, with ``opts`` (for all) first."""
    v = pair["variants"][name]
    return (v[0], opts + v[1]) if isinstance(v, tuple) else (pair["config"], opts + v)


def build(config, opts, seed=0, augmentations=()):
    """(model, SGD optimizer, a fixed training batch) of ``config``; the batch is mapped with
    ``augmentations`` only (none: whole training tiles)."""
    from detectron2.data import DatasetCatalog, DatasetMapper

    from focal_rpn.config import load_config
    from focal_rpn.engine import Trainer

    cfg = load_config(f"{ROOT}/{config}", opts)
    torch.manual_seed(seed)
    np.random.seed(seed)  # the same random crops for every variant
    model = Trainer.build_model(cfg)  # channels_last when MODEL.CHANNELS_LAST
    model.autocast = cfg.SOLVER.AMP.ENABLED
    mapper = DatasetMapper(cfg, is_train=True, augmentations=list(augmentations))
    dicts = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
    batch = [mapper(d) for d in dicts[1:1 + cfg.SOLVER.IMS_PER_BATCH]]
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    return model, opt, batch


def train_step(model, opt, batch):
    """Forward, backward, SGD; under bfloat16 autocast when the config enables AMP (as Trainer)."""
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=model.autocast):
        loss = sum(model(batch).values())
    opt.zero_grad()
    loss.backward()
    opt.step()


@torch.no_grad()
def infer(model, batch):
    model.eval()
    model([{"image": b["image"]} for b in batch])


def timed(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def step_peak_mb(config, opts, crop=0, steps=3):
    """Extra peak RSS (MB) of ``steps`` training steps after two warm-up steps, and the peak of
    live tensor bytes (MB) of one more step, in a fresh process."""
    code = (
        f"import sys; sys.path.insert(0, {ROOT + '/benchmarks'!r}); import bench_train_step as b, peak_rss; "
        "from detectron2.utils.events import EventStorage; from detectron2.data import transforms as T; import json; "
        f"augs = [T.RandomCrop('absolute', ({crop}, {crop}))] if {crop} else []; "
        f"m, o, batch = b.build({config!r}, {opts!r}, augmentations=augs); s = EventStorage(); s.__enter__(); "
        "b.train_step(m, o, batch); b.train_step(m, o, batch); r0 = peak_rss.reset_peak(); "
        f"[b.train_step(m, o, batch) for _ in range({steps})]; rss = (peak_rss.peak_kb() - r0) / 1024; "
        "live = peak_rss.tensor_peak_bytes(lambda: b.train_step(m, o, batch)) / 2**20; "
        "print(json.dumps([rss, live]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    from detectron2.utils.events import EventStorage

    from focal_rpn.engine.autocast import cpu_has_bfloat16

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", choices=sorted(PAIRS), default="retinanet")
    ap.add_argument("--config", help="config of the pair's variants (default: the pair's own)")
    ap.add_argument("--crop", type=int, default=0,
                    help="train on random CROP x CROP px windows of the tiles, as the trees recipes do (default: whole tiles)")
    ap.add_argument("--steps", type=int, default=12, help="measured steps per variant (after 2 warm-up)")
    ap.add_argument("--memory-only", action="store_true", help="peak memory only (no timing)")
    ap.add_argument("--repeats", type=int, default=1, help="fresh processes per variant for peak memory")
    ap.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides for all variants")
    args = ap.parse_args()
    pair = dict(PAIRS[args.pair])
    if args.config:
        pair["config"] = args.config
    names = list(pair["variants"])
    from detectron2.data import transforms as T

    augs = [T.RandomCrop("absolute", (args.crop, args.crop))] if args.crop else []
    built = {n: build(*variant_config(pair, n, args.opts), augmentations=augs) for n in names}
    ref_state = built[names[0]][0].state_dict()
    for n in names[1:]:  # same weights wherever the shapes agree
        own = built[n][0].state_dict()
        built[n][0].load_state_dict({k: v for k, v in ref_state.items() if k in own and own[k].shape == v.shape},
                                    strict=False)
    times = {n: {"train": [], "infer": []} for n in names}
    with EventStorage():
        for i in range(0 if args.memory_only else args.steps + 2):
            for n in names:
                t_train = timed(train_step, *built[n])
                t_inf = timed(infer, built[n][0], built[n][2])
                if i >= 2:
                    times[n]["train"].append(t_train)
                    times[n]["infer"].append(t_inf)
    ref = pair["reference"]
    configs = sorted({variant_config(pair, n, [])[0] for n in names})
    print(f"config {', '.join(configs)} {' '.join(args.opts)}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; median of {args.steps} interleaved steps; peak memory: median "
          f"of {args.repeats} fresh process(es) per variant (RSS) and live tensor bytes (deterministic)")
    if not cpu_has_bfloat16():  # the bf16 rows run emulated bfloat16; Trainer would not (autocast.py)
        print(f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has no bfloat16 units: the bf16 rows are "
              "emulated; Trainer trains SOLVER.AMP.ENABLED configs in float32 here")
    # fresh processes interleaved variant by variant, so that a slow drift affects all alike
    mems = {n: [] for n in names}
    for _ in range(args.repeats):
        for n in names:
            mems[n].append(step_peak_mb(*variant_config(pair, n, args.opts), args.crop))
    rss = {n: statistics.median(m[0] for m in mems[n]) for n in names}
    live = {n: statistics.median(m[1] for m in mems[n]) for n in names}
    print(f"{'variant':<20}{'train s':>9}{'train/ref':>11}{'infer s':>9}{'infer/ref':>11}"
          f"{'RSS MB':>9}{'RSS/ref':>9}{'tensor MB':>11}{'tens/ref':>10}")
    for n in names:
        if args.memory_only:
            t = f"{'-':>9}{'-':>11}{'-':>9}{'-':>11}"
        else:
            tr = statistics.median(a / b for a, b in zip(times[n]["train"], times[ref]["train"]))
            inf = statistics.median(a / b for a, b in zip(times[n]["infer"], times[ref]["infer"]))
            t = (f"{statistics.median(times[n]['train']):>9.3f}{tr:>10.2f}x"
                 f"{statistics.median(times[n]['infer']):>9.3f}{inf:>10.2f}x")
        print(f"{n:<20}{t}{rss[n]:>9.0f}{rss[n] / rss[ref]:>8.2f}x{live[n]:>11.1f}{live[n] / live[ref]:>9.3f}x")


if __name__ == "__main__":
    main()
