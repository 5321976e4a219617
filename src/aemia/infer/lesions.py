"""Per-lesion table of a predicted label map: one row per connected component of a lesion class.

Used by ``aemia predict`` for runs whose classes include a tumor or lesion (e.g. the liver + tumor model):
``<case>_lesions.csv`` lists every predicted lesion with its centre (voxel and world mm through the image's
affine), equivalent diameter (of a sphere with the same volume), longest axis-aligned extent and volume.
Connectivity is full (26 neighbours in 3D), as in the lesion-wise evaluation (:mod:`aemia.evaluate.metrics`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from aemia.evaluate.metrics import equivalent_diameter_mm

LESION_WORDS = ("tumor", "tumour", "lesion", "metastas", "nodule", "cancer")


def lesion_classes(classes: dict[int, str] | None) -> dict[int, str]:
    """The classes whose names say they are lesions (tumor, lesion, nodule, ...)."""
    return {k: v for k, v in (classes or {}).items() if k != 0 and any(w in str(v).lower() for w in LESION_WORDS)}


def lesion_rows(label_map: np.ndarray, label: int, spacing: Sequence[float], affine: np.ndarray | None = None,
                name: str = "lesion", min_voxels: int = 1,
                probability: np.ndarray | None = None, region: np.ndarray | None = None) -> list[dict[str, object]]:
    """One row per connected component of ``label_map == label`` with at least ``min_voxels`` voxels,
    largest first; with ``probability`` (the class's probability map, same shape) also its confidence; with
    ``region`` (the organ the lesions lie in, lesions included, e.g. the predicted liver) also ``depth_mm``, the
    lesion's mean depth inside it (:func:`tumor_depths_mm`: a few mm for a lesion at the organ's rim)."""
    mask = np.asarray(label_map) == label
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    comp, n = ndimage.label(mask, structure=structure)
    if n == 0:
        return []
    sp = np.asarray([float(s) for s in spacing], dtype=float)
    voxel_mm3 = float(np.prod(sp))
    sizes = np.bincount(comp.ravel(), minlength=n + 1)[1:]
    centres = ndimage.center_of_mass(mask, comp, range(1, n + 1))
    boxes = ndimage.find_objects(comp)
    conf_max, conf_mean = lesion_confidences(comp, n, probability) if probability is not None else (None, None)
    depths = tumor_depths_mm(comp, n, region, spacing) if region is not None else None
    rows = []
    for i in np.argsort(-sizes, kind="stable"):
        if sizes[i] < min_voxels:
            continue
        c = np.asarray(centres[i], dtype=float)
        world = (affine @ np.append(c, 1.0))[:3] if affine is not None else c * sp
        extent = max((sl.stop - sl.start) * s for sl, s in zip(boxes[i], sp))
        rows.append({
            "lesion": len(rows) + 1, "class": name,
            **{f"centre_voxel_{a}": round(float(v), 1) for a, v in zip("xyz", c)},
            **{f"centre_mm_{a}": round(float(v), 1) for a, v in zip("xyz", world)},
            "diameter_mm": round(equivalent_diameter_mm(float(sizes[i]) * voxel_mm3, mask.ndim), 2),
            "extent_mm": round(float(extent), 1),
            "volume_mm3": round(float(sizes[i]) * voxel_mm3, 1), "voxels": int(sizes[i]),
        })
        if conf_max is not None and conf_mean is not None:
            rows[-1].update(confidence=round(float(conf_max[i]), 4), confidence_mean=round(float(conf_mean[i]), 4))
        if depths is not None:
            rows[-1]["depth_mm"] = round(float(depths[i]), 1)
    return rows


def lesion_csv(rows: list[dict[str, object]]) -> str:
    fields = ["lesion", "class", "centre_voxel_x", "centre_voxel_y", "centre_voxel_z", "centre_mm_x", "centre_mm_y",
              "centre_mm_z", "diameter_mm", "extent_mm", "volume_mm3", "voxels", "confidence", "confidence_mean",
              "depth_mm"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def lesion_confidences(components: np.ndarray, n: int, probability: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(maximum, mean) of ``probability`` over each component 1..n of ``components``."""
    idx = np.arange(1, n + 1)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    p = np.asarray(probability, dtype=np.float64)
    return (np.asarray(ndimage.maximum(p, components, idx), dtype=float),
            np.asarray(ndimage.mean(p, components, idx), dtype=float))


def postprocess_liver_tumor(label_map: np.ndarray, spacing: Sequence[float], min_tumor_mm3: float = 0.0,
                            organ: int = 1, tumor: int = 2) -> np.ndarray:
    """Liver + tumour post-processing: keep the largest connected component of the organ (organ ∪ tumour voxels,
    full connectivity), so tumour voxels outside that liver become background; then tumour components smaller
    than ``min_tumor_mm3`` become organ (they lie inside it). Returns a new uint8 label map."""
    lab = np.asarray(label_map)
    out = np.zeros(lab.shape, dtype=np.uint8)
    structure = ndimage.generate_binary_structure(lab.ndim, lab.ndim)
    comp, n = ndimage.label((lab == organ) | (lab == tumor), structure=structure)
    if n == 0:
        return out
    keep = comp == (int(np.argmax(np.bincount(comp.ravel())[1:])) + 1)
    out[keep] = organ
    tum = keep & (lab == tumor)
    tcomp, m = ndimage.label(tum, structure=structure)
    if m:
        voxel_mm3 = float(np.prod([float(s) for s in spacing]))
        big = np.flatnonzero(np.bincount(tcomp.ravel())[1:] * voxel_mm3 >= min_tumor_mm3) + 1
        out[np.isin(tcomp, big)] = tumor
    return out


