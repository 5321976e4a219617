"""Review priority of a predictions folder: the AbdomenAtlas-8K attention of every case (Qu et al., "AbdomenAtlas-8K:
Annotating 8,000 CT Volumes for Multi-Organ Segmentation in Three Weeks", NeurIPS 2023 Datasets & Benchmarks;
``reference/METHODS.md`` §5.2), cases ranked by attention volume, and the files a reviewer opens.

:func:`prioritize` reads a predictions folder (layout in :class:`~aemia.active.prediction_set.PredictionSet`),
computes each case with :func:`~aemia.active.attention.compute_case`, and writes ``priority.csv``, ``review.json``,
``priority.png`` and per-case NIfTI maps (see :func:`prioritize`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from aemia.active.attention import (
    FLAG_INCONSISTENCY,
    FLAG_NAMES,
    FLAG_OVERLAP,
    FLAG_UNCERTAINTY,
    CaseAttention,
    Organ,
    ReviewConfig,
    compute_case,
    rank_cases,
)
from aemia.active import review_parts as parts
from aemia.active.prediction_set import PredictionSet
from aemia.errors import InputError
from aemia.infer.shard import Shard
from aemia.utils.io import atomic_path, write_json_atomic, write_text_atomic


def _read_background(images: Path, case: str, shape: tuple[int, ...]) -> tuple[Path, np.ndarray]:
    from aemia.data.io import read_image

    for suffix in (".nii.gz", ".nii"):
        f = images / f"{case}{suffix}"
        if f.is_file():
            img = read_image(f)
            if img.spatial_shape != shape:
                raise InputError(f, f"image shape {img.spatial_shape} differs from the predictions {shape}")
            return f, np.asarray(img.array[0], dtype=np.float32)
    raise InputError(images / f"{case}.nii.gz", f"image for case '{case}' not found (--images)")


# --------------------------------------------------------------------------------------------- outputs


@dataclass
class PrioritizeResult:
    """What :func:`prioritize` wrote and the ranked cases (``rows`` as in ``priority.csv``)."""

    out_dir: Path
    rows: list[dict[str, Any]]
    files: dict[str, Path]


def _fmt_mm3(v: float) -> str:
    return f"{v:.1f}"


def _csv_rows(ranking: list[str], results: Mapping[str, CaseAttention],
              top_slices: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
    rows = []
    for rank, case in enumerate(ranking, start=1):
        r = results[case]
        rows.append({
            "rank": rank,
            "case": case,
            "attention_mm3": round(r.attention_mm3, 3),
            "attention_voxels": r.attention_voxels,
            "organs": ";".join(f"{n}={_fmt_mm3(v)}" for n, v in r.organs_by_volume()),
            "inconsistency_mm3": round(r.volume_mm3("inconsistency"), 3),
            "uncertainty_mm3": round(r.volume_mm3("uncertainty"), 3),
            "overlap_mm3": round(r.volume_mm3("overlap"), 3),
            "organs_by_heat": ";".join(r.organs_by_heat()),
            "top_axial_slice": (top_slices or {}).get(case, r.top_slice(2)),
        })
    return rows


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    cols = ["rank", "case", "attention_mm3", "attention_voxels", "organs", "inconsistency_mm3", "uncertainty_mm3",
            "overlap_mm3", "organs_by_heat", "top_axial_slice"]
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (_fmt_mm3(row[k]) if k.endswith("_mm3") else row[k]) for k in cols})
    return buf.getvalue()


def _radiological(slice2d: np.ndarray) -> np.ndarray:
    """An axial slice of a RAS-oriented volume, ``[x, y]``, as displayed: anterior up, patient's right on the left."""
    return np.asarray(slice2d).T[::-1, ::-1]


def _to_ras(arr: np.ndarray, affine: np.ndarray) -> np.ndarray:
    from nibabel.orientations import apply_orientation, io_orientation

    return apply_orientation(arr, io_orientation(affine))


