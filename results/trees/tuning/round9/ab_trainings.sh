# Whole-training step time, run in turn: 100-iteration trainings (no weight average, no evaluation)
# of each variant, one at a time in the order given, REPS times; prints Detectron2's s/iter of each.
#   bash ab_trainings.sh REPS NAME=CONFIG[:OPTS] ...     (CONFIG under configs/trees/, without .yaml)
# This round's two measurements (step_time.json):
#   bash ab_trainings.sh 2 retinanet=retinanet rpn_ce=rpn_ce "fast=rpn_ce:$CTX $SR1 MODEL.RPN.PRE_NMS_TOPK_TRAIN 500 MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE 128"
#   bash ab_trainings.sh 2 retinanet=retinanet rpn_ce=rpn_ce "ctx15=rpn_ce:$CTX" "ctx15_sr1=rpn_ce:$CTX $SR1"
# with CTX="MODEL.ROI_BOX_HEAD.CONTEXT_SCALE 1.5" and SR1="MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO 1".
set -eu
cd "$(git rev-parse --show-toplevel)"
reps=$1; shift
mkdir -p /tmp/ab_trainings
for rep in $(seq 1 "$reps"); do
  for v in "$@"; do
    name=${v%%=*}; spec=${v#*=}; cfg=${spec%%:*}; extra=""
    [ "$spec" != "$cfg" ] && extra=${spec#*:}
    out=/tmp/ab_trainings/$name-$rep
    rm -rf "$out"
    # shellcheck disable=SC2086  # extra holds KEY VALUE pairs
    .venv/bin/python train_net.py --config-file configs/trees/$cfg.yaml SOLVER.MAX_ITER 100 \
      SOLVER.WEIGHT_AVERAGE.ENABLED False TEST.EVAL_PERIOD 0 DATASETS.TEST "()" OUTPUT_DIR "$out" $extra > "$out.log" 2>&1
    echo "$name $rep $(grep -o 'Overall training speed: .*' "$out/log.txt")"
  done
done
