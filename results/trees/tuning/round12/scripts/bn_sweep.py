"""Recompute BN statistics of model_final (SWA's bn_update) over N training batches, evaluate. usage: OUT N RUN..."""
import sys, json, os, time, torch
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), *[os.pardir] * 5))  # the repository root
import focal_rpn
from focal_rpn.config import load_config
from focal_rpn.engine import Trainer, load_weights_strict
from fvcore.nn.precise_bn import update_bn_stats
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.utils.events import EventStorage
out_path = sys.argv[1]; n = int(sys.argv[2]); runs = sys.argv[3:]
res = json.load(open(out_path)) if os.path.exists(out_path) else {}
for run in runs:
    key = f'{run} bn{n}'
    if key in res: continue
    cfg = load_config(f'{run}/config.yaml', [])
    cfg.defrost(); cfg.OUTPUT_DIR = f'/tmp/bn_sweep/{run.replace("/", "_")}_{n}'; cfg.freeze()
    model = Trainer.build_model(cfg)
    load_weights_strict(model, f'{run}/model_final.pth')
    loader = iter(Trainer.build_train_loader(cfg))
    t = time.time()
    model.train()
    with EventStorage(), torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=cfg.SOLVER.AMP.ENABLED):
        update_bn_stats(model, loader, n)
    bn_s = time.time() - t
    model.eval()
    m = {k: float(v) for k, v in flatten_results_dict(Trainer.test(cfg, model)).items()}
    res[key] = {'bn_s': bn_s, **{k: v for k, v in m.items() if k in ('bbox/AP', 'bbox/AP50', 'box_proposals/AR@1000')}}
    print(key, round(m['bbox/AP50'], 2), round(bn_s), 's', flush=True)
    json.dump(res, open(out_path, 'w'), indent=1)
