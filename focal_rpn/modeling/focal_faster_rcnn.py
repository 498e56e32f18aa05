"""FocalFasterRCNN: Detectron2's GeneralizedRCNN that also reports on its proposals."""
import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import pairwise_iou
from detectron2.utils.events import get_event_storage


@META_ARCH_REGISTRY.register()
class FocalFasterRCNN(GeneralizedRCNN):
    """Faster R-CNN (any proposal generator: RPN, FocalRPN) that

    - in training, logs ``rpn/proposal_recall@0.5``: the fraction of ground-truth boxes covered
      at IoU ≥ 0.5 by the training proposals;
    - in inference, returns each image's proposals beside its detections
      (``{"instances", "proposals"}``), so that COCOEvaluator also reports the RPN's AR@100 and
      AR@1000 (all, small, medium, large) as ``box_proposals/...``.
    """

    @configurable
    def __init__(self, **kwargs):
        """Takes what :class:`GeneralizedRCNN` takes."""
        super().__init__(**kwargs)
        self._last_proposals = None
        if self.proposal_generator is not None:
            self.proposal_generator.register_forward_hook(self._on_proposals)

    def _on_proposals(self, module, inputs, outputs):
        proposals = outputs[0]
        if not self.training:
            self._last_proposals = proposals
            return
        gt_instances = inputs[2] if len(inputs) > 2 else None
        if gt_instances is None:
            return
        covered, total = 0, 0
        with torch.no_grad():
            for p, gt in zip(proposals, gt_instances):
                if len(gt) == 0:
                    continue
                total += len(gt)
                if len(p) > 0:
                    covered += int((pairwise_iou(gt.gt_boxes, p.proposal_boxes).max(dim=1).values >= 0.5).sum())
        if total:
            get_event_storage().put_scalar("rpn/proposal_recall@0.5", covered / total)

    def inference(self, batched_inputs, detected_instances=None, do_postprocess=True):
        """As GeneralizedRCNN.inference; with post-processing, adds "proposals" to each output."""
        self._last_proposals = None
        results = super().inference(batched_inputs, detected_instances, do_postprocess)
        if do_postprocess and self._last_proposals is not None:
            for out, props, inp in zip(results, self._last_proposals, batched_inputs):
                h = inp.get("height", props.image_size[0])
                w = inp.get("width", props.image_size[1])
                out["proposals"] = detector_postprocess(props, h, w)
        self._last_proposals = None
        return results
