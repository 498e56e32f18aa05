"""AP50 of each periodic checkpoint of runs (the live weights, not the average). usage: OUT RUN..."""
import sys, json, os
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), *[os.pardir] * 5))  # the repository root
import focal_rpn
from focal_rpn.config import load_config
from focal_rpn.reevaluate import evaluate_checkpoint
out_path = sys.argv[1]; runs = sys.argv[2:]
res = json.load(open(out_path)) if os.path.exists(out_path) else {}
for run in runs:
    for ck in ('model_0000299', 'model_0000399', 'model_0000499', 'model_0000599', 'model_final'):
        key = f'{run} {ck}'
        if key in res or not os.path.exists(f'{run}/{ck}.pth'): continue
        cfg = load_config(f'{run}/config.yaml', [])
        m = evaluate_checkpoint(cfg, f'{run}/{ck}.pth', f'/tmp/ckpt_sweep/{run.replace("/", "_")}_{ck}')
        res[key] = {k: v for k, v in m.items() if k in ('bbox/AP', 'bbox/AP50', 'box_proposals/AR@1000')}
        print(key, round(m['bbox/AP50'], 2), flush=True)
        json.dump(res, open(out_path, 'w'), indent=1)
