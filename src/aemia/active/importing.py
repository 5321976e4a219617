"""``import``: validate an annotator's labels and record them in the ledger, all or none
(the active-learning cycle, :mod:`aemia.cli.active`).

Masks (segmentation) are checked against their images with :func:`aemia.active.pictures.decode_mask`;
class labels (classification) come from a ``case,label`` CSV. Accepted labels are stored content-addressed
in ``P/labels/`` (``<case>.<sha256[:12]><ext>``) before the ledger commit.
"""

from __future__ import annotations

import csv
import getpass
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aemia.active.ledger import LedgerItem, file_sha256
from aemia.active.pictures import LOSSY, case_id_of, list_pictures, decode_mask
from aemia.active.project import Project, open_project
from aemia.errors import InputError
from aemia.utils.io import atomic_path

__all__ = [
    "ImportResult",
    "import_labels",
]


@dataclass
class ImportResult:
    """What ``import`` did: case ids per action (``annotated``, ``unchanged``, ``reannotated``)."""

    annotated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    reannotated: list[str] = field(default_factory=list)


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
    2D, the same width × height as its image, with allowed values (:func:`decode_mask`). Classification:
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
                    problems.append(f"{where}: appears twice")
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
                    problems.append(f"{where}: {problem}")
        else:
            if not labels.is_dir():
                raise InputError(labels, "--labels must be a folder of masks named like the images (<case>.png)")
            files = list_pictures(labels)
            if not files:
                others = [p.name for p in labels.iterdir() if p.is_file()][:3]
                raise InputError(labels, "no label pictures found" + (f" (found {', '.join(others)})" if others else ""))
            by_case: dict[str, list[Path]] = {}
            for f in files:
                by_case.setdefault(case_id_of(f), []).append(f)
            with Bar("validating labels", total=len(by_case), enabled=progress) as bar:
                for cid, fs in by_case.items():
                    bar.advance()
                    if len(fs) > 1:
                        problems.append(f"case {cid!r}: several label files ({', '.join(f.name for f in fs)})")
                        continue
                    f = fs[0]
                    problem = _case_problem(known, cid)
                    if problem is None:
                        problem = _mask_problem(read_image, f, known[cid], proj.n_classes)
                    if problem is None:
                        problem = _hash_problem(known[cid], file_sha256(f), replace)
                    if problem:
                        problems.append(f"case {cid!r} ({f.name}): {problem}")
                    else:
                        accepted.append((cid, f.suffix.lower(), f))
        if problems:
            total = len(problems) + len(accepted)
            shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
            raise InputError(labels, f"{len(problems)} of {total} labels rejected, nothing imported: {shown}")
        records = []
        for cid, suffix, content in accepted:
            data = content if isinstance(content, bytes) else None
            digest = _sha(data) if data is not None else file_sha256(content)  # type: ignore[arg-type]
            dest = proj.labels_dir / f"{cid}.{digest[:12]}{suffix}"
            if not dest.exists():
                with atomic_path(dest, suffix=suffix) as tmp:
                    if data is not None:
                        tmp.write_bytes(data)
                    else:
                        shutil.copyfile(content, tmp)  # type: ignore[arg-type]
            records.append((cid, dest, annotator))
        results = led.annotate_many(records, replace=replace)
    out = ImportResult()
    for res in results:
        getattr(out, res.action).append(res.case_id)
    return out


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


def _mask_problem(read_image: Callable[[Path], Any], path: Path, item: LedgerItem, n_classes: int) -> str | None:
    try:
        lab = read_image(path).array
    except InputError as exc:
        return exc.problem
    try:
        img = read_image(item.image_path).array
    except InputError as exc:
        return f"its image cannot be read ({exc})"
    if lab.ndim != 3 or tuple(lab.shape[1:]) != tuple(img.shape[1:]):
        got = "x".join(str(s) for s in lab.shape[1:][::-1])
        want = "x".join(str(s) for s in img.shape[1:][::-1])
        return f"size {got} differs from its image {want} (width x height)"
    _, problem = decode_mask(lab, n_classes, path.name.lower().endswith(LOSSY))
    return problem
