"""Draw a trained model's detections on images (and optionally the ground truth beside them).

    python -m focal_rpn.visualize --config-file CFG --input a.png b.jpg --output DIR MODEL.WEIGHTS W
    python -m focal_rpn.visualize --config-file CFG --dataset trees_val --output DIR MODEL.WEIGHTS W
"""
import argparse
import os
from typing import List, Optional

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog, detection_utils as utils
from detectron2.engine import DefaultPredictor
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from .config import load_config
from .engine import load_weights_strict


def draw_predictions(image_rgb: np.ndarray, instances, metadata, score_thresh: float) -> np.ndarray:
    """RGB image (H, W, 3) with the instances scoring at least ``score_thresh`` drawn on it."""
    instances = instances[instances.scores >= score_thresh].to("cpu")
    vis = Visualizer(image_rgb, metadata)
    return vis.draw_instance_predictions(instances).get_image()


def draw_ground_truth(image_rgb: np.ndarray, dataset_dict: dict, metadata) -> np.ndarray:
    """RGB image (H, W, 3) with a dataset dict's annotations drawn on it."""
    return Visualizer(image_rgb, metadata).draw_dataset_dict(dataset_dict).get_image()


def visualize(cfg, inputs: List[str], output_dir: str, score_thresh: float,
              gt_dicts: Optional[List[dict]] = None) -> List[str]:
    """Runs the model of ``cfg`` on each input image and writes ``<name>.png`` into
    ``output_dir`` (prediction, with the ground truth on the left when ``gt_dicts`` is given).
    Returns the written paths."""
    predictor = DefaultPredictor(cfg)
    load_weights_strict(predictor.model, cfg.MODEL.WEIGHTS)
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused")
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for i, path in enumerate(inputs):
        bgr = utils.read_image(path, format="BGR")
        pred = draw_predictions(bgr[:, :, ::-1], predictor(bgr)["instances"], metadata, score_thresh)
        if gt_dicts is not None:
            pred = np.concatenate([draw_ground_truth(bgr[:, :, ::-1], gt_dicts[i], metadata), pred], axis=1)
        out = os.path.join(output_dir, os.path.splitext(os.path.basename(path))[0] + ".png")
        Image.fromarray(pred).save(out)
        written.append(out)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--input", nargs="+", default=[], help="image files")
    parser.add_argument("--dataset", help="a registered dataset: draw on its images, GT beside")
    parser.add_argument("--output", required=True, help="output folder for the PNGs")
    parser.add_argument("--score-thresh", type=float, default=0.3)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS W")
    args = parser.parse_args(argv)
    cfg = load_config(args.config_file, args.opts, freeze=False)
    if args.dataset:
        cfg.DATASETS.TEST = (args.dataset,)
    cfg.freeze()
    gt = None
    inputs = list(args.input)
    if args.dataset:
        gt = DatasetCatalog.get(args.dataset)
        inputs = [d["file_name"] for d in gt]
    if not inputs:
        parser.error("give --input images or --dataset")
    for path in visualize(cfg, inputs, args.output, args.score_thresh, gt):
        print(f"Detections drawn: {os.path.abspath(path)}")


if __name__ == "__main__":
    main()
