"""``aemia synth``: synthetic lesions written to disk (METHODS.md §3; Hu et al., CVPR 2023).

``aemia synth tumors`` writes, into ``--out``::

    images/<case>.nii.gz      CT with synthetic tumors (float32 HU, the input's geometry and affine)
    labels/<case>.nii.gz      0 background, 1 organ, 2 tumor (uint8, same geometry)
    instances/<case>.nii.gz   tumor ids matching tumors.csv (only with --for-validation)
    montages/<case>.png       axial slices through each tumor (CT window [-160, 240], tumor outlined)
    tumors.csv                case, tumor id, type, size bin, centre (mm, voxel), diameter, volume, mean HU drop
    synth.json                the settings of the run

Everything is written into a staging folder beside ``--out`` and moved into place at the end, so a failure
leaves nothing half-written.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer

from aemia.cli import validate as v

from aemia.cli.common import console, err_console

CT_WINDOW_DISPLAY = (-160.0, 240.0)
_CSV_FIELDS = ("case", "tumor_id", "type", "size_bin", "centre_x_mm", "centre_y_mm", "centre_z_mm", "centre_i",
               "centre_j", "centre_k", "diameter_mm", "volume_mm3", "n_voxels", "mean_hu_drop")

synth_app = typer.Typer(
    name="synth",
    help=(
        "Synthetic lesions for training and validation without lesion annotations (label-free liver tumors, "
        "Hu et al. CVPR 2023): needs a CT and an organ mask, no tumor labels.\n\n"
        "Example: aemia synth tumors --ct ct.nii.gz --organ-mask seg.nii.gz --organ-label 5 --n 20 --type mix "
        "--out synth/ --seed 0"
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
)


def register(app: typer.Typer) -> None:
    """Add the ``synth`` command group to the main app."""
    app.add_typer(synth_app, name="synth")


@synth_app.command("tumors")
def tumors_cmd(
    ct: Path = typer.Option(..., "--ct", help="CT in HU: NIfTI file or DICOM folder.", callback=v.existing),
    organ_mask: Path = typer.Option(..., "--organ-mask", "-m", help="Label map on the CT's grid (e.g. TotalSegmentator).", callback=v.existing),
    organ_label: int = typer.Option(1, "--organ-label", help="Value of the organ in the mask (liver = 5 in TotalSegmentator v1).", callback=v.at_least_one),
    n: int = typer.Option(20, "--n", "-n", help="Number of synthetic cases to write.", callback=v.at_least_one),
    tumor_type: str = typer.Option("random", "--type", help="tiny, small, medium, large, mix, or random (the paper's draw, p 0.2 each).", callback=v.choice(v.tumor_types)),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (created; must not exist or be empty unless --overwrite).", callback=v.out_folder),
    seed: int = typer.Option(0, help="Seed: case i uses the stream (seed, i).", callback=v.non_negative),
    for_validation: bool = typer.Option(False, "--for-validation", help="Controlled tumors per size bin (<=5, 5-10, 10-20, >20 mm), kept apart, with an instance map."),
    per_bin: int = typer.Option(2, "--per-bin", help="With --for-validation: tumors per size bin in each case.", callback=v.at_least_one),
    vessel_mask: Optional[Path] = typer.Option(None, "--vessel-mask", help="Label map of vessels: tumors avoid them (paper's realism extra).", callback=v.existing),
    vessel_labels: Optional[str] = typer.Option(None, "--vessel-labels", help="Comma-separated vessel values in --vessel-mask (default: any non-zero).", callback=v.int_list()),
    capsule: bool = typer.Option(False, "--capsule", help="Add an enhancing capsule rim (paper's realism extra)."),
    montage: bool = typer.Option(True, "--montage/--no-montage", help="Write a PNG montage per case."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out folder."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar (default: when stderr is a terminal)."),
) -> None:
    """Write CT volumes with synthetic tumors, their labels, a tumors.csv and per-case PNG montages.

    Example: aemia synth tumors --ct ../shared/data/totalsegmentator_example_ct/example_ct.nii.gz --organ-mask ../shared/data/totalsegmentator_example_ct/example_ct_seg_totalv1.nii.gz --organ-label 5 --n 20 --type mix --out synth/ --seed 0
    """
    from aemia.cli.common import parse_ints

    summary = write_synthetic_tumors(
        ct, organ_mask, out, organ_label=organ_label, n=n, tumor_type=tumor_type, seed=seed,
        for_validation=for_validation, per_bin=per_bin, vessel_mask=vessel_mask,
        vessel_labels=parse_ints(vessel_labels, "--vessel-labels"), capsule=capsule, montage=montage,
        overwrite=overwrite, progress=sys.stderr.isatty() if progress is None else progress)
    console.print(f"wrote {summary['cases']} case(s) with {summary['tumors']} tumor(s) to {out}")
    if summary["missing"]:
        err_console.print(f"warning: {summary['missing']} requested tumor(s) did not fit in the organ")


# ------------------------------------------------------------------------------------------------ library


def _check_inputs(ct_path: Path, mask_path: Path, organ_label: int, vessel_path: Path | None,
                  vessel_labels: list[int] | None) -> tuple[Any, np.ndarray, np.ndarray | None]:
    from aemia.data.io import read_image
    from aemia.errors import InputError

    from aemia.data.preflight import ct_volume, label_map, require

    ct = read_image(ct_path)
    require(ct_volume(ct_path, ct), ct_path)  # 3D, one channel, no NaN/inf (they would be copied into the output)

    def load_mask(path: Path, what: str) -> np.ndarray:
        mask = read_image(path)
        require(label_map(path, mask), path)  # not 4D, no NaN/inf, integer labels (rint would invent labels)
        if mask.channels != 1 or mask.spatial_shape != ct.spatial_shape:
            raise InputError(path, f"{what} geometry does not match the CT {ct_path}: shape {mask.spatial_shape} "
                                   f"vs {ct.spatial_shape}")
        if not np.allclose(mask.affine, ct.affine, atol=1e-3, rtol=1e-5):
            raise InputError(path, f"{what} geometry does not match the CT {ct_path}: {_affine_difference(mask, ct)}")
        arr = np.asarray(mask.array[0])
        return np.rint(arr).astype(np.int64) if np.issubdtype(arr.dtype, np.floating) else arr.astype(np.int64)

    labels = load_mask(mask_path, "organ mask")
    organ = labels == organ_label
    if not organ.any():
        present = sorted(int(v) for v in np.unique(labels) if v != 0)
        if not present:
            raise InputError(mask_path, "no organ voxels: every voxel of the mask is 0")
        shown = ", ".join(str(v) for v in present[:20]) + (" ..." if len(present) > 20 else "")
        raise InputError(mask_path, f"organ label {organ_label} is absent (labels present: {shown}); "
                                    f"set --organ-label")
    vessels = None
    if vessel_path is not None:
        v = load_mask(vessel_path, "vessel mask")
        vessels = np.isin(v, vessel_labels) if vessel_labels else v != 0
    return ct, organ, vessels


def _affine_difference(a: Any, b: Any) -> str:
    """Name what differs between two images' affines: spacing, axis directions, or origin (a, then b)."""
    def r(v: Any) -> list:
        return np.round(np.asarray(v, dtype=float), 3).tolist()

    sa, sb = np.linalg.norm(a.affine[:3, :3], axis=0), np.linalg.norm(b.affine[:3, :3], axis=0)
    if not np.allclose(sa, sb, atol=1e-3, rtol=1e-5):
        return f"spacing {r(sa)} vs {r(sb)}"
    da, db = a.affine[:3, :3] / sa, b.affine[:3, :3] / sb
    if not np.allclose(da, db, atol=1e-3):
        return f"axis directions {r(da)} vs {r(db)}"
    return f"origin {r(a.affine[:3, 3])} vs {r(b.affine[:3, 3])}"


