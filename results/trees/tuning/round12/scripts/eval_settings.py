"""Re-evaluates trained runs under several eval-only settings (Detectron2's evaluator); JSON out.
usage: eval_settings.py OUT.json RUN_DIR... ; settings as JSON {name: [opts]} in the SETTINGS environment variable."""
import sys, json, os, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), *[os.pardir] * 5))  # the repository root
import focal_rpn
from focal_rpn.config import load_config
from focal_rpn.reevaluate import evaluate_checkpoint
out_path = sys.argv[1]; runs = sys.argv[2:]
SETTINGS = json.loads(os.environ.get('SETTINGS', '{"base": []}'))
res = json.load(open(out_path)) if os.path.exists(out_path) else {}
for run in runs:
    for name, opts in SETTINGS.items():
        key = f'{run} {name}'
        if key in res: continue
        cfg = load_config(f'{run}/config.yaml', opts)
        t = time.time()
        m = evaluate_checkpoint(cfg, f'{run}/model_final.pth', f'/tmp/test_sweep/{run.replace("/", "_")}_{name}')
        res[key] = {'run': run, 'setting': name, 'opts': opts, 'eval_s': time.time() - t,
                    'metrics': {k: v for k, v in m.items() if k in ('bbox/AP', 'bbox/AP50', 'bbox/AP75', 'box_proposals/AR@100', 'box_proposals/AR@1000')}}
        print(key, round(m['bbox/AP50'], 2), round(time.time() - t), 's', flush=True)
        json.dump(res, open(out_path, 'w'), indent=1)
