"""What a prediction job has finished: one small record per case, and the merge that checks completeness.

A worker writes a case's outputs (each atomically: temp file, then rename) and only then its record
``OUT/.aemia-predict/<case>.json`` (also atomic). A case counts as finished when its record says ``ok``, was made
by the same job (runs and options: :attr:`PredictJob.fingerprint`) and every output it lists exists. A process
killed mid-case leaves at most a hidden temp file and no record, so the case is predicted again on restart and a
half-written file never counts. Failed cases get a record with the problem and are tried again on restart.

:func:`merge` (``aemia predict --merge``, or automatically at the end of a 1-part job / on torchrun rank 0) reads
every record, checks that each input case finished, and writes ``summary.json`` (cases, done, failed with the
problem, missing, model loads, seconds per case), ``predictions.csv`` for classification runs and
``failures.csv`` (case, path, problem) when any case failed or is missing.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aemia.utils.io import write_json_atomic, write_text_atomic

RECORDS = ".aemia-predict"
WORKERS = "workers"
SUMMARY = "summary.json"


@dataclass
class CaseResult:
    """One case's outcome, as a worker reports it and as stored in its record."""

    case: str
    path: str
    ok: bool
    problem: str = ""
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)  # relative to OUT, the label map first
    row: dict[str, Any] | None = None  # classification: predicted_class, p0, p1, ...
    pid: int = 0
    peak_rss_mb: float = 0.0  # of the worker process, when this case was done
    job: dict[str, Any] = field(default_factory=dict)


def write_worker(out: Path, info: dict[str, Any]) -> None:
    """A worker's start: ``OUT/.aemia-predict/workers/<host>-<pid>-<ns>.json`` (model loads, threads, job)."""
    name = f"{info['host']}-{info['pid']}-{time.time_ns()}.json"
    write_json_atomic(Path(out) / RECORDS / WORKERS / name, info)


def read_workers(out: Path, fingerprint: dict[str, Any]) -> list[dict[str, Any]]:
    """The worker starts of this job (every restart and part included)."""
    found = []
    for f in sorted((Path(out) / RECORDS / WORKERS).glob("*.json")):
        try:
            info = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if info.get("job") == fingerprint:
            found.append(info)
    return found


def record_path(out: Path, case: str) -> Path:
    return Path(out) / RECORDS / f"{case}.json"


def write_record(out: Path, result: CaseResult) -> None:
    write_json_atomic(record_path(out, result.case), asdict(result))


def read_record(out: Path, case: str) -> CaseResult | None:
    path = record_path(out, case)
    try:
        return CaseResult(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None  # absent, or not ours: the case is not finished


def finished(out: Path, case: str, fingerprint: dict[str, Any]) -> CaseResult | None:
    """The case's record if it finished ok with this job and all its outputs exist, else None."""
    rec = read_record(out, case)
    if rec is None or not rec.ok or rec.job != fingerprint:
        return None
    return rec if all((Path(out) / o).is_file() for o in rec.outputs) else None


@dataclass
class MergeReport:
    """What :func:`merge` found (and wrote to ``summary.json``)."""

    cases: int
    done: int
    failed: dict[str, str]  # case -> problem
    missing: list[str]
    summary: dict[str, Any]

    @property
    def complete(self) -> bool:
        return not self.failed and not self.missing


def merge(out: Path, cases: dict[str, Path], fingerprint: dict[str, Any], extra: dict[str, Any] | None = None) -> MergeReport:
    """Check every case of ``cases`` (id -> input path) and write the summary files (see the module docstring)."""
    out = Path(out)
    done: list[CaseResult] = []
    failed: dict[str, str] = {}
    missing: list[str] = []
    for case in sorted(cases):
        rec = finished(out, case, fingerprint)
        if rec is not None:
            done.append(rec)
            continue
        other = read_record(out, case)
        if other is not None and not other.ok and other.job == fingerprint:
            failed[case] = other.problem
        else:
            missing.append(case)
    workers = read_workers(out, fingerprint)
    seconds = [r.seconds for r in done]
    rss: dict[int, float] = {}
    for r in done:
        rss[r.pid] = max(rss.get(r.pid, 0.0), r.peak_rss_mb)
    summary: dict[str, Any] = {
        "complete": not failed and not missing, "cases": len(cases), "done": len(done),
        "failed": [{"case": c, "problem": p} for c, p in failed.items()], "missing": missing,
        "model_loads": sum(int(w["model_loads"]) for w in workers), "worker_processes": len(workers),
        "seconds_per_case_mean": round(sum(seconds) / len(seconds), 4) if seconds else None,
        "peak_rss_mb_per_worker": round(max(rss.values()), 1) if rss else None,
        "job": fingerprint, **(extra or {}),
    }
    rows = [r.row for r in done if r.row is not None]
    if rows:
        write_text_atomic(out / "predictions.csv", _csv([dict(case=r.case, **r.row) for r in done if r.row]))
    if failed or missing:
        problems = [(c, p) for c, p in failed.items()] + [(c, "not predicted yet (no finished output)") for c in missing]
        write_text_atomic(out / "failures.csv", _csv([{"case": c, "path": str(cases[c]), "problem": p}
                                                      for c, p in problems]))
    else:
        (out / "failures.csv").unlink(missing_ok=True)
    if not failed and not missing:  # every part has ended: no temp file still being written
        _remove_stale_temp_files(out, cases)
    write_json_atomic(out / SUMMARY, summary)
    return MergeReport(len(cases), len(done), failed, missing, summary)


def _remove_stale_temp_files(out: Path, cases: dict[str, Path]) -> None:
    """Temp files a killed process left (``.<name>.<random><suffix>``, see :func:`aemia.utils.io.atomic_path`)."""
    names = re.compile(r"^\.(" + "|".join(re.escape(c) for c in cases) + r")[._].+") if cases else None
    if names is None:
        return
    for folder in [out, *[p for p in out.rglob("*") if p.is_dir()]]:
        for f in folder.iterdir():
            if f.is_file() and names.match(f.name):
                f.unlink(missing_ok=True)


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()