def _montage(path: Path, image: np.ndarray, label: np.ndarray, tumors: list, spacing: tuple[float, ...],
             axis: int, title: str, max_panels: int = 30) -> None:
    """Axial slices through each tumor centre, cropped around it, CT window [-160, 240], tumor outlined."""
    from matplotlib.figure import Figure

    from aemia.utils.io import write_with

    shown = tumors[:max_panels]
    cols = max(1, min(6, len(shown)))
    rows = max(1, -(-len(shown) // cols))
    fig = Figure(figsize=(2.4 * cols, 2.6 * rows + 0.4))
    fig.suptitle(title, fontsize=9)
    inplane = [i for i in range(3) if i != axis]
    lo, hi = CT_WINDOW_DISPLAY
    if not shown:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no tumor placed", ha="center", va="center")
        ax.axis("off")
    for k, t in enumerate(shown):
        ax = fig.add_subplot(rows, cols, k + 1)
        c = t.centre_voxel
        sl = np.take(image, c[axis], axis=axis)
        lab = np.take(label, c[axis], axis=axis)
        half_mm = max(25.0, 1.5 * t.diameter_mm)
        win = []
        for j, ax_i in enumerate(inplane):
            h = int(np.ceil(half_mm / spacing[ax_i]))
            win.append(slice(max(c[ax_i] - h, 0), min(c[ax_i] + h + 1, sl.shape[j])))
        crop = sl[tuple(win)].T  # rows = second in-plane axis (anterior up with origin="lower")
        lcrop = lab[tuple(win)].T
        aspect = spacing[inplane[1]] / spacing[inplane[0]]
        ax.imshow(np.clip(crop, lo, hi), cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=aspect,
                  interpolation="nearest")
        if (lcrop == 2).any():
            ax.contour(lcrop == 2, levels=[0.5], colors="red", linewidths=0.6, origin="lower")
        ax.set_title(f"#{t.id} {t.type} {t.diameter_mm:.0f} mm, -{t.mean_hu_drop:.0f} HU", fontsize=7)
        ax.axis("off")
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))