def _figure(panels: list[dict[str, Any]], path: Path) -> None:
    """Top cases: the axial slice with most attention, attention overlaid by kind."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    colours = {FLAG_INCONSISTENCY: (0.9, 0.1, 0.1), FLAG_UNCERTAINTY: (1.0, 0.8, 0.0), FLAG_OVERLAP: (0.0, 0.8, 1.0)}
    n = max(len(panels), 1)
    fig, axes = plt.subplots(1, n, figsize=(max(4.2 * n, 6.5), 4.8), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        bg = panel["background"]
        if panel.get("ct"):
            lo, hi = -160.0, 240.0  # abdominal soft-tissue window (level 40, width 400 HU)
        else:
            lo, hi = np.percentile(bg, [1, 99]) if bg.size else (0.0, 1.0)
        ax.imshow(np.clip((bg - lo) / (hi - lo if hi > lo else 1.0), 0, 1), cmap="gray", interpolation="nearest",
                  aspect=panel["aspect"])
        flags = panel["flags"]
        # Colour by the most specific kind present: overlap, then inconsistency, then uncertainty.
        kind = np.zeros(flags.shape, dtype=np.uint8)
        for i, bit in enumerate((FLAG_UNCERTAINTY, FLAG_INCONSISTENCY, FLAG_OVERLAP), start=1):
            kind[(flags & bit) > 0] = i
        cmap = ListedColormap([(0, 0, 0, 0)] + [(*colours[b], 0.55) for b in
                                                  (FLAG_UNCERTAINTY, FLAG_INCONSISTENCY, FLAG_OVERLAP)])
        ax.imshow(kind, cmap=cmap, vmin=0, vmax=3, interpolation="nearest", aspect=panel["aspect"])
        ax.set_title(panel["title"], fontsize=9)
        ax.text(0.02, 0.5, "R", transform=ax.transAxes, color="white", fontsize=9, va="center")
        ax.text(0.96, 0.5, "L", transform=ax.transAxes, color="white", fontsize=9, va="center")
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[0][len(panels):]:
        ax.axis("off")
    handles = [Patch(color=colours[b], label=FLAG_NAMES[b]) for b in (FLAG_INCONSISTENCY, FLAG_UNCERTAINTY,
                                                                        FLAG_OVERLAP)]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.suptitle("Review priority: axial slice with the most attention (radiological view)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def prioritize(
    predictions: str | Path,
    out_dir: str | Path,
    organs: Sequence[Organ] | None = None,
    config: ReviewConfig | None = None,
    images: str | Path | None = None,
    figure_cases: int = 4,
    progress: bool = False,
    on_case: Callable[[str], None] | None = None,
    num_parts: int | None = None,
    part_id: int | None = None,
    merge_only: bool = False,
) -> PrioritizeResult:
    """Rank the cases of a predictions folder (layout: :class:`PredictionSet`) for human review.

    Writes into ``out_dir``:

    * ``priority.csv``: rank, case, attention_mm3 (sum over organs), attention_voxels, organs (``name=mm³`` by
      attention volume), inconsistency/uncertainty/overlap_mm3, organs_by_heat (the paper's order),
      top_axial_slice;
    * ``review.json``: the configuration, models, organs and the same numbers per organ;
    * ``attention/<case>_flags.nii.gz``: uint8 bit flags (1 inconsistency, 2 uncertainty, 4 overlap; union over
      organs, so values 0..7), ``attention/<case>_organs.nii.gz``: label of the organ to revise there (``--organs``
      labels), ``attention/<case>_heat.nii.gz``: uint8 heat map 0..255 (max over organs) — all with the affine of
      the predictions;
    * ``priority.png``: the top ``figure_cases`` cases' axial slice with the most attention, attention overlaid
      (over the CT if ``images`` holds ``<case>.nii.gz``, else over the mean predicted organ probability).

    Sharded (``num_parts``/``part_id``, or the torchrun rank): this process computes only its part's cases
    (:mod:`aemia.active.review_parts`); the tables are written by the merge (the only part, rank 0 once every rank
    finished, or ``merge_only``), which needs every part. A part's files are first written in a staging folder
    inside ``out_dir`` and moved into place only when every case of the part succeeded, so an error leaves no
    partial output (the staging folder is removed); a finished part is skipped when run again.
    """
    from aemia.infer.shard import wait_for_all_parts

    cfg = config or ReviewConfig()
    pset = PredictionSet.scan(predictions, organs)
    if cfg.overlap_organs is not None:
        unknown = sorted(set(cfg.overlap_organs) - {o.name for o in pset.organs})
        if unknown:
            raise InputError(None, f"overlap organs {unknown} are not target organs {[o.name for o in pset.organs]}")
    images_dir = Path(images) if images is not None else None
    if images_dir is not None:
        if not images_dir.is_dir():
            raise InputError(images_dir, "images folder not found")
        for case in pset.cases:
            if not any((images_dir / f"{case}{s}").is_file() for s in (".nii.gz", ".nii")):
                raise InputError(images_dir / f"{case}.nii.gz", f"image for case '{case}' not found (--images)")
    out = Path(out_dir)
    if merge_only:
        shard = Shard(0, num_parts or parts.parts_in(out))
        return _merge(out, pset, cfg, shard, images_dir, figure_cases)
    shard = Shard.resolve(num_parts, part_id)
    key = _part_key(pset, cfg, shard)
    if not parts.part_done(out, shard, key):
        _compute_part(out, pset, cfg, shard, key, progress, on_case)
    wait_for_all_parts(shard)
    if not shard.merges:
        return PrioritizeResult(out_dir=out, rows=[], files={})
    return _merge(out, pset, cfg, shard, images_dir, figure_cases)


def _part_key(pset: PredictionSet, cfg: ReviewConfig, shard: Shard) -> dict[str, Any]:
    """What a part's record must match to be reused: its cases, the models, organs and the configuration."""
    return {"cases": shard.select(pset.cases), "models": pset.models, "predictions": str(Path(pset.root).resolve()),
            "organs": [[o.label, o.name] for o in pset.organs],
            "config": json.loads(json.dumps(asdict(cfg)))}


def _compute_part(out: Path, pset: PredictionSet, cfg: ReviewConfig, shard: Shard, key: dict[str, Any],
                  progress: bool, on_case: Callable[[str], None] | None) -> None:
    """The attention of this part's cases: maps into ``out/attention`` and the part record, or nothing at all."""
    from aemia.data.image import Image
    from aemia.data.io import write_nifti
    from aemia.utils.progress import Bar

    cases = key["cases"]
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".review-staging-", dir=out))
    try:
        (staging / "attention").mkdir()
        results: dict[str, CaseAttention] = {}
        slices: dict[str, dict[str, Any]] = {}
        nifti_files: list[str] = []
        with Bar("prioritizing", total=len(cases), enabled=progress) as bar:
            for case in cases:
                res = compute_case(pset.organs, lambda o, c=case: pset.load(c, o), cfg, pset.voxel_volume_mm3(case))
                like = Image(np.zeros((1, *res.flags.shape), dtype=np.uint8),
                             spacing=tuple(float(s) for s in np.linalg.norm(pset.affine(case)[:3, :3], axis=0)),
                             affine=pset.affine(case))
                for suffix, arr in (("flags", res.flags), ("organs", res.organ_map),
                                    ("heat", np.round(res.heat * 255).astype(np.uint8))):
                    name = f"attention/{case}_{suffix}.nii.gz"
                    write_nifti(arr.astype(np.int16) if suffix == "organs" else arr, staging / name, like=like)
                    nifti_files.append(name)
                slices[case] = _keep_for_figure(res, pset.affine(case))
                # Keep only the numbers: memory stays flat however many cases there are.
                empty = np.zeros((0,), dtype=np.uint8)
                results[case] = replace(res, flags=empty, organ_map=empty, heat=empty, probability=empty)
                bar.advance(description=f"prioritizing {case}")
                if on_case is not None:
                    on_case(case)
        # Move into place (same file system: each os.replace is atomic); the part record last.
        (out / "attention").mkdir(exist_ok=True)
        for name in nifti_files:
            os.replace(staging / name, out / name)
        parts.save_part(out, shard, key, results, slices)
    except BaseException:
        if created:
            shutil.rmtree(staging, ignore_errors=True)
            for folder in (out / "attention", out):  # only if empty: we created them and nothing else is there
                with contextlib.suppress(OSError):
                    folder.rmdir()
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _merge(out: Path, pset: PredictionSet, cfg: ReviewConfig, shard: Shard, images_dir: Path | None,
           figure_cases: int) -> PrioritizeResult:
    """Rank every part's cases and write the figure and the tables (priority.csv last: its presence means done)."""
    keys = [_part_key(pset, cfg, type(shard)(k, shard.num_parts)) for k in range(shard.num_parts)]
    results, slices = parts.load_parts(out, shard.num_parts, keys)
    ranking = rank_cases(results)
    rows = _csv_rows(ranking, results, {c: k["z"] for c, k in slices.items()})
    panels = []
    for row in rows[: max(figure_cases, 0)]:
        case = row["case"]
        kept = slices[case]
        background = kept["background"]
        if images_dir is not None:
            _, ct = _read_background(images_dir, case, pset.sources[(pset.models[0], case)].shape)
            background = _radiological(_to_ras(ct, pset.affine(case))[:, :, kept["z_ras"]])
        top = row["organs"].split(";")[0].split("=")[0] if row["organs"] else "none"
        panels.append({
            "background": background, "flags": kept["flags"], "aspect": kept["aspect"],
            "ct": images_dir is not None and float(np.min(background)) < -200,  # looks like HU
            "title": f"#{row['rank']} {case}: {row['attention_mm3'] / 1000:.1f} cm³\n"
                     f"axial slice {kept['z']} (voxel axis {kept['axis']}), most: {top}",
        })
    files: dict[str, Path] = {f"attention/{c}_{s}.nii.gz": out / "attention" / f"{c}_{s}.nii.gz"
                              for c in pset.cases for s in ("flags", "organs", "heat")}
    if panels:
        with atomic_path(out / "priority.png", suffix=".png") as tmp:
            _figure(panels, tmp)
        files["priority.png"] = out / "priority.png"
    summary = {
        "method": "AbdomenAtlas-8K attention (Qu et al., NeurIPS 2023 D&B); METHODS.md §5.2",
        "predictions": str(pset.root),
        "models": pset.models,
        "organs": [{"name": o.name, "key": o.label, "organ_map_value": o.map_value} for o in pset.organs],
        "config": asdict(cfg),
        "parts": shard.num_parts,
        "flags": {str(b): n for b, n in FLAG_NAMES.items()},
        "cases": [
            dict(row, voxel_volume_mm3=results[row["case"]].voxel_volume_mm3,
                 per_organ={n: asdict(o) for n, o in results[row["case"]].organs.items()})
            for row in rows
        ],
    }
    write_json_atomic(out / "review.json", summary)
    files["review.json"] = out / "review.json"
    write_text_atomic(out / "priority.csv", _csv_text(rows))
    files["priority.csv"] = out / "priority.csv"
    parts.clear_parts(out)
    return PrioritizeResult(out_dir=out, rows=rows, files=files)


def _keep_for_figure(res: CaseAttention, affine: np.ndarray) -> dict[str, Any]:
    """The displayed axial slice of a case (RAS-reoriented), kept small so the figure needs no second pass.

    ``z`` is the index of that slice along the file's own axial voxel axis ``axis`` (what a viewer shows).
    """
    from nibabel.orientations import io_orientation

    ornt = io_orientation(affine)
    flags_ras = _to_ras(res.flags, affine)
    z_ras = int(np.argmax((flags_ras > 0).sum(axis=(0, 1))))
    axis = int(np.where(ornt[:, 0] == 2)[0][0])
    z = res.flags.shape[axis] - 1 - z_ras if ornt[axis, 1] < 0 else z_ras
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    sx, sy = (zooms[int(np.where(ornt[:, 0] == k)[0][0])] for k in (0, 1))
    return {"flags": _radiological(flags_ras[:, :, z_ras]),
            "background": _radiological(_to_ras(res.probability, affine)[:, :, z_ras]),
            "z_ras": z_ras, "z": int(z), "axis": axis, "aspect": float(sy / sx)}
