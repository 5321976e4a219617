"""Synthetic lesions for annotation-free training and validation (METHODS.md §3).

* :mod:`aemia.synth.tumor` — the label-free liver tumor pipeline of Hu et al., CVPR 2023
  (:func:`~aemia.synth.tumor.synthesize_tumors`, :func:`~aemia.synth.tumor.synthesize_validation_tumors`,
  :class:`~aemia.synth.tumor.TumorConfig`);
* :mod:`aemia.synth.transform` — :class:`~aemia.synth.transform.RandTumorSynthesisd`, a MONAI dictionary
  transform that adds tumors to healthy training cases with per-worker, per-epoch randomness.

Import from the owning module (``from aemia.synth.tumor import synthesize_tumors``); the package re-exports
nothing.
"""