def write_synthetic_tumors(ct_path: str | Path, mask_path: str | Path, out: str | Path, *, organ_label: int = 1,
                           n: int = 20, tumor_type: str = "random", seed: int = 0, for_validation: bool = False,
                           per_bin: int = 2, vessel_mask: str | Path | None = None,
                           vessel_labels: list[int] | None = None, capsule: bool = False, montage: bool = True,
                           overwrite: bool = False, progress: bool = False) -> dict[str, Any]:
    """Library form of ``aemia synth tumors``; returns ``{"cases", "tumors", "missing", "out"}``.

    Every input problem raises :class:`aemia.errors.InputError` before anything is written; outputs go to a
    staging folder that replaces ``out`` only when every case is done.
    """
    from aemia.data.io import case_id, write_nifti
    from aemia.errors import InputError
    from aemia.synth.tumor import TUMOR_TYPES, TumorConfig, axial_axis, synthesize_tumors, synthesize_validation_tumors
    from aemia.utils.io import write_json_atomic, write_text_atomic
    from aemia.utils.progress import Bar

    ct_path, mask_path, out = Path(ct_path), Path(mask_path), Path(out)
    if n < 1:
        raise InputError(None, f"--n must be at least 1, got {n}")
    if per_bin < 1:
        raise InputError(None, f"--per-bin must be at least 1, got {per_bin}")
    if tumor_type != "random" and tumor_type not in TUMOR_TYPES:
        raise InputError(None, f"--type must be one of random, {', '.join(TUMOR_TYPES)}; got {tumor_type!r}")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise InputError(out, "output exists and is not an empty folder (choose another --out or pass --overwrite)")
    ct, organ, vessels = _check_inputs(ct_path, mask_path, organ_label, Path(vessel_mask) if vessel_mask else None,
                                       vessel_labels)

    config = TumorConfig(capsule=capsule)
    axis = axial_axis(ct.affine)
    image = np.asarray(ct.array[0], dtype=np.float32)
    base = case_id(ct_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    rows: list[dict[str, Any]] = []
    missing = 0
    try:
        with Bar("synthesizing tumors", total=n, enabled=progress) as bar:
            for i in range(n):
                rng = np.random.default_rng(np.random.SeedSequence([int(seed), i]))
                case = f"{base}_synth{i:03d}"
                if for_validation:
                    res = synthesize_validation_tumors(image, organ, rng, per_bin=per_bin, affine=ct.affine,
                                                       config=config, vessel_mask=vessels)
                    missing += 4 * per_bin - len(res.tumors)
                else:
                    res = synthesize_tumors(image, organ, rng, affine=ct.affine, config=config, vessel_mask=vessels,
                                            tumor_type=None if tumor_type == "random" else tumor_type)
                write_nifti(res.image[None], staging / "images" / f"{case}.nii.gz", like=ct)
                write_nifti(res.label[None], staging / "labels" / f"{case}.nii.gz", like=ct)
                if for_validation:
                    write_nifti(res.instances[None], staging / "instances" / f"{case}.nii.gz", like=ct)
                if montage:
                    _montage(staging / "montages" / f"{case}.png", res.image, res.label, res.tumors, res.spacing,
                             axis, f"{case}: {res.tumor_type}, {len(res.tumors)} tumors, delta {res.hu_drop:.0f} HU")
                for t in res.tumors:
                    rows.append({
                        "case": case, "tumor_id": t.id, "type": t.type, "size_bin": t.size_bin,
                        "centre_x_mm": round(t.centre_mm[0], 2), "centre_y_mm": round(t.centre_mm[1], 2),
                        "centre_z_mm": round(t.centre_mm[2], 2), "centre_i": t.centre_voxel[0],
                        "centre_j": t.centre_voxel[1], "centre_k": t.centre_voxel[2],
                        "diameter_mm": round(t.diameter_mm, 2), "volume_mm3": round(t.volume_mm3, 1),
                        "n_voxels": t.n_voxels, "mean_hu_drop": round(t.mean_hu_drop, 2)})
                bar.advance()
        write_json_atomic(staging / "synth.json", {
            "command": "aemia synth tumors", "ct": str(ct_path), "organ_mask": str(mask_path),
            "organ_label": organ_label, "n": n, "type": tumor_type, "seed": seed, "for_validation": for_validation,
            "per_bin": per_bin if for_validation else None, "vessel_mask": str(vessel_mask) if vessel_mask else None,
            "capsule": capsule, "spacing_mm": list(ct.spacing), "method": "Hu et al. CVPR 2023 (METHODS.md §3)"})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(staging / "tumors.csv", buf.getvalue())
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"cases": n, "tumors": len(rows), "missing": missing, "out": str(out)}
