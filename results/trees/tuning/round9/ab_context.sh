# A B C D, twice: 100-iteration trainings, one at a time, nothing else running
cd "$(git rev-parse --show-toplevel)"
P=.venv/bin/python
for rep in 1 2; do
  for v in retinanet rpn_ce ctx15 ctx15_sr1; do
    cfg=rpn_ce; extra=""
    case $v in
      retinanet) cfg=retinanet;;
      ctx15) extra="MODEL.ROI_BOX_HEAD.CONTEXT_SCALE 1.5";;
      ctx15_sr1) extra="MODEL.ROI_BOX_HEAD.CONTEXT_SCALE 1.5 MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO 1";;
    esac
    rm -rf /tmp/ab3/$v-$rep
    $P train_net.py --config-file configs/trees/$cfg.yaml SOLVER.MAX_ITER 100 SOLVER.WEIGHT_AVERAGE.ENABLED False TEST.EVAL_PERIOD 0 DATASETS.TEST "()" OUTPUT_DIR /tmp/ab3/$v-$rep $extra > /tmp/ab3_$v-$rep.log 2>&1
    echo "$v $rep $(grep -o 'Overall training speed: .*' /tmp/ab3/$v-$rep/log.txt)"
  done
done
