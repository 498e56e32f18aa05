#!/usr/bin/env python
"""Is torch.compile of the backbone and head worth it for a demo-length CPU training run?

    python benchmarks/bench_compile.py                    # configs/trees/retinanet.yaml, 650 iterations
    python benchmarks/bench_compile.py --steps 10 --iters 650

Two copies of the trees RetinaNet with the same weights and batch (8 training crops of 400 px, as
INPUT.CROP cuts them: static shapes): A eager, B with ``torch.compile`` on ``model.backbone`` and
``model.head``. B's first steps include compilation; their excess over B's steady step is the
compile cost. Then A and B steps alternate in one process (median of the per-step ratios). The
projected training time of a run of ``--iters`` iterations is compile cost + iters × step, for
each; the evaluation's compile cost (another input shape) is measured too and added.
"""
import argparse
import statistics
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import bench_train_step as b  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/trees/retinanet.yaml")
    ap.add_argument("--steps", type=int, default=10, help="interleaved steps per variant after warm-up")
    ap.add_argument("--iters", type=int, default=650, help="length of the run to project (the demo's)")
    args = ap.parse_args()
    from detectron2.utils.events import EventStorage

    from detectron2.data import transforms as T

    # the training shape: a 400 px window of each tile, as INPUT.CROP cuts them
    crop = [T.CropTransform(0, 0, 400, 400)]
    eager = b.build(args.config, [], augmentations=crop)
    compiled = b.build(args.config, [], augmentations=crop)
    compiled[0].load_state_dict(eager[0].state_dict())
    model = compiled[0]
    model.backbone = torch.compile(model.backbone)
    model.head = torch.compile(model.head)
    with EventStorage():
        b.train_step(*eager)  # eager warm-up (oneDNN primitives, allocator)
        t_eager_first = b.timed(b.train_step, *eager)
        first = [b.timed(b.train_step, *compiled) for _ in range(3)]  # compiles forward + backward
        ratios, ta, tb = [], [], []
        for _ in range(args.steps):
            ta.append(b.timed(b.train_step, *eager))
            tb.append(b.timed(b.train_step, *compiled))
            ratios.append(tb[-1] / ta[-1])
        # evaluation: one trees_val-sized image, another shape (compiled again for it)
        image = {"image": torch.randint(0, 255, (3, 1035, 1249), dtype=torch.uint8)}
        b.infer(eager[0], [image])
        t_inf_eager = b.timed(b.infer, eager[0], [image])
        t_inf_compile_first = b.timed(b.infer, model, [image])
        t_inf_compiled = b.timed(b.infer, model, [image])
    step_a, step_b = statistics.median(ta), statistics.median(tb)
    compile_cost = sum(first) - 3 * step_b + (t_inf_compile_first - t_inf_compiled)
    proj_a = args.iters * step_a
    proj_b = compile_cost + args.iters * step_b
    print(f"config {args.config}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"eager step {step_a:.3f} s (first timed {t_eager_first:.3f}); compiled step {step_b:.3f} s; "
          f"median per-step ratio compiled/eager {statistics.median(ratios):.3f} over {args.steps} pairs")
    print(f"compiled: first 3 training steps {', '.join(f'{t:.1f}' for t in first)} s; first inference "
          f"{t_inf_compile_first:.1f} s (eager {t_inf_eager:.2f}, compiled after {t_inf_compiled:.2f})")
    print(f"compile cost {compile_cost:.0f} s; projected {args.iters}-iteration training: eager {proj_a:.0f} s, "
          f"compiled {proj_b:.0f} s -> compiled/eager {proj_b / proj_a:.2f}")


if __name__ == "__main__":
    main()
