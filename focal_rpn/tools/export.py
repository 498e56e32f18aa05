"""Export a trained model to TorchScript, the deployment path Detectron2 documents.

    python -m focal_rpn.tools.export --config-file configs/trees/retinanet.yaml --output model.ts \\
        MODEL.WEIGHTS output/demo/model_final.pth

The model is traced through Detectron2's ``TracingAdapter`` on a sample image (``--sample-image``,
default the first image of DATASETS.TEST). Inputs and outputs of the file:

    model = torch.jit.load("model.ts")
    boxes, classes, scores, image_size = model(image)   # image: uint8/float (3, H, W), BGR, any size
    # RetinaNet and Faster R-CNN alike; boxes (N, 4) XYXY in the input image's pixels

Before it reports success, the file is reloaded and its detections on the sample image (and on
a crop of it of another size) are compared with the eager model's.
"""
import argparse
import os

import torch
from detectron2.data import DatasetCatalog, detection_utils as utils
from detectron2.export import TracingAdapter
from detectron2.modeling import GeneralizedRCNN

from ..config import load_config
from ..engine import Trainer, load_weights_strict


def _inference(model, inputs):
    """Detections without Detectron2's rescaling to a requested size (not traceable as such)."""
    if isinstance(model, GeneralizedRCNN):
        inst = model.inference(inputs, do_postprocess=False)[0]
    else:
        inst = model.forward(inputs)[0]["instances"]
    return [{"instances": inst}]


def export(cfg, sample, output: str, atol: float = 1e-3) -> dict:
    """Traces the model of ``cfg`` on ``sample`` (a (3, H, W) tensor), saves it to ``output``,
    reloads it and checks it against eager. Returns {"detections": n, "max_abs_diff": d}."""
    if cfg.TEST.TTA.ENABLED:
        raise ValueError("TEST.TTA.ENABLED: the exported file holds the detector of one view; export without "
                         "it (the views are a loop around the model: focal_rpn/modeling/test_time_augmentation.py)")
    model = Trainer.build_model(cfg).eval()
    load_weights_strict(model, cfg.MODEL.WEIGHTS)
    with torch.no_grad():
        adapter = TracingAdapter(model, [{"image": sample}], _inference)
        traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    traced.save(output)
    reloaded = torch.jit.load(output)
    h, w = sample.shape[1:]
    worst, count = 0.0, 0
    for image in (sample, sample[:, : h * 3 // 4, : w * 2 // 3].contiguous()):
        with torch.no_grad():
            eager = _inference(model, [{"image": image}])[0]["instances"]
            boxes, classes, scores, _ = reloaded(image)
        if len(boxes) != len(eager):
            raise RuntimeError(f"exported {output}: {len(boxes)} detections on a {tuple(image.shape)} image, "
                               f"eager model {len(eager)}")
        diff = max((boxes - eager.pred_boxes.tensor).abs().max().item() if len(boxes) else 0.0,
                   (scores - eager.scores).abs().max().item() if len(boxes) else 0.0)
        if diff > atol or not torch.equal(classes, eager.pred_classes):
            raise RuntimeError(f"exported {output} differs from the eager model by {diff:.2e} (> {atol})")
        worst, count = max(worst, diff), count + len(boxes)
    return {"detections": count, "max_abs_diff": worst}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config-file", required=True)
    ap.add_argument("--output", required=True, help="the TorchScript file to write (e.g. model.ts)")
    ap.add_argument("--sample-image", help="image to trace and check with (default: first of DATASETS.TEST)")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS W")
    args = ap.parse_args(argv)
    cfg = load_config(args.config_file, args.opts, check_datasets=[])  # no dataset's classes are used
    path = args.sample_image or DatasetCatalog.get(cfg.DATASETS.TEST[0])[0]["file_name"]
    image = torch.as_tensor(utils.read_image(path, format=cfg.INPUT.FORMAT).transpose(2, 0, 1).copy())
    check = export(cfg, image, args.output)
    print(f"Exported {os.path.abspath(args.output)}: reloaded, {check['detections']} detections on {path} "
          f"and a crop of it equal to the eager model's (max abs difference {check['max_abs_diff']:.2e})")


if __name__ == "__main__":
    main()
