"""The ablation study, in the order a call goes through it: ``suites`` (the variants and the config
each run builds), ``runner`` (runs them one process each, under a ``lock``; ``slurm`` submits them
as jobs instead), ``summaries`` (one per run, carrying its config), ``report`` and ``sweep`` (the
tables, readings and plots, from the summaries alone, with ``stats``' confidence intervals), and
``reevaluate`` (a test-time change without training)."""
