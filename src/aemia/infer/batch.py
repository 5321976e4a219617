"""Predict every image under a path and write the results atomically."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from aemia.data.io import case_id, image_kind, is_dicom_file
from aemia.data.preflight import image_problems, require
from aemia.errors import InputError
from aemia.infer.records import CaseResult, MergeReport, finished, merge, write_record
from aemia.infer.shard import wait_for_all_parts

if TYPE_CHECKING:
    from aemia.infer.cases import PredictJob

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


def predict_path(run: str | Path | list[str | Path], input: str | Path, out: str | Path, tta: bool = False,
                 prune: int | None = None, device: str = "auto", amp: str = "none", progress: bool = True,
                 skip_bad: bool = False, workers: int = 1, num_parts: int | None = None, part_id: int | None = None,
                 save_probs: bool = False, probs_dtype: str = "uint8") -> list[Path]:
    """Predict all inputs; 2D masks as PNG (binary 0/255), volumes as NIfTI with the input's affine,
    classification as ``predictions.csv``; for runs with a tumor / lesion class also ``<case>_lesions.csv`` (one row
    per predicted lesion: centre in voxels and world mm, equivalent diameter, extent, volume).

    ``run`` may be a list of runs: an ensemble (mean probabilities; ``save_probs`` keeps each model's, see
    :mod:`aemia.infer.cases`). Scale-out: this process predicts part ``part_id`` of ``num_parts``
    (:class:`~aemia.infer.shard.Shard`; under torchrun the rank's part) in ``workers`` processes
    (:func:`~aemia.infer.pool.run_pool`), skipping cases already finished by the same job
    (:mod:`aemia.infer.records`); the only part, or torchrun rank 0 once every rank is done, then writes
    ``summary.json``. One part in one worker is the same machinery in this process.

    Every input of the part is validated first (readable, header sanity, the model's dimensionality and channels,
    finite voxels). If any is bad, nothing is written and :class:`ProblemsError` lists them all; with ``skip_bad``
    the good inputs are predicted. A case that fails while predicting is recorded with its problem and the others go
    on. Any failed case ends in ``failures.csv`` (case, path, problem) and :class:`PartialFailure` (the CLI exits
    non-zero). Returns this part's output files (each case's label map first). Every output file is atomic."""
    from aemia.infer.cases import PredictJob
    from aemia.infer.shard import Shard

    runs = tuple(str(r) for r in (run if isinstance(run, (list, tuple)) else [run]))
    job = PredictJob(runs, str(out), tta=tta, prune=prune, device=device, amp=amp, save_probs=save_probs,
                     probs_dtype=probs_dtype)
    shard = Shard.resolve(num_parts, part_id)
    spatial_dims, in_channels = job.contract()  # a bad run folder fails here, before any worker starts
    inputs = {case_id(p): p for p in collect_inputs(Path(input))}
    mine = shard.select(list(inputs))
    out = Path(out)
    done = {c: rec for c in mine if (rec := finished(out, c, job.fingerprint)) is not None}
    pending = [inputs[c] for c in mine if c not in done]
    failures = {path: problems for path in pending
                if (problems := image_problems(path, spatial_dims, in_channels))}
    if failures and not skip_bad:
        require([p for problems in failures.values() for p in problems], input)
    for path, problems in failures.items():
        write_record(out, CaseResult(case_id(path), str(path), ok=False, problem="; ".join(p.problem for p in problems),
                                     job=job.fingerprint))
    results = dict(done)
    run_cases(job, [p for p in pending if p not in failures], workers, results, progress)
    if shard.merges or shard.torchrun:
        wait_for_all_parts(shard)
    if shard.merges:
        report = merge(out, inputs, job.fingerprint, {"parts": shard.num_parts, "workers_per_part": workers})
        if not report.complete:
            raise PartialFailure(out / "failures.csv", _incomplete(report))
    else:
        failed = {c: r.problem for c, r in results.items() if not r.ok}
        if failed:
            raise PartialFailure(None, f"{shard.name}: {len(failed)} case(s) failed: "
                                       + "; ".join(f"{c}: {p}" for c, p in list(failed.items())[:3]))
    return [out / o for c in mine if c in results and results[c].ok for o in results[c].outputs]


def run_cases(job: "PredictJob", paths: list[Path], workers: int, results: dict[str, CaseResult],
              progress: bool = True) -> None:
    """Predict ``paths`` in ``workers`` processes; every case's :class:`CaseResult` lands in ``results``."""
    from aemia.infer.cases import load_worker
    from aemia.infer.pool import run_pool
    from aemia.utils.progress import Bar

    def crashed(chunk: list[str], problem: str) -> list[CaseResult]:  # cases written before the crash count
        return [finished(Path(job.out), case_id(p), job.fingerprint)
                or CaseResult(case_id(p), str(p), ok=False, problem=problem, job=job.fingerprint) for p in chunk]

    with Bar("predicting", total=len(paths), enabled=progress) as bar:
        def collect(chunk_results: list[CaseResult]) -> None:
            for r in chunk_results:
                results[r.case] = r
                if not r.ok:
                    bar.describe(f"failed: {r.case}: {r.problem}"[:200])
            bar.advance(len(chunk_results))

        run_pool(load_worker, (job,), [str(p) for p in paths], workers, collect, crashed)


def _incomplete(report: "MergeReport") -> str:
    parts = []
    if report.failed:
        first = next(iter(report.failed.items()))
        parts.append(f"{len(report.failed)} case(s) failed (first: {first[0]}: {first[1]})")
    if report.missing:
        parts.append(f"{len(report.missing)} case(s) not predicted yet (first: {report.missing[0]})")
    return f"{' and '.join(parts)} of {report.cases}; {report.done} done (listed here; run again to resume)"


def merge_outputs(run: str | Path | list[str | Path], input: str | Path, out: str | Path, tta: bool = False,
                  prune: int | None = None, amp: str = "none", save_probs: bool = False,
                  probs_dtype: str = "uint8") -> "MergeReport":
    """``aemia predict --merge``: check that every input case finished (same runs and options as the parts) and
    write ``summary.json``; raises :class:`PartialFailure` listing what failed or is missing."""
    from aemia.infer.cases import PredictJob

    runs = tuple(str(r) for r in (run if isinstance(run, (list, tuple)) else [run]))
    job = PredictJob(runs, str(out), tta=tta, prune=prune, amp=amp, save_probs=save_probs, probs_dtype=probs_dtype)
    inputs = {case_id(p): p for p in collect_inputs(Path(input))}
    report = merge(Path(out), inputs, job.fingerprint)
    if not report.complete:
        raise PartialFailure(Path(out) / "failures.csv", _incomplete(report))
    return report


class PartialFailure(InputError):
    """``--skip-bad``: the good inputs were predicted, the bad ones are listed in ``failures.csv``."""
