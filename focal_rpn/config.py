"""Config keys that focal_rpn adds to Detectron2's defaults."""
import logging

from detectron2.config import CfgNode as CN


def add_focal_rpn_config(cfg):
    """Adds every focal_rpn key, with its default, to ``cfg`` (a detectron2 CfgNode), in place.

    Call it after ``get_cfg()`` and before ``merge_from_file``.
    """
    _C = cfg

    # ---- FocalRetinaNet (META_ARCHITECTURE "FocalRetinaNet") ----
    # Classification loss: "focal" (sigmoid focal loss with FOCAL_LOSS_ALPHA/GAMMA), "ce" (γ=0, no
    # α), "alpha_ce" (γ=0 with α = FOCAL_LOSS_ALPHA), "fl_star" (the paper's appendix FL*),
    # "ohem" / "ohem_1_3" (online hard example mining over all anchors; Table 1d of the paper).
    _C.MODEL.RETINANET.LOSS_TYPE = "focal"
    # FL* = -log σ(γ x_t + β) / γ.
    _C.MODEL.RETINANET.FL_STAR_GAMMA = 2.0
    _C.MODEL.RETINANET.FL_STAR_BETA = 1.0
    # OHEM: NMS over anchors scored by their loss, then the hardest anchors per image are kept.
    _C.MODEL.RETINANET.OHEM_NMS_THRESH = 0.5
    _C.MODEL.RETINANET.OHEM_BATCH_SIZE_PER_IMAGE = 128
    # Negatives in the classification loss per positive anchor, drawn at random per image; 0: all
    # of them (the paper). The imbalance sweep's dial (study suite "sweep"): it changes how many
    # negatives the loss sees, not which anchors exist or how they are labelled.
    _C.MODEL.RETINANET.NEG_POS_RATIO = 0.0
    # "ema": Detectron2's moving average of the number of positives (matches the d2 zoo);
    # "num_pos": the paper's per-batch number of positive anchors.
    _C.MODEL.RETINANET.LOSS_NORMALIZER = "ema"

    # ---- FocalRPN (PROPOSAL_GENERATOR.NAME "FocalRPN"): no 1:1 sampling, focal objectness ----
    _C.MODEL.FOCAL_RPN = CN()
    # "sigmoid": 1 logit per anchor (RPN.HEAD_NAME "StandardRPNHead"); "softmax": 2 logits per
    # anchor (RPN.HEAD_NAME "SoftmaxRPNHead").
    _C.MODEL.FOCAL_RPN.FORM = "sigmoid"
    # Focal loss α (weight of object anchors; background gets 1 - α; < 0 disables) and γ.
    _C.MODEL.FOCAL_RPN.ALPHA = 0.25
    _C.MODEL.FOCAL_RPN.GAMMA = 2.0
    # λ in loss_rpn_cls = λ / N_pos · Σ FL over all labelled anchors.
    _C.MODEL.FOCAL_RPN.CLS_LOSS_WEIGHT = 0.1
    # loss_rpn_loc = Σ_pos reg / (REG_NORM_FACTOR · N_pos).
    _C.MODEL.FOCAL_RPN.REG_NORM_FACTOR = 2.0
    # Initial object probability of every anchor (bias init of the objectness logits).
    _C.MODEL.FOCAL_RPN.PRIOR_PROB = 0.01
    # Negatives kept per positive anchor, drawn at random per image (the others ignored); 0: all of
    # them (the paper). The RPN imbalance sweep's dial (study suite "sweep_rpn").
    _C.MODEL.FOCAL_RPN.NEG_POS_RATIO = 0.0

    # ---- OHEM ROI heads (ROI_HEADS.NAME "OHEMROIHeads") ----
    _C.MODEL.OHEM = CN()
    # RoIs kept per image after NMS over RoIs scored by their loss.
    _C.MODEL.OHEM.BATCH_SIZE_PER_IMAGE = 128
    _C.MODEL.OHEM.NMS_THRESH = 0.7
    # 0: the top RoIs by loss (plain OHEM); 3: every positive plus 3x as many hardest negatives.
    _C.MODEL.OHEM.NEG_POS_RATIO = 0.0
    # RoIs with IoU below this are ignored rather than background (0.0: the OHEM paper's choice).
    _C.MODEL.OHEM.BG_IOU_LOW = 0.0

    # ---- Focal-loss box classifier (ROI_HEADS.NAME "FocalROIHeads") ----
    _C.MODEL.ROI_BOX_HEAD.FOCAL_GAMMA = 2.0
    # < 0: no class weighting; a float: foreground classes α, background 1 - α.
    _C.MODEL.ROI_BOX_HEAD.FOCAL_ALPHA = -1.0
    # Per-class weights of FocalROIHeads' classification loss (with FOCAL_GAMMA 0: weighted
    # cross-entropy), for imbalance between object classes: [] none; ["frequency"]: w_c =
    # 1 / ln(1.10 + f_c) from the share f_c of DATASETS.TRAIN's boxes (counted once, since a batch
    # need not hold every class); or one number per foreground class, [w1, w2, ...]. Replaces
    # FOCAL_ALPHA (set it < 0).
    _C.MODEL.ROI_BOX_HEAD.CLASS_WEIGHTS = []
    # The background class's weight with CLASS_WEIGHTS; < 0: the mean of the foreground weights
    # (the design note's choice: background is neither rare nor common among the RoIs it samples).
    _C.MODEL.ROI_BOX_HEAD.BACKGROUND_WEIGHT = -1.0

    # ---- Anchors fitted to the training boxes (focal_rpn/modeling/anchor_fit.py) ----
    # True: before the model is built, SIZES and ASPECT_RATIOS are fitted to the boxes of
    # DATASETS.TRAIN after the training augmentations, keeping their counts, to maximise the share
    # of boxes with an anchor at the matcher's positive IoU. For data whose objects differ from
    # the recipe's (a recipe's anchors are tuned to its own boxes). Sizes are the same multiples of
    # each level's stride, so small and large boxes get about as many positive anchors (sizes
    # placed freely where most boxes are starved BCCD's rare small platelets). Logged as a table.
    _C.MODEL.ANCHOR_GENERATOR.FIT = False
    # Images drawn (fixed seed) for the fit: its cost, not its outcome, grows with more.
    _C.MODEL.ANCHOR_GENERATOR.FIT_MAX_IMAGES = 1000
    # Set by the fit, not by hand: the datasets SIZES / ASPECT_RATIOS were fitted to. The run's
    # config.yaml then holds explicit anchors, so --eval-only, predict and export do not fit again.
    _C.MODEL.ANCHOR_GENERATOR.FITTED_ON = ()

    # ---- Narrow ResNet-FPN backbone (BACKBONE.NAME "build_narrow_resnet_fpn_backbone") ----
    _C.MODEL.NARROW_RESNET = CN()
    # Channels of the BasicStem (7x7 conv, stride 2, then max-pool).
    _C.MODEL.NARROW_RESNET.STEM_CHANNELS = 32
    # Output channels and number of BasicBlocks of res2, res3, res4, res5.
    _C.MODEL.NARROW_RESNET.WIDTHS = [32, 64, 128, 256]
    _C.MODEL.NARROW_RESNET.DEPTHS = [1, 1, 1, 1]
    # Extra FPN levels above res5: "p6p7" (RetinaNet), "maxpool" (Faster R-CNN) or "".
    _C.MODEL.NARROW_RESNET.TOP_BLOCK = "p6p7"

    # ---- Speed ----
    # Convolutions in the channels_last (NHWC) layout: model weights and input batches. oneDNN's
    # NHWC kernels are faster on CPUs (and tensor cores prefer NHWC on GPUs); same results up to
    # rounding. With SOLVER.AMP.ENABLED on a CPU, training runs under bfloat16 autocast (in float32
    # where the CPU has no bfloat16 units: focal_rpn/engine/autocast.py).
    _C.MODEL.CHANNELS_LAST = False
    # Threads for per-image work that PyTorch runs on one CPU core: RoIAlign's backward and the
    # RPN's proposal selection (top-k, NMS) take a range of the batch's images each. Bitwise the
    # same results as 1; on 2 cores the trees Faster R-CNN step is faster (docs/performance.md).
    _C.MODEL.IMAGE_THREADS = 1
    # RoIAlign's implementation on a CPU: "torchvision" (Detectron2's layer) or "gather" (the same
    # sampling as a weighted gather and its sparse transpose, focal_rpn/layers/gather_roi_align.py;
    # the same outputs and gradients to float rounding; 0.87x the trees Faster R-CNN training step,
    # where torchvision's scalar-loop backward was the largest kernel). Inference and GPUs keep
    # torchvision's kernel.
    _C.MODEL.ROI_ALIGN_IMPL = "torchvision"

    # Keep each training image decoded in memory after its first read (per loader process). A
    # few dozen trees tiles take ~40 MB and save a PNG decode per crop; COCO's 118k would not fit.
    _C.DATALOADER.CACHE_IMAGES = False

    # ---- Weight averaging over the tail of training (focal_rpn/engine/weight_average.py) ----
    # The final weights (model_final.pth, the final evaluation) are the mean of snapshots taken
    # after START_ITER iterations, every PERIOD after that, and after the last one; BatchNorm
    # statistics are averaged too. On the trees photographs one late snapshot is a noisy pick and
    # the mean of iterations 400-650 scored +3.4 AP50 (RetinaNet) and +1.7 (Faster R-CNN) over the
    # last one (docs/recipes.md). Training is untouched; with CHECKPOINT_PERIOD dividing START_ITER and
    # PERIOD, the average of a run trained without it is rebuilt from its checkpoints.
    _C.SOLVER.WEIGHT_AVERAGE = CN()
    _C.SOLVER.WEIGHT_AVERAGE.ENABLED = False
    _C.SOLVER.WEIGHT_AVERAGE.START_ITER = 400
    _C.SOLVER.WEIGHT_AVERAGE.PERIOD = 100

    # The user's own datasets, registered before anything is built (focal_rpn/data/user_datasets.py):
    # "NAME=coco:ANNOTATIONS.json:IMAGE_DIR" or "NAME=voc:DIR" (images + Pascal VOC XMLs).
    _C.DATASETS.REGISTER = ()

    # ---- Data augmentation (applied in training only) ----
    # Aerial photographs have no "up": a vertical flip and 90° rotations are free augmentations.
    _C.INPUT.VERTICAL_FLIP = False
    _C.INPUT.ROTATE_90 = False
    # Photometric jitter: brightness, contrast and saturation each scaled by a factor drawn from
    # [1 - COLOR_JITTER, 1 + COLOR_JITTER]; 0 disables.
    _C.INPUT.COLOR_JITTER = 0.0

    # ---- Test-time augmentation (focal_rpn/modeling/test_time_augmentation.py) ----
    # True: the evaluation (Trainer.test, --eval-only, the study's summaries), predict and visualize
    # see each test image in VIEWS views and merge their detections (export refuses it). For any
    # detector; Detectron2's TEST.AUG (R-CNN only, in its tools/train_net.py) is refused instead.
    _C.TEST.TTA = CN()
    _C.TEST.TTA.ENABLED = False
    # The first VIEWS of: as is, mirrored left-right, a half turn, a half turn mirrored (= flipped
    # up-down), then the quarter and three-quarter turns, each as is and mirrored. 2: the image and
    # its mirror; 4: every flip; 8: every flip and quarter turn (data without an "up", as blood
    # smears, circuit boards and aerial photographs).
    _C.TEST.TTA.VIEWS = 8
    # Class-wise NMS over the views' detections at this IoU, keeping TEST.DETECTIONS_PER_IMAGE.
    _C.TEST.TTA.NMS_THRESH = 0.5
    # "nms": the kept boxes as they are; "vote": each kept box the score-weighted mean of the
    # same-class boxes overlapping it by more than VOTE_IOU (box voting). On bccd_val (RetinaNet
    # recipe, 3 seeds) 8 views gave +0.6 AP with "nms", +2.5 with "vote" at 0.6 (+2.4 at 0.8, +1.4
    # at 0.5, where touching cells vote for each other); AP50 unchanged (docs/recipes.md).
    _C.TEST.TTA.MERGE = "vote"
    _C.TEST.TTA.VOTE_IOU = 0.6
    return cfg


