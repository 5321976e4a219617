"""Predict a list of cases in one worker: models loaded once, reading ahead, writing behind, one record per case.

:class:`PredictJob` says what to do (one run or an ensemble of runs, options, output folder); it is small and
picklable so :func:`aemia.infer.pool.run_pool` sends it to each worker, where :func:`load_worker` loads every run's
model once and returns a :class:`CaseWorker`. For each chunk of cases the worker reads and prepares the next case
in a background thread (:func:`~aemia.infer.pool.prefetched`: read, normalise, resample), runs the model(s) here,
and writes in a second thread (resample back, ensemble mean, label map, NIfTI/PNG, record). An error of one case
(unreadable file, out of memory in the model, a full disk) becomes that case's failed :class:`CaseResult`, with
the case name and problem, and the worker goes on with the next case.

Ensembles (``runs`` > 1): the label map is the argmax of the mean of the models' probabilities. With
``save_probs`` each model's probabilities are written as ``OUT/probs/<model>/<case>.nii.gz``, a 4D ``(X, Y, Z, K)``
NIfTI in the input's geometry, quantised to uint8 (``p = q / 255``, stored as the NIfTI scale factor, so any
reader gets floats; error <= 0.002) or uint16 (``q / 65535``), plus ``OUT/probs/organs.json`` (channel -> class
name, background left out): the layout ``aemia review prioritize --predictions OUT/probs`` reads. (NIfTI-1 has
no float16 type; uint16 is the finer option, a quarter of float32's size after gzip at most.)
"""

from __future__ import annotations

import json
import os
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aemia.data.image import Image
from aemia.data.io import case_id, read_image, write_nifti, write_png
from aemia.data.orientation import to_source
from aemia.errors import InputError
from aemia.infer.lesions import lesion_classes, lesion_csv, lesion_rows
from aemia.infer.pool import prefetched
from aemia.infer.predictor import Predictor, Prepared, is_model_folder
from aemia.infer.records import CaseResult, write_record, write_worker
from aemia.infer.shard import local_device
from aemia.utils.io import atomic_path, write_json_atomic, write_text_atomic

PROBS_DIR = "probs"
PROBS_DTYPES = {"uint8": np.uint8, "uint16": np.uint16}


@dataclass(frozen=True)
class PredictJob:
    """One prediction job: the runs (one, or an ensemble), the options and the output folder."""

    runs: tuple[str, ...]
    out: str
    tta: bool = False
    prune: int | None = None
    device: str = "auto"
    amp: str = "none"
    save_probs: bool = False
    probs_dtype: str = "uint8"
    model_names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.runs:
            raise InputError(None, "give a run (--run) or several (--runs R1,R2,...)")
        if self.probs_dtype not in PROBS_DTYPES:
            raise InputError(None, f"--probs-dtype must be one of {sorted(PROBS_DTYPES)}, got {self.probs_dtype!r}")
        if not self.model_names:
            object.__setattr__(self, "model_names", unique_names(self.runs))

    @property
    def fingerprint(self) -> dict[str, Any]:
        """What makes two jobs' outputs interchangeable (a finished case of another job is predicted again)."""
        d = asdict(self)
        d.pop("out")
        d.pop("device")
        d["runs"] = [str(Path(r).resolve()) for r in self.runs]
        d["model_names"] = list(self.model_names)
        return d

    def contract(self) -> tuple[int, int]:
        """(spatial dims, input channels), from the runs' config files (no weights are read): a bad run folder,
        runs that cannot form an ensemble or ``save_probs`` on a model without 3D probabilities fail here."""
        from aemia.nets.checkpoint import read_config
        from aemia.runs.folder import RunFolder

        found = []
        for r in self.runs:
            if is_model_folder(r):  # a shipped model (aemia predict --pretrained)
                where = Path(r) / "config.json"
                try:
                    cfg = json.loads(where.read_text(encoding="utf-8"))
                except (OSError, json.JSONDecodeError) as exc:
                    raise InputError(where, f"not a shipped model config ({exc})") from None
            else:
                run = RunFolder(r)
                run.config()  # a malformed config.yaml is reported here
                where = run.checkpoint("best")
                cfg = read_config(where)
            model = cfg.get("model", {})
            try:
                found.append((str(cfg.get("task", "segmentation")), int(model["spatial_dims"]),
                              int(model["in_channels"]), int(model.get("out_channels", 0))))
            except (KeyError, TypeError, ValueError):
                raise InputError(where, "checkpoint config has no spatial_dims / in_channels") from None
        for r, c in zip(self.runs[1:], found[1:]):
            if c != found[0]:
                raise InputError(r, f"an ensemble needs runs of the same task, dimensionality, input channels and "
                                    f"classes as {self.runs[0]} ({c} vs {found[0]})")
        task, dims, channels, _ = found[0]
        if self.save_probs and (task != "segmentation" or dims != 3):
            raise InputError(self.runs[0], "--save-probs writes 3D probability maps; this run is not a 3D "
                                           "segmentation model")
        return dims, channels

    def load(self) -> list[Predictor]:
        device = local_device(self.device)  # torchrun: one GPU per rank
        return [Predictor.from_run(r, prune=self.prune, tta=self.tta, device=device, amp=self.amp)
                for r in self.runs]


