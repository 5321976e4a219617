"""Weak supervision: localisation from image-level labels (class activation maps, Zhou et al. CVPR 2016)."""

from aemia.weak.cam import (
    CamConfig,
    CamOutput,
    cam_from_maps,
    class_activation_maps,
    largest_component,
    normalise_cams,
    plot_cams,
    score_masks,
    supports_cam,
    threshold_cam,
    threshold_cams,
)

__all__ = [
    "CamConfig",
    "CamOutput",
    "cam_from_maps",
    "class_activation_maps",
    "largest_component",
    "normalise_cams",
    "plot_cams",
    "score_masks",
    "supports_cam",
    "threshold_cam",
    "threshold_cams",
]
