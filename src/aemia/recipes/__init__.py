"""Recipes: a data set → a trained, evaluated and reported run folder.

:mod:`aemia.recipes.run` (``train_run``: build the model and data, train with :class:`aemia.train.Trainer`,
evaluate), :mod:`aemia.recipes.report` (evaluation split → ``metrics.json``, ``per_case.csv``, ``report.html``),
:mod:`aemia.recipes.pruning` (UNet++ pruned heads: Dice vs time) and :mod:`aemia.recipes.liver_tumor` (liver +
tumor from liver masks only, with synthetic tumors). The package sits above ``infer`` and the method packages
(``semisup``, ``synth``, ...) and below ``cli``; the full layer order is in :mod:`aemia.runs`.
"""
