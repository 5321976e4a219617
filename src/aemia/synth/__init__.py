"""Synthetic lesions for annotation-free training and validation (METHODS.md §3).

* :mod:`aemia.synth.tumor` — the label-free liver tumor pipeline of Hu et al., CVPR 2023
  (:func:`synthesize_tumors`, :func:`synthesize_validation_tumors`, :class:`TumorConfig`);
* :mod:`aemia.synth.transform` — :class:`RandTumorSynthesisd`, a MONAI dictionary transform that adds tumors to
  healthy training cases with per-worker, per-epoch randomness.
"""

from aemia.synth.tumor import (
    SIZE_BINS,
    SIZE_TYPES,
    TUMOR_TYPES,
    SynthesisResult,
    SynthTumor,
    TumorConfig,
    equivalent_diameter_mm,
    generate_texture,
    sample_tumor_type,
    size_bin,
    synthesize_tumors,
    synthesize_validation_tumors,
)

__all__ = [
    "SIZE_BINS", "SIZE_TYPES", "TUMOR_TYPES", "SynthesisResult", "SynthTumor", "TumorConfig", "RandTumorSynthesisd",
    "equivalent_diameter_mm", "generate_texture", "sample_tumor_type", "size_bin", "synthesize_tumors",
    "synthesize_validation_tumors",
]


def __getattr__(name: str):  # lazy: the transform imports torch and MONAI
    if name == "RandTumorSynthesisd":
        from aemia.synth.transform import RandTumorSynthesisd

        return RandTumorSynthesisd
    raise AttributeError(name)
