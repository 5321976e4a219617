"""``import``: validate an annotator's labels and record them in the ledger, all or none
(the active-learning cycle, :mod:`aemia.cli.active`).

Masks (segmentation) are checked against their images with :func:`aemia.active.pictures.decode_mask` (3D masks
also for their grid: shape, spacing and affine, :func:`aemia.data.preflight.label_geometry`);
class labels (classification) come from a ``case,label`` CSV. Accepted labels are stored content-addressed
in ``P/labels/`` (``<case>.<sha256[:12]><ext>``): staged in a temporary folder there, moved in just before the
ledger transaction and taken out again if it fails. :func:`clean_orphans` removes what a killed import left.
"""

from __future__ import annotations

import csv
import getpass
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aemia.active.ledger import LedgerItem, file_sha256
from aemia.active.pictures import LOSSY, case_id_of, list_pictures, decode_mask
from aemia.active.project import Project, open_project
from aemia.active.volumes import is_volume, list_volumes, mask_nifti_bytes
from aemia.errors import InputError, ProblemsError

__all__ = [
    "ImportResult",
    "import_labels",
    "clean_orphans",
]


@dataclass
class ImportResult:
    """What ``import`` did: case ids per action (``annotated``, ``unchanged``, ``reannotated``)."""

    annotated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    reannotated: list[str] = field(default_factory=list)
    cleaned: list[str] = field(default_factory=list)  # files an interrupted import had left, now removed


