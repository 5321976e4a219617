"""``query``: score the unlabelled pool with the latest model and queue the best cases as a new round
(``rounds/NN/``; the active-learning cycle, :mod:`aemia.cli.active`).

Cold start: before any model exists, ``query`` falls back to uniform random selection
(:class:`~aemia.active.strategies.RandomStrategy` with seed ``project seed + round``) whatever strategy is
asked for, and records that in the ledger (``"random (cold start; asked acft)"``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aemia.active.project import Project, open_project
from aemia.active.scoring import score_pool
from aemia.active.strategies import RandomStrategy, Strategy, get_strategy
from aemia.errors import InputError
from aemia.utils.io import atomic_path, write_text_atomic

__all__ = [
    "QueryResult",
    "query_round",
]


@dataclass
class QueryResult:
    """What ``query`` did."""

    round: int
    strategy: str  # as recorded in the ledger (says "cold start" when it fell back to random)
    model_round: int | None
    cases: list[str]
    scores: list[float]
    worklist: Path
    folder: Path
    pending: int  # queried cases of earlier rounds still waiting for labels


def query_round(
    project: str | Path | Project,
    strategy: str = "acft",
    k: int = 20,
    *,
    progress: bool = True,
    batch_size: int = 8,
    **strategy_params: Any,
) -> QueryResult:
    """Score the unlabelled pool with the current model and queue the ``k`` best cases as a new round.

    Writes ``rounds/NN/worklist.csv`` and copies the images into ``rounds/NN/to_annotate/`` *before*
    recording the query in the ledger (one transaction): a crash before the commit leaves no round, and a
    rerun rewrites the same folder. Before any model exists the selection is random (cold start).
    """
    proj = open_project(project)
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise InputError(None, f"--k must be a positive integer, got {k!r}")
    if proj.is_3d:
        from aemia.active.volume_scoring import default_reduce

        try:
            strategy_params = default_reduce(strategy, strategy_params)
        except ValueError as exc:
            raise InputError(None, str(exc)) from None
    try:
        strat = get_strategy(strategy, **strategy_params)
    except ValueError as exc:
        raise InputError(None, str(exc)) from None
    with proj.ledger() as led:
        pool = led.items("unlabelled")
        if not pool:
            raise InputError(proj.root, "the pool has no unlabelled cases left")
        pending = led.status_counts()["queried"]
        r = led.next_round()
        summary = proj.project_model()
        if summary is None and not isinstance(strat, RandomStrategy):
            used: Strategy = RandomStrategy(seed=proj.config.seed + r)
            label = f"random (cold start; asked {strat.name})"
            model = None
        else:
            used = strat
            if hasattr(strat, "seed") and "seed" not in strategy_params:  # a fresh random draw every round
                used = dataclasses.replace(strat, seed=proj.config.seed + r)
            label = used.name if not strategy_params else f"{used.name} {json.dumps(strategy_params, sort_keys=True)}"
            model = None if summary is None else proj.load_model(summary)
        scores = score_pool(proj, model, used, pool, labelled=led.items("annotated"), batch_size=batch_size,
                            progress=progress)
        order = used.rank(scores, int(k))
        chosen = [pool[i] for i in order]
        folder = proj.round_dir(r)
        target = folder / "to_annotate"
        if target.exists():  # left by a query that crashed before its ledger commit (round r is not recorded)
            shutil.rmtree(target)
        target.mkdir(parents=True)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["case", "image_path", "score", "rank"])
        for rank_, (i, it) in enumerate(zip(order, chosen), start=1):
            w.writerow([it.case_id, it.image_path, f"{float(scores[i]):.6g}", rank_])
            _copy_case(Path(it.image_path), target)
        write_text_atomic(folder / "worklist.csv", buf.getvalue())
        write_text_atomic(folder / "README.txt", _round_readme(proj, r, label, summary, len(chosen)))
        led.query([it.case_id for it in chosen], r, strategy=label)
    return QueryResult(r, label, None if summary is None else int(summary["round"]), [c.case_id for c in chosen],
                       [float(scores[i]) for i in order], folder / "worklist.csv", target, pending)


def _copy_case(src: Path, target: Path) -> None:
    """Copy one queried image (a file, or a DICOM series folder) into ``target`` atomically."""
    if src.is_dir():
        tmp = target / f".{src.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        tmp.rename(target / src.name)
        return
    with atomic_path(target / src.name, suffix=src.suffix) as tmp_file:
        shutil.copyfile(src, tmp_file)


def _round_readme(proj: Project, r: int, strategy: str, summary: dict[str, Any] | None, n: int) -> str:
    cfg = proj.config
    if cfg.dims == 3:
        how = (f"Draw a label volume for each image in to_annotate/ and save it as <case>.nii.gz (same case name,\n"
               f"on the image's own grid: same shape, voxel size and orientation; a DICOM series folder <case>/ or\n"
               f"<case>.nrrd also works). Voxel values: 0..{len(cfg.classes) - 1} = {', '.join(cfg.classes)}.")
    elif cfg.task == "segmentation":
        how = (f"Draw a mask for each image in to_annotate/ and save it as <case>.png (same file name stem as the\n"
               f"image, same width and height). Pixel values: 0..{len(cfg.classes) - 1} = {', '.join(cfg.classes)}"
               + (" (a binary mask may also use 0/255)." if len(cfg.classes) == 2 else "."))
    else:
        how = (f"Write a CSV with a header line 'case,label' and one row per image; label is one of: "
               f"{', '.join(cfg.classes)} (or its index).")
    model = "none (random cold start)" if summary is None else f"models/round_{summary['round']:02d}"
    return (f"aemia active learning, round {r:02d}: {n} cases, strategy {strategy}, model {model}.\n"
            f"worklist.csv lists them, most informative first.\n\n{how}\n\n"
            f"Then: aemia active import --project {proj.root} --labels <your label folder or CSV>\n")