def liver_tumor_labels(probs: np.ndarray, spacing: Sequence[float], tumor_threshold: float | None = None,
                       min_tumor_mm3: float = 0.0, organ: int = 1, tumor: int = 2,
                       min_confidence: float = 0.0, min_depth_mm: float = 0.0) -> np.ndarray:
    """Label map of liver + tumour probabilities ``(K, *S)``: the argmax, with every voxel whose tumour probability
    reaches ``tumor_threshold`` called tumour (None: the argmax alone), then :func:`postprocess_liver_tumor`,
    then :func:`drop_unconfident_tumors` (tumours whose maximum probability is below ``min_confidence``), then
    :func:`drop_shallow_tumors` (tumours whose mean depth inside the liver is below ``min_depth_mm``).

    A tumour threshold below the argmax's is the operating point of a detector whose tumour probability is not
    calibrated: a model trained on synthetic tumours in one liver gave real tumour voxels a probability of about
    0.3 against 0.01 in the liver, never the argmax (``training_stability.json``, ``liver_tumor``). The threshold
    is chosen on synthetic validation (:func:`aemia.recipes.liver_tumor.choose_tumor_threshold`), never on test."""
    return apply_liver_tumor_rule(np.asarray(probs).argmax(0).astype(np.uint8), probs[tumor], spacing,
                                  tumor_threshold, min_tumor_mm3, min_confidence, min_depth_mm, organ, tumor)


def apply_liver_tumor_rule(argmax: np.ndarray, tumor_probability: np.ndarray, spacing: Sequence[float],
                           tumor_threshold: float | None = None, min_tumor_mm3: float = 0.0,
                           min_confidence: float = 0.0, min_depth_mm: float = 0.0, organ: int = 1,
                           tumor: int = 2) -> np.ndarray:
    """The decision rule of :func:`liver_tumor_labels` on an argmax label map and the tumour probability (for
    callers that keep only those two, e.g. cached benchmark predictions): threshold, largest liver, then the
    volume, confidence and rim cuts."""
    labels = threshold_tumor(argmax, tumor_probability, tumor_threshold, tumor)
    labels = postprocess_liver_tumor(labels, spacing, min_tumor_mm3, organ=organ, tumor=tumor)
    labels = drop_unconfident_tumors(labels, tumor_probability, min_confidence, organ=organ, tumor=tumor)
    return drop_shallow_tumors(labels, spacing, min_depth_mm, organ=organ, tumor=tumor)


def tumor_depths_mm(components: np.ndarray, n: int, inside: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Mean depth (mm) of each component 1..n of ``components`` inside the region ``inside`` (the predicted
    liver: organ ∪ tumour): the mean over the component's voxels of the Euclidean distance, in the voxel
    spacing, to the nearest voxel outside the region. A tumour in the liver's interior lies deep; a component at
    the liver's rim (where a liver prediction runs into a neighbouring organ) lies within a few mm."""
    if n == 0:
        return np.zeros(0)
    depth = ndimage.distance_transform_edt(np.asarray(inside, bool), sampling=[float(s) for s in spacing])
    return np.asarray(ndimage.mean(depth, components, np.arange(1, n + 1)), dtype=float)


def drop_shallow_tumors(labels: np.ndarray, spacing: Sequence[float], min_depth_mm: float,
                        organ: int = 1, tumor: int = 2) -> np.ndarray:
    """Tumour components (full connectivity) whose mean depth inside the predicted liver
    (:func:`tumor_depths_mm`, the liver being organ ∪ tumour) is below ``min_depth_mm`` become ``organ``: the
    rim rule, a cut chosen on synthetic validation like the others. It also removes real tumours that are
    mostly within ``min_depth_mm`` of the liver's surface (small subcapsular ones). 0 keeps every component.
    Returns a new label map; the liver (organ ∪ tumour) is unchanged."""
    out = np.array(labels, dtype=np.uint8, copy=True)
    if min_depth_mm <= 0:
        return out
    comp, n = ndimage.label(out == tumor, structure=ndimage.generate_binary_structure(out.ndim, out.ndim))
    if n:
        depth = tumor_depths_mm(comp, n, (out == organ) | (out == tumor), spacing)
        out[np.isin(comp, np.flatnonzero(depth < float(min_depth_mm)) + 1)] = organ
    return out


def drop_unconfident_tumors(labels: np.ndarray, tumor_probability: np.ndarray, min_confidence: float,
                            organ: int = 1, tumor: int = 2) -> np.ndarray:
    """Tumour components (full connectivity) whose confidence, the maximum tumour probability over the
    component (the lesion CSV's ``confidence``), is below ``min_confidence`` become ``organ``: the operating point
    of the FROC curve (:mod:`aemia.evaluate.froc`). 0 keeps every component. Returns a new label map."""
    out = np.array(labels, dtype=np.uint8, copy=True)
    if min_confidence <= 0:
        return out
    comp, n = ndimage.label(out == tumor, structure=ndimage.generate_binary_structure(out.ndim, out.ndim))
    if n:
        best, _ = lesion_confidences(comp, n, tumor_probability)
        out[np.isin(comp, np.flatnonzero(best < float(min_confidence)) + 1)] = organ
    return out


def threshold_tumor(labels: np.ndarray, tumor_probability: np.ndarray, tumor_threshold: float | None,
                    tumor: int = 2) -> np.ndarray:
    """A copy of the argmax ``labels`` with every voxel whose tumour probability reaches ``tumor_threshold``
    called ``tumor`` (None: the argmax unchanged). The first step of :func:`liver_tumor_labels`, for callers
    that keep only the argmax and the tumour probability."""
    out = np.array(labels, dtype=np.uint8, copy=True)
    if tumor_threshold is not None:
        out[np.asarray(tumor_probability) >= float(tumor_threshold)] = tumor
    return out