def _read_label_csv(path: Path) -> list[tuple[str, str, int]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read ({exc})") from None
    rows = list(csv.reader(text.splitlines()))
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["case", "label"]:
        raise InputError(path, "expected a CSV with the header 'case,label'")
    return [(r[0].strip(), r[1].strip() if len(r) > 1 else "", n) for n, r in enumerate(rows[1:], start=2) if r and any(r)]


def import_labels(
    project: str | Path | Project,
    labels: str | Path,
    *,
    annotator: str | None = None,
    replace: bool = False,
    progress: bool = True,
) -> ImportResult:
    """Validate **every** label, then accept all of them in one ledger transaction — or none.

    Segmentation: ``labels`` is a folder of masks named ``<case>.<picture suffix>``; each must be readable,
    2D, the same width × height as its image, with allowed values (:func:`decode_mask`). 3D projects: masks
    ``<case>.nii.gz`` / ``.nii`` / ``.nrrd`` or a DICOM series folder ``<case>/``, on the image's grid (shape,
    spacing, affine) with allowed values; non-NIfTI masks are stored as NIfTI. Classification:
    ``labels`` is a CSV ``case,label`` (or a folder holding exactly one CSV); a label is a class name or
    index. Every case must be in the pool and queried (or already annotated: the same label again is a
    no-op, a different one needs ``replace``). All problems are collected and reported together, naming
    each case; then nothing is imported. Accepted labels are copied into ``P/labels/`` under a
    content-addressed name before the ledger commit, so a crash in between leaves only an unused file and a
    rerun is idempotent.
    """
    from aemia.data.io import read_image
    from aemia.utils.progress import Bar

    proj = open_project(project)
    labels = Path(labels)
    annotator = annotator or _user()
    cls = proj.config.task == "classification"
    problems: list[str] = []
    accepted: list[tuple[str, str, bytes | Path]] = []  # (case, suffix, content bytes or source file)
    same_content: list[str] = []  # a different file with the recorded mask's content: unchanged
    cleaned = clean_orphans(proj)
    with proj.ledger() as led:
        known = {it.case_id: it for it in led.items()}
        if cls:
            csv_path = labels
            if labels.is_dir():
                found = sorted(labels.glob("*.csv"))
                if len(found) != 1:
                    raise InputError(labels, f"expected exactly one CSV (case,label) in the folder, found {len(found)}")
                csv_path = found[0]
            if not csv_path.is_file():
                raise InputError(labels, "no such CSV file (case,label)")
            entries = _read_label_csv(csv_path)
            if not entries:
                raise InputError(csv_path, "no labels in the CSV")
            seen: set[str] = set()
            for cid, value, line in entries:
                where = f"case {cid!r} (line {line})"
                if cid in seen:
                    problems.append(f"{csv_path}: {where}: appears twice")
                    continue
                seen.add(cid)
                problem = _case_problem(known, cid)
                if problem is None:
                    name = _class_name(proj.config.classes, value)
                    if name is None:
                        problem = f"label {value!r} is not a class ({', '.join(proj.config.classes)} or 0..{len(proj.config.classes) - 1})"
                    else:
                        content = (name + "\n").encode()
                        problem = _hash_problem(known[cid], _sha(content), replace)
                        accepted.append((cid, ".txt", content))
                if problem:
                    problems.append(f"{csv_path}: {where}: {problem}")
        else:
            if not labels.is_dir():
                raise InputError(labels, "--labels must be a folder of masks named like the images "
                                         f"(<case>.{'nii.gz' if proj.is_3d else 'png'})")
            files = list_volumes(labels) if proj.is_3d else list_pictures(labels)
            if not files:
                others = [p.name for p in labels.iterdir() if p.is_file()][:3]
                raise InputError(labels, f"no label {'volumes' if proj.is_3d else 'pictures'} found" + (f" (found {', '.join(others)})" if others else ""))
            by_case: dict[str, list[Path]] = {}
            for f in files:
                by_case.setdefault(case_id_of(f), []).append(f)
            with Bar("validating labels", total=len(by_case), enabled=progress) as bar:
                for cid, fs in by_case.items():
                    bar.advance()
                    if len(fs) > 1:
                        problems.append(f"{labels}: case {cid!r}: several label files ({', '.join(f.name for f in fs)})")
                        continue
                    f = fs[0]
                    problem = _case_problem(known, cid)
                    if problem is None:
                        problem = _mask_problem(read_image, f, known[cid], proj.n_classes, proj.is_3d)
                    content, suffix = f, f.suffix.lower()
                    if problem is None:
                        content, suffix = _stored_form(f)
                        digest = _sha(content) if isinstance(content, bytes) else file_sha256(f)
                        problem = _hash_problem(known[cid], digest, replace)
                        if problem and _same_mask(read_image, f, known[cid].label_path, proj.n_classes):
                            same_content.append(cid)  # e.g. the same mask saved as 0/1 instead of 0/255
                            continue
                    if problem:
                        problems.append(f"{f}: case {cid!r}: {problem}")
                    else:
                        accepted.append((cid, suffix, content))
        if problems:  # every rejected label on its own line, then one error line; nothing imported
            raise ProblemsError(labels, problems, outcome=f"nothing imported (of {len(problems) + len(accepted)} "
                                                          f"labels)")
        results = _commit(proj, led, accepted, annotator, replace)
    out = ImportResult(unchanged=list(same_content), cleaned=cleaned)
    for res in results:
        getattr(out, res.action).append(res.case_id)
    return out


STAGING_PREFIX = ".staging-"


def _commit(proj: Project, led: Any, accepted: list[tuple[str, str, bytes | Path]], annotator: str,
            replace: bool) -> list[Any]:
    """Stage every accepted label in ``P/labels/.staging-<pid>-*/``, move them in, record them in one ledger
    transaction. A failure before the ledger commit takes the moved files out again; a kill leaves files that
    :func:`clean_orphans` removes on the next import or ``active status``."""
    proj.labels_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=proj.labels_dir))
    moved: list[Path] = []
    try:
        staged = []
        for cid, suffix, content in accepted:
            data = content if isinstance(content, bytes) else None
            digest = _sha(data) if data is not None else file_sha256(content)  # type: ignore[arg-type]
            name = f"{cid}.{digest[:12]}{suffix}"
            if data is not None:
                (stage / name).write_bytes(data)
            else:
                shutil.copyfile(content, stage / name)  # type: ignore[arg-type]
            staged.append((cid, name))
        records = []
        for cid, name in staged:
            dest = proj.labels_dir / name
            if not dest.exists():
                os.replace(stage / name, dest)
                moved.append(dest)
            records.append((cid, dest, annotator))
        return led.annotate_many(records, replace=replace)
    except BaseException:
        for dest in moved:
            dest.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def clean_orphans(project: str | Path | Project) -> list[str]:
    """Remove what an interrupted import left in ``P/labels/``: staging folders of dead processes, temp files
    and label files the ledger never recorded; returns their names (for the caller to report)."""
    proj = open_project(project)
    folder = proj.labels_dir
    if not folder.is_dir():
        return []
    removed: list[str] = []
    with proj.ledger() as led:
        known = {str(Path(e.label_path).resolve()) for e in led.events() if e.label_path}
        known |= {str(Path(it.label_path).resolve()) for it in led.items() if it.label_path}
        for p in sorted(folder.iterdir()):
            if p.is_dir() and p.name.startswith(STAGING_PREFIX):
                if _alive(p.name[len(STAGING_PREFIX):].split("-", 1)[0]):
                    continue  # another import is running
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name + "/")
            elif p.is_file() and (p.name.startswith(".") or str(p.resolve()) not in known):
                p.unlink(missing_ok=True)
                removed.append(p.name)
    return removed


