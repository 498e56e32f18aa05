"""Draw a trained model's detections on images (and optionally the ground truth beside them).

    python -m focal_rpn.tools.visualize --config-file CFG --input a.png b.jpg --output DIR MODEL.WEIGHTS W
    python -m focal_rpn.tools.visualize --config-file CFG --dataset trees_val --output DIR MODEL.WEIGHTS W
    python -m focal_rpn.tools.visualize --config-file CFG --dataset trees_val --eval-view --output DIR MODEL.WEIGHTS W
    python -m focal_rpn.tools.visualize --config-file CFG --dataset deeppcb_test --max-images 4 --eval-view --output DIR MODEL.WEIGHTS W

``--eval-view`` (needs ``--dataset``): one picture with thin boxes and no text per box: true
positives, false positives and missed ground truth (IoU >= 0.5, detections scoring at least
``--score-thresh``, matched greedily by score as COCO does) in three colours, with their counts.
"""
import argparse
import os
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog, detection_utils as utils
from detectron2.structures import Boxes, BoxMode, pairwise_iou
from detectron2.utils.visualizer import Visualizer
from PIL import Image, ImageDraw

# true positive, false positive, missed ground truth (colour-blind-safe: blue, orange, magenta)
EVAL_COLORS = {"true positive": (0, 114, 178), "false positive": (230, 159, 0), "missed": (204, 0, 153)}

from ..config import load_config, model_num_classes
from ..engine import strict_predictor


def draw_predictions(image_rgb: np.ndarray, instances, metadata, score_thresh: float) -> np.ndarray:
    """RGB image (H, W, 3) with the instances scoring at least ``score_thresh`` drawn on it."""
    instances = instances[instances.scores >= score_thresh].to("cpu")
    vis = Visualizer(image_rgb, metadata)
    return vis.draw_instance_predictions(instances).get_image()


def draw_ground_truth(image_rgb: np.ndarray, dataset_dict: dict, metadata) -> np.ndarray:
    """RGB image (H, W, 3) with a dataset dict's annotations drawn on it."""
    return Visualizer(image_rgb, metadata).draw_dataset_dict(dataset_dict).get_image()


def match_detections(det_boxes: torch.Tensor, gt_boxes: torch.Tensor, iou_thresh: float = 0.5):
    """Greedy matching by descending score (detections given sorted): each detection takes the
    unmatched ground truth it overlaps most, if IoU >= ``iou_thresh``. Returns (is_tp (D,) bool,
    gt_matched (G,) bool)."""
    is_tp = torch.zeros(len(det_boxes), dtype=torch.bool)
    matched = torch.zeros(len(gt_boxes), dtype=torch.bool)
    if len(det_boxes) and len(gt_boxes):
        iou = pairwise_iou(Boxes(det_boxes), Boxes(gt_boxes))
        for d in range(len(det_boxes)):
            cand = iou[d].masked_fill(matched, -1.0)
            best = int(cand.argmax())
            if cand[best] >= iou_thresh:
                is_tp[d], matched[best] = True, True
    return is_tp, matched


def evaluation_groups(instances, dataset_dict: dict, score_thresh: float,
                      iou_thresh: float = 0.5) -> Dict[str, torch.Tensor]:
    """The detections scoring at least ``score_thresh`` matched to a dataset dict's (non-crowd)
    ground truth: {"true positive": (T, 4), "false positive": (F, 4), "missed": (M, 4)} XYXY boxes."""
    inst = instances[instances.scores >= score_thresh].to("cpu")
    inst = inst[inst.scores.argsort(descending=True)]
    gt = torch.tensor([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                       for a in dataset_dict.get("annotations", []) if not a.get("iscrowd", 0)],
                      dtype=torch.float32).reshape(-1, 4)
    is_tp, matched = match_detections(inst.pred_boxes.tensor, gt, iou_thresh)
    return {"true positive": inst.pred_boxes.tensor[is_tp], "false positive": inst.pred_boxes.tensor[~is_tp],
            "missed": gt[~matched]}


