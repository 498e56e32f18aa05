# A B C A B C: 100-iteration trainings, one at a time (background chain paused by caller)
cd "$(git rev-parse --show-toplevel)"
P=.venv/bin/python
FAST="MODEL.ROI_BOX_HEAD.CONTEXT_SCALE 1.5 MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO 1 MODEL.RPN.PRE_NMS_TOPK_TRAIN 500 MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE 128"
for rep in 1 2; do
  for v in retinanet rpn_ce fast; do
    cfg=$v; extra=""
    if [ $v = fast ]; then cfg=rpn_ce; extra="$FAST"; fi
    rm -rf /tmp/ab2/$v-$rep
    $P train_net.py --config-file configs/trees/$cfg.yaml SOLVER.MAX_ITER 100 SOLVER.WEIGHT_AVERAGE.ENABLED False TEST.EVAL_PERIOD 0 DATASETS.TEST "()" OUTPUT_DIR /tmp/ab2/$v-$rep $extra > /tmp/ab2_$v-$rep.log 2>&1
    echo "$v rep $rep; $(grep -o 'Overall training speed: .*' /tmp/ab2/$v-$rep/log.txt)"
  done
done