def _alive(pid_text: str) -> bool:
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        return "unknown"


def _class_name(classes: Sequence[str], value: str) -> str | None:
    if value in classes:
        return value
    if value.isdigit() and int(value) < len(classes):
        return classes[int(value)]
    return None


def _case_problem(known: dict[str, LedgerItem], cid: str) -> str | None:
    if cid not in known:
        return "not in the project pool (unknown case)"
    if known[cid].status == "unlabelled":
        return "was never queried (status unlabelled); only queried cases can be imported"
    return None


def _hash_problem(item: LedgerItem, digest: str, replace: bool) -> str | None:
    if item.status == "annotated" and item.label_hash != digest and not replace:
        return "already annotated with a different label; pass --replace to record a re-annotation"
    return None


def _same_mask(read_image: Callable[[Path], Any], new: Path, old: str | None, n_classes: int) -> bool:
    """True when ``new`` decodes to the same class mask as the recorded label file ``old``."""
    if not old or not Path(old).is_file():
        return False
    try:
        a, _ = decode_mask(read_image(new).array, n_classes, new.name.lower().endswith(LOSSY))
        b, _ = decode_mask(read_image(Path(old)).array, n_classes, old.lower().endswith(LOSSY))
    except InputError:
        return False
    return a is not None and b is not None and a.shape == b.shape and bool((a == b).all())


def _stored_form(path: Path) -> tuple[bytes | Path, str]:
    """What is stored in ``P/labels/`` for a mask file, and its suffix: the file itself (pictures, NIfTI), or
    NIfTI bytes with the same voxels and geometry (a DICOM series or NRRD mask, :func:`mask_nifti_bytes`)."""
    name = path.name.lower()
    if path.is_file() and name.endswith(".nii.gz"):
        return path, ".nii.gz"
    if path.is_file() and not is_volume(path) or name.endswith(".nii"):
        return path, path.suffix.lower()
    try:
        return mask_nifti_bytes(path), ".nii"
    except InputError:
        return path, path.suffix.lower()  # unreadable: _mask_problem has reported it


def _mask_problem(read_image: Callable[[Path], Any], path: Path, item: LedgerItem, n_classes: int,
                  volume: bool = False) -> str | None:
    try:
        label = read_image(path)
    except InputError as exc:
        return exc.problem
    try:
        image = read_image(item.image_path)
    except InputError as exc:
        return f"its image cannot be read ({exc})"
    lab, img = label.array, image.array
    if volume:
        from aemia.data.preflight import label_geometry

        found = label_geometry(path, label, image)
        if found:
            return found[0].problem
        _, problem = decode_mask(lab, n_classes, lossy=False)
        return problem
    if lab.ndim != 3 or tuple(lab.shape[1:]) != tuple(img.shape[1:]):
        got = "x".join(str(s) for s in lab.shape[1:][::-1])
        want = "x".join(str(s) for s in img.shape[1:][::-1])
        return f"size {got} differs from its image {want} (width x height)"
    _, problem = decode_mask(lab, n_classes, path.name.lower().endswith(LOSSY))
    return problem