def draw_evaluation(image_rgb: np.ndarray, instances, dataset_dict: dict, score_thresh: float,
                    iou_thresh: float = 0.5) -> np.ndarray:
    """RGB image with true positives, false positives and missed ground truth
    (:func:`evaluation_groups`) as thin boxes in :data:`EVAL_COLORS`, and a legend with their counts."""
    groups = evaluation_groups(instances, dataset_dict, score_thresh, iou_thresh)
    img = Image.fromarray(np.ascontiguousarray(image_rgb))
    draw = ImageDraw.Draw(img)
    for name in ("missed", "false positive", "true positive"):  # true positives on top
        boxes = groups[name]
        for b in boxes.tolist():
            draw.rectangle(b, outline=EVAL_COLORS[name], width=2)
    lines = [f"{name}: {len(groups[name])}" for name in EVAL_COLORS]
    lines.append(f"IoU >= {iou_thresh:g}, score >= {score_thresh:g}")
    draw.rectangle([0, 0, 230, 16 * len(lines) + 6], fill=(255, 255, 255))
    for i, text in enumerate(lines):
        draw.text((6, 4 + 16 * i), text, fill=EVAL_COLORS.get(text.split(":")[0], (0, 0, 0)))
    return np.asarray(img)


def ground_truth_lookup(dataset_names: List[str]) -> Callable[[str], Optional[dict]]:
    """image path -> its dataset dict in the registered datasets ``dataset_names`` (matched by
    absolute path, else by file name when that name is unique across them), or None."""
    by_path, by_name = {}, {}
    for name in dataset_names:
        if name not in DatasetCatalog.list():
            raise KeyError(f"--gt {name}: not a registered dataset (register it with DATASETS.REGISTER)")
        for d in DatasetCatalog.get(name):
            by_path[os.path.abspath(d["file_name"])] = d
            by_name.setdefault(os.path.basename(d["file_name"]), []).append(d)

    def lookup(path: str) -> Optional[dict]:
        found = by_path.get(os.path.abspath(path))
        if found is None:
            same_name = by_name.get(os.path.basename(path), [])
            found = same_name[0] if len(same_name) == 1 else None
        return found
    return lookup


def visualize(cfg, inputs: List[str], output_dir: str, score_thresh: float,
              gt_dicts: Optional[List[dict]] = None, eval_view: bool = False) -> List[str]:
    """Runs the model of ``cfg`` on each input image and writes ``<name>.png`` into
    ``output_dir`` (prediction, with the ground truth on the left when ``gt_dicts`` is given;
    with ``eval_view``, the evaluation picture of :func:`draw_evaluation`). Returns the paths."""
    predictor = strict_predictor(cfg)
    # class names of the test dataset when it has the model's classes (drawn as numbers otherwise)
    test = cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused"
    names = MetadataCatalog.get(test).get("thing_classes", None)
    metadata = MetadataCatalog.get(test if names is not None and len(names) == model_num_classes(cfg) else "__unused")
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for i, path in enumerate(inputs):
        bgr = utils.read_image(path, format="BGR")
        if eval_view:
            pred = draw_evaluation(bgr[:, :, ::-1], predictor(bgr)["instances"], gt_dicts[i], score_thresh)
        else:
            pred = draw_predictions(bgr[:, :, ::-1], predictor(bgr)["instances"], metadata, score_thresh)
        if gt_dicts is not None and not eval_view:
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
    parser.add_argument("--max-images", type=int, default=0,
                        help="with --dataset: only its first N images (0: all; DeepPCB's test split has 500)")
    parser.add_argument("--eval-view", action="store_true",
                        help="with --dataset: true/false positives and missed ground truth in three colours")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS W")
    args = parser.parse_args(argv)
    cfg = load_config(args.config_file, args.opts, freeze=False, check_datasets=[args.dataset] if args.dataset else [])
    if args.dataset:
        cfg.DATASETS.TEST = (args.dataset,)
    cfg.freeze()
    gt = None
    inputs = list(args.input)
    if args.dataset:
        gt = DatasetCatalog.get(args.dataset)
        if args.max_images > 0:
            gt = gt[:args.max_images]
        inputs = [d["file_name"] for d in gt]
    if not inputs:
        parser.error("give --input images or --dataset")
    if args.eval_view and gt is None:
        parser.error("--eval-view needs --dataset (ground truth to compare with)")
    for path in visualize(cfg, inputs, args.output, args.score_thresh, gt, args.eval_view):
        print(f"Detections drawn: {os.path.abspath(path)}")


if __name__ == "__main__":
    main()