def unique_names(runs: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """A folder name per run (its folder's name; repeats get ``_2``, ``_3``)."""
    names: list[str] = []
    for r in runs:
        base = re.sub(r"[^A-Za-z0-9_.\-]", "_", Path(r).resolve().name) or "model"
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return tuple(names)


def _classes(p: Predictor) -> int:
    return int(getattr(p.model, "out_channels", 0) or 0)


def organs_json(predictor: Predictor) -> dict[str, str]:
    """``{channel: name}`` of the foreground classes, as ``aemia review prioritize`` reads from organs.json."""
    n = _classes(predictor) or 2
    names = predictor.classes or {k: f"class{k}" for k in range(n)}
    return {str(k): re.sub(r"[^A-Za-z0-9_.\-]", "_", str(v)) for k, v in sorted(names.items()) if k > 0}


def write_probabilities(image: Image, path: Path, dtype: str) -> Path:
    """``(K, *S)`` probabilities of ``image`` (its array) as a quantised 4D NIfTI with its affine (atomic)."""
    import nibabel as nib

    top = float(np.iinfo(PROBS_DTYPES[dtype]).max)
    q = np.round(np.clip(np.moveaxis(image.array, 0, -1), 0.0, 1.0) * top).astype(PROBS_DTYPES[dtype])
    affine = np.asarray(image.affine, dtype=np.float64)
    img = nib.Nifti1Image(np.ascontiguousarray(q), affine)
    img.header.set_slope_inter(1.0 / top, 0.0)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (MB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)  # Linux: kB


def _problem(exc: BaseException) -> str:
    if isinstance(exc, InputError):
        return exc.problem
    return f"{type(exc).__name__}: {exc}"


class CaseWorker:
    """The models of a job, loaded once in this process; call it with a list of input paths."""

    def __init__(self, job: PredictJob) -> None:
        import socket

        import torch

        self.job = job
        self.predictors = job.load()
        self.out = Path(job.out)
        self.fingerprint = job.fingerprint
        write_worker(self.out, {"host": socket.gethostname(), "pid": os.getpid(), "model_loads": len(self.predictors),
                                "threads": torch.get_num_threads(), "job": self.fingerprint})

    def _load(self, path: str) -> tuple[Image, list[Prepared], float]:
        t0 = time.perf_counter()
        image = read_image(path)
        return image, [p.prepare(image) for p in self.predictors], time.perf_counter() - t0

    def __call__(self, paths: list[str]) -> list[CaseResult]:
        results: list[Future[CaseResult] | CaseResult] = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="aemia-write") as writer:
            for path, loaded in prefetched(paths, self._load):
                if isinstance(loaded, Exception):
                    results.append(self._failed(path, loaded, 0.0))
                    continue
                image, prepared, seconds = loaded
                t0 = time.perf_counter()
                try:
                    nets = [p.forward(x) for p, x in zip(self.predictors, prepared)]
                except Exception as exc:
                    results.append(self._failed(path, exc, seconds + time.perf_counter() - t0))
                    continue
                if results and isinstance(results[-1], Future):
                    results[-1].exception()  # at most one case waits to be written: memory stays bounded
                results.append(writer.submit(self._finish, path, image, prepared, nets,
                                             seconds + time.perf_counter() - t0))
        return [r.result() if isinstance(r, Future) else r for r in results]

    def _failed(self, path: str, exc: BaseException, seconds: float) -> CaseResult:
        result = CaseResult(case_id(path), str(path), ok=False, problem=_problem(exc), seconds=round(seconds, 4),
                            pid=os.getpid(), peak_rss_mb=peak_rss_mb(), job=self.fingerprint)
        try:
            write_record(self.out, result)
        except OSError:
            pass  # the result still reaches the parent, which lists it
        return result

    def _finish(self, path: str, image: Image, prepared: list[Prepared], nets: list[Any], seconds: float) -> CaseResult:
        t0 = time.perf_counter()
        try:
            probs = [p.restore(x, t) for p, x, t in zip(self.predictors, prepared, nets)]
            outputs, row = self._write(case_id(path), image, probs)
        except Exception as exc:
            return self._failed(path, exc, seconds + time.perf_counter() - t0)
        result = CaseResult(case_id(path), str(path), ok=True, seconds=round(seconds + time.perf_counter() - t0, 4),
                            outputs=outputs, row=row, pid=os.getpid(), peak_rss_mb=peak_rss_mb(),
                            job=self.fingerprint)
        write_record(self.out, result)  # last: its presence means every output above is complete
        return result

    def _write(self, cid: str, image: Image, probs: list[np.ndarray]) -> tuple[list[str], dict[str, Any] | None]:
        first = self.predictors[0]
        mean = probs[0] if len(probs) == 1 else np.mean(probs, axis=0)
        if first.task == "classification":
            return [], {"predicted_class": int(np.argmax(mean)), **{f"p{k}": f"{float(p):.6f}" for k, p in enumerate(mean)}}
        labels = first.label_map(mean, image.spacing)  # with the model's post-processing (liver + tumour)
        if image.spatial_dims != 3:
            write_png(labels, self.out / f"{cid}.png", labels=int(labels.max()) > 1)
            return [f"{cid}.png"], None
        outputs: list[str] = []
        if self.job.save_probs:
            write_json_atomic(self.out / PROBS_DIR / "organs.json", organs_json(first))
            for name, p in zip(self.job.model_names, probs):
                rel = f"{PROBS_DIR}/{name}/{cid}.nii.gz"
                write_probabilities(to_source(image.with_array(p)), self.out / rel, self.job.probs_dtype)
                outputs.append(rel)
        label = to_source(image.with_array(labels[None]))  # the input's own orientation and affine
        write_nifti(label, self.out / f"{cid}.nii.gz")
        outputs.insert(0, f"{cid}.nii.gz")
        lesions = lesion_classes(first.classes)
        if lesions:  # e.g. liver + tumor: one row per predicted lesion
            prob = {k: to_source(image.with_array(mean[k][None])).array[0] for k in lesions}
            # a liver + tumour model: each tumour's mean depth inside the predicted liver (liver + tumour voxels)
            organ = label.array[0] > 0 if (first.postprocess or {}).get("kind") == "liver_tumor" else None
            rows = [r for k, name in lesions.items()  # each lesion with its confidence (max / mean probability)
                    for r in lesion_rows(label.array[0], k, label.spacing, label.affine, name,
                                         probability=prob[k], region=organ)]
            write_text_atomic(self.out / f"{cid}_lesions.csv", lesion_csv(rows))
            outputs.insert(1, f"{cid}_lesions.csv")
        return outputs, None


def load_worker(job: PredictJob) -> CaseWorker:
    """Pool setup: load the job's models once in this worker process."""
    return CaseWorker(job)
