# A B A B: 100-iteration trainings of the two shipped trees recipes, one at a time, wall time of each
cd /work/main
P=.venv/bin/python
for rep in 1 2; do
  for cfg in retinanet rpn_ce; do
    rm -rf /tmp/ab/$cfg-$rep
    s=$(date +%s.%N)
    $P train_net.py --config-file configs/trees/$cfg.yaml SOLVER.MAX_ITER 100 SOLVER.WEIGHT_AVERAGE.ENABLED False TEST.EVAL_PERIOD 0 DATASETS.TEST "()" OUTPUT_DIR /tmp/ab/$cfg-$rep > /tmp/ab_$cfg-$rep.log 2>&1
    e=$(date +%s.%N)
    echo "$cfg rep $rep wall $(echo "$e - $s" | bc) s; $(grep -o 'Overall training speed: .*' /tmp/ab/$cfg-$rep/log.txt)"
  done
done