def is_retinanet(cfg) -> bool:
    """Whether cfg's meta-architecture is RetinaNet-like (MODEL.RETINANET.* keys apply) rather than
    an R-CNN (MODEL.ROI_HEADS.*)."""
    return "RetinaNet" in cfg.MODEL.META_ARCHITECTURE


def num_classes_key(cfg) -> str:
    """The config key that sets the detector's number of classes for this meta-architecture."""
    return "MODEL.RETINANET.NUM_CLASSES" if is_retinanet(cfg) else "MODEL.ROI_HEADS.NUM_CLASSES"


def model_num_classes(cfg) -> int:
    """The number of classes the model of ``cfg`` predicts."""
    return cfg.MODEL.RETINANET.NUM_CLASSES if is_retinanet(cfg) else cfg.MODEL.ROI_HEADS.NUM_CLASSES


def dense_anchor_keys(cfg):
    """(the backbone outputs the anchors are laid on, the matcher's positive IoU threshold): of
    RetinaNet's head, or of an R-CNN's RPN."""
    if is_retinanet(cfg):
        return list(cfg.MODEL.RETINANET.IN_FEATURES), cfg.MODEL.RETINANET.IOU_THRESHOLDS[-1]
    return list(cfg.MODEL.RPN.IN_FEATURES), cfg.MODEL.RPN.IOU_THRESHOLDS[-1]


