"""Hyper-parameter search: the parts of ``melecole tune`` that do not depend on Optuna.

- :mod:`melecole.tuning.space`: the search-space file (fixed overrides, dimensions over dotted
  params.yaml keys, pruning and sampler settings, trials to run first).
- :mod:`melecole.tuning.pruning`: the median stopping rule on intermediate validation VI.
- :mod:`melecole.tuning.budget`: how many trials a study holds, so workers share ``--trials N``.
- :mod:`melecole.tuning.runner`: training as a watched subprocess that can be stopped early.
- :mod:`melecole.tuning.trial`: one trial, train -> predict -> segment -> evaluate on validation.
- :mod:`melecole.tuning.pareto`: the Pareto front as a table, CSV, PNG and params override.
- :mod:`melecole.tuning.study`: the one module that imports Optuna.
"""
