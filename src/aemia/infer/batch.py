"""Predict every image under a path and write the results atomically."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from aemia.data.io import case_id, image_kind, is_dicom_file, read_image, write_nifti, write_png
from aemia.data.check import Problem
from aemia.data.orientation import to_source
from aemia.data.preflight import image_problems, require
from aemia.errors import InputError
from aemia.infer.lesions import lesion_classes, lesion_csv, lesion_rows
from aemia.infer.predictor import Predictor
from aemia.utils.io import write_text_atomic

def collect_inputs(path: Path) -> list[Path]:
    """A file, a DICOM series folder, or a folder of images (DICOM sub-folders count as one image each)."""
    if not path.exists():
        raise InputError(path, "does not exist")
    if path.is_file():
        return [path]
    children = sorted(path.iterdir())
    if any(c.is_file() and is_dicom_file(c) for c in children):
        return [path]
    found = [c for c in children if (c.is_file() and image_kind(c) is not None) or
             (c.is_dir() and any(is_dicom_file(f) for f in c.iterdir() if f.is_file()))]
    if not found:
        raise InputError(path, "no images found (expected NIfTI, NRRD, DICOM, PNG/JPEG/TIFF files)")
    return found


def predict_path(run: str | Path | None, input: str | Path, out: str | Path, tta: bool = False,
                 prune: int | None = None, device: str = "auto", amp: str = "none", progress: bool = True,
                 skip_bad: bool = False, pretrained: str | None = None) -> list[Path]:
    """Predict all inputs; 2D masks as PNG (binary 0/255), volumes as NIfTI with the input's affine,
    classification as ``predictions.csv``; for runs with a tumor / lesion class also ``<case>_lesions.csv`` (one row
    per predicted lesion: centre in voxels and world mm, equivalent diameter, extent, volume).

    Every input is validated first (readable, header sanity, the model's dimensionality and channels, finite
    voxels). If any is bad, nothing is written and :class:`ProblemsError` lists them all; with ``skip_bad`` the
    good inputs are predicted, ``failures.csv`` (case, path, problem) is written beside them and
    :class:`PartialFailure` is raised at the end (the CLI exits non-zero). Every output file is atomic.
    ``pretrained`` names a shipped model (:meth:`Predictor.from_shipped`) instead of a ``run`` folder; lesion
    tables then also carry each lesion's confidence (maximum and mean class probability)."""
    if pretrained is not None:
        predictor = Predictor.from_shipped(pretrained, tta=tta, device=device, amp=amp)
    elif run is not None:
        predictor = Predictor.from_run(run, prune=prune, tta=tta, device=device, amp=amp)
    else:
        raise InputError(None, "give a run folder (--run) or a shipped model (--pretrained)")
    inputs = collect_inputs(Path(input))
    out = Path(out)
    failures = {path: problems for path in inputs
                if (problems := image_problems(path, predictor.spatial_dims, predictor.in_channels))}
    if failures and not skip_bad:
        require([p for problems in failures.values() for p in problems], input)
    inputs = [p for p in inputs if p not in failures]
    written: list[Path] = []
    rows: list[dict[str, object]] = []
    from aemia.utils.progress import Bar

    with Bar("predicting", total=len(inputs), enabled=progress) as bar:
        for path in inputs:
            image = read_image(path)
            probs = None
            if predictor.task == "segmentation" and image.spatial_dims == 3:
                result, probs = predictor.segment(image)
            else:
                result = predictor.predict(image)
            cid = case_id(path)
            if predictor.task == "classification":
                rows.append({"case": cid, "predicted_class": int(np.argmax(result)),
                             **{f"p{k}": f"{float(p):.6f}" for k, p in enumerate(result)}})
            elif image.spatial_dims == 3:
                label = to_source(image.with_array(result[None]))  # the input's own orientation and affine
                written.append(write_nifti(label, out / f"{cid}.nii.gz"))
                lesions = lesion_classes(predictor.classes)
                if lesions:  # e.g. liver + tumor: one row per predicted lesion
                    prob = {k: to_source(image.with_array(probs[k][None])).array[0] for k in lesions} \
                        if probs is not None else {}
                    rows_l = [r for k, name in lesions.items()
                              for r in lesion_rows(label.array[0], k, label.spacing, label.affine, name,
                                                   probability=prob.get(k))]
                    target = out / f"{cid}_lesions.csv"
                    write_text_atomic(target, lesion_csv(rows_l))
                    written.append(target)
            else:
                labels = int(result.max()) > 1
                written.append(write_png(result, out / f"{cid}.png", labels=labels))
            bar.advance()
    if rows:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        target = out / "predictions.csv"
        write_text_atomic(target, buf.getvalue())
        written.append(target)
    if failures:
        target = out / "failures.csv"
        write_text_atomic(target, failures_csv(failures))
        raise PartialFailure(target, f"{len(failures)} of {len(failures) + len(inputs)} input(s) could not be "
                                     f"predicted (listed here); {len(written)} file(s) written for the others")
    return written


class PartialFailure(InputError):
    """``--skip-bad``: the good inputs were predicted, the bad ones are listed in ``failures.csv``."""


def failures_csv(failures: dict[Path, list[Problem]]) -> str:
    """``case,path,problem`` rows, one per problem."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["case", "path", "problem"])
    for path, problems in failures.items():
        for p in problems:
            w.writerow([case_id(path), p.path, p.problem])
    return buf.getvalue()