def fit_config_anchors(cfg):
    """(cfg with anchors fitted to DATASETS.TRAIN, the fit's table for the log) when
    MODEL.ANCHOR_GENERATOR.FIT is on and not yet done; else (cfg, "")."""
    from .modeling.anchor_fit import apply_anchor_fit, format_fit

    in_features, threshold = dense_anchor_keys(cfg)
    cfg, fit = apply_anchor_fit(cfg, in_features, threshold)
    return cfg, (format_fit(fit, cfg.DATASETS.TRAIN, in_features, threshold) if fit is not None else "")


def load_config(config_file: str, opts=(), freeze: bool = True, check_datasets=None, fit_anchors: bool = True):
    """Detectron2's defaults + focal_rpn's keys, then ``config_file`` and ``opts`` (KEY VALUE ...).
    Registers DATASETS.REGISTER (here, so that every tool and every launch() worker has them) and
    checks that the datasets ``check_datasets`` (default: DATASETS.TRAIN and TEST) have as many
    classes as the model; inference tools pass only the datasets they read. With
    MODEL.ANCHOR_GENERATOR.FIT (and ``fit_anchors``), the anchors are fitted to DATASETS.TRAIN."""
    from detectron2.config import get_cfg

    from .data.user_datasets import check_class_count, register_dataset

    cfg = add_focal_rpn_config(get_cfg())
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    for spec in cfg.DATASETS.REGISTER:
        register_dataset(spec)
    key = num_classes_key(cfg)
    check_class_count(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST) if check_datasets is None else check_datasets,
                      model_num_classes(cfg), key)
    if fit_anchors:
        cfg, message = fit_config_anchors(cfg)
        if message:
            logging.getLogger(__name__).info(message)
    if freeze:
        cfg.freeze()
    return cfg
