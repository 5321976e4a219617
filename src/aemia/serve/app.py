"""The review app (FastAPI): a single-page annotator's tool over an ``aemia active`` project's ledger.

``create_app(ServeConfig(project=P))`` checks the project (``InputError`` on a missing or corrupt one) and
returns the ASGI app; ``aemia serve`` runs it with uvicorn. The app needs only the project folder: the ledger,
``project.json``, the round worklists, the pool images the ledger names, and optionally predictions,
heat maps and ``priority.csv`` (:mod:`aemia.serve.masks`, :mod:`aemia.serve.worklist`). 2D pictures and 3D
volumes are served alike (:mod:`aemia.serve.cases`). Every path the browser names is a case id looked up in
the ledger or a file inside ``static/``; nothing else on disk is reachable.

API (JSON unless said): ``GET /api/project``, ``GET /api/worklist``, ``GET /api/effort``,
``GET /api/cases/{case}/meta``, ``GET /api/cases/{case}/slice?view=&index=&window=`` (PNG),
``GET /api/cases/{case}/mask?which=current|start`` and ``/heat`` (gzip flat uint8, see
:mod:`aemia.serve.cases`), ``POST /api/cases/{case}/save?action=saved|accepted&base_version=&annotator=&seconds=
&started_at=&encoding=gzip|raw`` (body: the mask), ``POST /api/cases/{case}/decision`` (JSON: action rejected or
flagged, comment, base_version, annotator, seconds, started_at). A stale save answers 409.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aemia.active.ledger import Ledger, LedgerItem
from aemia.active.project import Project
from aemia.errors import InputError
from aemia.serve import masks
from aemia.serve.cases import WINDOWS, CaseCache, CaseImage, flat_bytes, load_case
from aemia.serve.worklist import build_worklist

__all__ = ["STATIC", "ServeConfig", "ServedProject", "create_app"]

STATIC = Path(__file__).with_name("static")


@dataclass
class ServeConfig:
    """What ``aemia serve`` serves and to whom."""

    project: Path
    token: str | None = None
    priority: Path | None = None  # default: P/priority.csv when present
    cache_cases: int = 3  # case images held in memory (the open one, the next one, one more)
    annotator: str | None = None  # the name the app proposes (default: the login name)
    warm: bool = True  # start reading the first worklist case at start-up


class ServedProject:
    """The project behind the app: opens the ledger per request, caches case images, builds the worklist."""

    def __init__(self, config: ServeConfig) -> None:
        self.project = Project.open(config.project)
        with self.project.ledger() as led:  # a corrupt ledger fails here, before the server starts
            problems = led.check()
        if problems:
            raise InputError(self.project.root / "ledger.sqlite", f"inconsistent ledger ({problems[0]})")
        if self.project.config.task != "segmentation":
            raise InputError(self.project.root, "the review app serves segmentation projects only")
        prio = config.priority or (self.project.root / "priority.csv")
        self.priority = prio if prio.is_file() else None
        if config.priority is not None and self.priority is None:
            raise InputError(config.priority, "priority list not found")
        self.annotator = config.annotator or _user()
        self.cache = CaseCache(self._load, size=config.cache_cases)
        first = self.worklist()[:1]
        if first and config.warm:  # read the first case while the annotator opens the URL
            self.cache.prefetch(first[0]["case"])

    def ledger(self) -> Ledger:
        return self.project.ledger()

    def item(self, led: Ledger, case_id: str) -> LedgerItem:
        try:
            return led.item(case_id)
        except KeyError:
            raise LookupError(case_id) from None

    def _load(self, case_id: str) -> CaseImage:
        with self.ledger() as led:
            item = self.item(led, case_id)
        case = load_case(case_id, item.image_path)
        prio_dir = None if self.priority is None else self.priority.parent
        case.start, case.start_source = masks.starting_mask(self.project, case, prio_dir)
        case.start_gz = masks.gzip_bytes(flat_bytes(case.start, case.is3d))
        heat = masks.heat_map(self.project, case, prio_dir)
        case.heat_gz = None if heat is None else masks.gzip_bytes(flat_bytes(heat, case.is3d))
        case.first_views()
        return case

    def worklist(self) -> list[dict[str, Any]]:
        with self.ledger() as led:
            return [w.to_json() for w in build_worklist(self.project, led, self.priority)]

    def meta(self, case_id: str) -> dict[str, Any]:
        case = self.cache.get(case_id)
        with self.ledger() as led:
            item = self.item(led, case_id)
            version = led.case_version(case_id)
            effort = led.case_efforts()[case_id]
        order = [w["case"] for w in self.worklist()]
        pos = order.index(case_id) if case_id in order else -1
        nxt = order[pos + 1] if 0 <= pos < len(order) - 1 else None
        if nxt is not None:
            self.cache.prefetch(nxt)  # the next case is read while the annotator works on this one
        return {"case": case_id, "is3d": case.is3d, "dims": case.dims, "spacing": case.spacing,
                "views": case.views(), "windows": ["auto", *WINDOWS] if case.is3d else ["auto"],
                "window": case.default_window(), "version": version, "state": effort.state,
                "status": item.status, "annotator": effort.annotator, "seconds": effort.seconds,
                "changed_pixels": effort.changed_pixels, "comment": effort.comment,
                "start_source": case.start_source, "has_heat": case.heat_gz is not None,
                "classes": self.project.config.classes, "position": pos + 1, "next": nxt,
                "previous": order[pos - 1] if pos > 0 else None}

    def mask(self, case_id: str, which: str) -> tuple[bytes, int]:
        case = self.cache.get(case_id)
        with self.ledger() as led:
            item, version = self.item(led, case_id), led.case_version(case_id)
        assert case.start is not None and case.start_gz is not None
        if which == "start" or not item.label_path:
            return case.start_gz, version
        return masks.gzip_bytes(flat_bytes(masks.current_mask(self.project, item, case, case.start), case.is3d)), version

    def heat(self, case_id: str) -> bytes | None:
        return self.cache.get(case_id).heat_gz

    def save(self, case_id: str, body: bytes, *, action: str, base_version: int, annotator: str, seconds: float,
             started_at: str | None, encoding: str) -> dict[str, Any]:
        if action not in ("saved", "accepted"):
            raise InputError(None, f"a save is 'saved' or 'accepted', not {action!r}")
        case = self.cache.get(case_id)
        with self.ledger() as led:
            item = self.item(led, case_id)
            led.check_version(case_id, base_version)  # refused before any file is written (checked again on write)
        assert case.start is not None
        base = None
        if encoding == "diff":  # the mask the browser loaded at base_version
            base = case.saved[1] if case.saved and case.saved[0] == base_version else \
                masks.current_mask(self.project, item, case, case.start)
        mask = masks.decode_upload(body, case, self.project.n_classes, encoding, base)  # before anything is written
        changed = int(np.count_nonzero(mask != case.start))
        label = masks.write_label(self.project, case, mask)
        with self.ledger() as led:
            e = led.record_effort(case_id, action, annotator, base_version=base_version, seconds=seconds,  # type: ignore[arg-type]
                                  started_at=started_at, label_path=label, changed_pixels=changed,
                                  total_pixels=int(mask.size))
        case.saved = (e.version, mask)  # the next diff upload of this case applies to it
        return {"case": case_id, "version": e.version, "changed_pixels": changed, "total_pixels": int(mask.size),
                "seconds": e.seconds, "saved_at": e.saved_at, "annotator": e.annotator, "action": e.action}

    def decide(self, case_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        action = payload.get("action")
        if action not in ("rejected", "flagged"):
            raise InputError(None, f"a decision is 'rejected' or 'flagged', not {action!r}")
        comment = str(payload.get("comment") or "")[:2000] or None
        if action == "flagged" and not comment:
            raise InputError(None, "flagging a case needs a comment saying what is wrong")
        with self.ledger() as led:
            self.item(led, case_id)
            e = led.record_effort(case_id, action, str(payload.get("annotator") or ""),
                                  base_version=int(payload.get("base_version", -1)),
                                  seconds=float(payload.get("seconds", 0)), started_at=payload.get("started_at"),
                                  comment=comment)
        return {"case": case_id, "version": e.version, "action": e.action, "saved_at": e.saved_at}


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        return "annotator"


def create_app(config: ServeConfig) -> Any:
    """The FastAPI app for ``config`` (raises ``InputError`` for a missing or corrupt project)."""
    from aemia.serve.routes import build_app

    return build_app(ServedProject(config), config.token)
