"""The ablation study: plans runs of suite variants and seeds, runs them (locally or on SLURM),
keeps one summary per run and reports the suites with confidence intervals."""
