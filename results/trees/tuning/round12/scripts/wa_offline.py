"""Offline weight-average variants from periodic checkpoints; raw 650 rebuilt as 4*avg - (400+500+600)."""
import sys, json, os, torch
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), *[os.pardir] * 5))  # the repository root
import focal_rpn
from focal_rpn.config import load_config
from focal_rpn.engine import Trainer
from detectron2.evaluation.testing import flatten_results_dict
out_path = sys.argv[1]; runs = sys.argv[2:]
res = json.load(open(out_path)) if os.path.exists(out_path) else {}
def sd(run, n): return torch.load(f'{run}/{n}.pth', weights_only=False)['model']
for run in runs:
    s = {i: sd(run, f'model_0000{i-1}') for i in (300, 400, 500, 600)}
    avg = sd(run, 'model_final')
    s[650] = {k: (4 * v.float() - s[400][k].float() - s[500][k].float() - s[600][k].float()).to(v.dtype) if v.is_floating_point() else v for k, v in avg.items()}
    for name, its in {'raw650': [650], 'wa300': [300, 400, 500, 600, 650], 'wa500': [500, 600, 650], 'wa400_check': [400, 500, 600, 650]}.items():
        key = f'{run} {name}'
        if key in res: continue
        st = {k: (sum(s[i][k].float() for i in its) / len(its)).to(v.dtype) if v.is_floating_point() else v for k, v in s[650].items()}
        cfg = load_config(f'{run}/config.yaml', []); cfg.defrost(); cfg.OUTPUT_DIR = f'/tmp/wa/{run.replace("/", "_")}_{name}'; cfg.freeze()
        model = Trainer.build_model(cfg); model.load_state_dict(st); model.eval()
        m = {k: float(v) for k, v in flatten_results_dict(Trainer.test(cfg, model)).items()}
        res[key] = {k: v for k, v in m.items() if k in ('bbox/AP', 'bbox/AP50', 'box_proposals/AR@1000')}
        print(key, round(m['bbox/AP50'], 2), flush=True)
        json.dump(res, open(out_path, 'w'), indent=1)
