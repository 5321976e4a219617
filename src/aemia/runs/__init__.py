"""Run folders: what a run is on disk, read and written in one place.

Layer order of the packages (a package imports only packages to its left; ``tests/test_no_package_cycles.py``
checks that the import graph has no cycle)::

    utils → data → evaluate → nets → train → runs → infer → pretrain, active, synth, semisup, weak → recipes → cli

* :mod:`aemia.runs` (this package, low): :class:`RunConfig` (:mod:`aemia.runs.config`) and :class:`RunFolder`
  (:mod:`aemia.runs.folder`): paths of ``config.yaml``, ``splits.json``, ``checkpoints/``, ``log.jsonl``,
  ``metrics.json``, ``per_case.csv``, ``figures/``, ``report.html`` and load/save of the config. It needs only
  ``train``'s :class:`~aemia.train.TrainConfig`, so ``infer`` (the :class:`~aemia.infer.predictor.Predictor`)
  and the method packages read and write runs through it.
* :mod:`aemia.recipes` (high): a data set → a trained and evaluated run (:mod:`aemia.recipes.run`), its
  evaluation and report, the UNet++ pruning analysis and the liver-tumor recipe; it uses ``infer`` and the
  method packages.
"""

from aemia.runs.config import PRESETS, RUN_TASKS, SEMI_METHODS, RunConfig, check_method, class_names, labelled_subset
from aemia.runs.folder import RunFolder

__all__ = ["PRESETS", "RUN_TASKS", "SEMI_METHODS", "RunConfig", "RunFolder", "check_method", "class_names",
           "labelled_subset"]
