"""Rounds that never get worse by surprise: LQ replays every label, the validation set grows, a worse round is
not promoted (and ``status`` says so), and a round folder is a run for ``aemia predict``.

A tiny classification project (bright square vs plain noise, 32 px, ResNet widths (4, 8)); amp="none"
throughout (:func:`aemia.active.continual.fit_model`), fixed seeds.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

import aemia.active.continual as continual  # noqa: E402
from aemia.active.importing import import_labels  # noqa: E402
from aemia.active.project import Project, init_project  # noqa: E402
from aemia.active.query import query_round  # noqa: E402
from aemia.active.validation import promotion_decision, score_with_ci, validation_target  # noqa: E402
from aemia.cli.main import main  # noqa: E402
from aemia.data.io import write_png  # noqa: E402

CLASSES = ["plain", "square"]


def test_validation_target_grows_with_the_labels() -> None:
    assert validation_target(10, 0.2) == 3  # min(20, n // 3) while there are few labels
    assert validation_target(30, 0.2) == 10
    assert validation_target(60, 0.2) == 20  # at least 20 once there are enough
    assert validation_target(200, 0.2) == 40  # the fraction beyond that
    assert validation_target(300, 0.05) == 30  # never below 10%
    assert validation_target(100, 0.0) == 0  # fraction 0: no validation set
    assert all(validation_target(n + 1, 0.2) >= validation_target(n, 0.2) for n in range(300))


def test_promotion_rules_on_fixed_scores() -> None:
    new = np.array([1.0] * 12 + [0.0] * 8)  # accuracy 0.60 on 20 validation cases
    assert promotion_decision(new, None, None)["promoted"]  # the first model
    assert promotion_decision(None, None, 2)["promoted"]  # no validation set to compare on
    same = promotion_decision(new, new.copy(), 3)
    assert same["promoted"] and same["difference"] == 0.0 and same["difference_ci"] == [0.0, 0.0]  # a tie: more labels win
    better = promotion_decision(new, np.array([1.0] * 10 + [0.0] * 10), 3)
    assert better["promoted"] and abs(better["difference"] - 0.1) < 1e-12
    one_down = np.array([1.0] * 13 + [0.0] * 7)  # the project model gets one more case right
    d = promotion_decision(new, one_down, 3)  # default rule not-worse: a one-case drop keeps the project model
    assert not d["promoted"] and d["incumbent"] == 3 and abs(d["difference"] + 0.05) < 1e-12
    assert d["difference_ci"][0] < 0 <= d["difference_ci"][1] and "0.600" in d["reason"] and "0.650" in d["reason"]
    assert promotion_decision(new, one_down, 3, rule="ci")["promoted"]  # the loose rule: inside the CI is noise
    far = promotion_decision(new, np.ones(20), 3, rule="ci")  # the project model is above the new model's whole CI
    assert not far["promoted"] and far["score_ci"][1] < 1.0
    with pytest.raises(ValueError, match="unknown promotion rule"):
        promotion_decision(new, new, 3, rule="best")
    with pytest.raises(ValueError, match="length"):
        promotion_decision(new, new[:5], 3)
    # the CI comes from the shared bootstrap helper: a perfect model's interval is [1, 1]
    sc = score_with_ci("classification", np.eye(2)[[0, 1, 1, 0]], np.array([0, 1, 1, 0]), 2)
    assert sc["mean"] == 1.0 and sc["ci"] == [1.0, 1.0] and sc["n"] == 4


def _pool(folder: Path, n: int = 48) -> dict[str, str]:
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True)
    truth = {}
    for i in range(n):
        a = rng.random((32, 32)) * 0.3
        if i % 2:
            a[8:24, 8:24] += 0.6
        write_png(a, folder / f"c{i:02d}.png")
        truth[f"c{i:02d}"] = CLASSES[i % 2]
    return truth


def _label_round(proj: Project, truth: dict[str, str], k: int, tmp: Path) -> list[str]:
    q = query_round(proj, "random", k=k, progress=False)
    labels = tmp / f"labels_{q.round:02d}.csv"
    labels.write_text("case,label\n" + "".join(f"{c},{truth[c]}\n" for c in q.cases))
    import_labels(proj, labels, progress=False)
    return q.cases


def _sabotaged_fit(model: Any, *args: Any, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """A round whose training went wrong: every weight zero, so every case gets class 0."""
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model.cpu(), {"history": []}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("rounds")
    truth = _pool(tmp / "img")
    proj = init_project(tmp / "P", tmp / "img", task="classification", classes=CLASSES, size=32, features=[4, 8],
                        val_fraction=0.5, progress=False)
    _label_round(proj, truth, 16, tmp)
    s0 = continual.train_round(proj, epochs=30, lr=3e-3, progress=False, min_steps=0)
    _label_round(proj, truth, 8, tmp)
    s1 = continual.train_round(proj, epochs=30, lr=3e-3, progress=False, min_steps=0)  # default mode: LQ
    return {"tmp": tmp, "truth": truth, "proj": proj, "s0": s0, "s1": s1}


def test_lq_is_the_default_and_replays_every_labelled_case(project: dict[str, Any]) -> None:
    s0, s1 = project["s0"], project["s1"]
    assert s1["mode"] == "all-labelled" and s1["init"]["from"] == "round_00"
    assert set(s0["labelled"]) < set(s1["labelled"])
    assert sorted(s1["trained_on"]) == sorted(s1["labelled"])  # nothing forgotten: every training label replayed
    assert s1["hard"] == {}
    with Project.open(project["proj"].root).ledger() as led:
        annotated = {it.case_id for it in led.items("annotated")}
    assert set(s1["labelled"]) | _validation(project["proj"]) == annotated


def _validation(proj: Project) -> set[str]:
    import json

    return set(json.loads((proj.root / "validation.json").read_text())["cases"])


def test_validation_grows_and_reports_a_ci(project: dict[str, Any]) -> None:
    s0, s1 = project["s0"], project["s1"]
    assert s0["n_validation"] == 8 and s1["n_validation"] == validation_target(24, 0.5) == 12
    for s in (s0, s1):
        sc = s["validation"]["score"]
        assert sc["metric"] == "accuracy" and sc["n"] == s["n_validation"]
        assert sc["ci"][0] <= sc["mean"] <= sc["ci"][1]
    assert not _validation(project["proj"]) & set(s0["labelled"])  # no model ever trained on a validation case


def test_a_worse_round_is_not_promoted_and_status_says_so(project: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    proj, tmp, truth = project["proj"], project["tmp"], project["truth"]
    incumbent = project["s1"]
    assert incumbent["promoted"] and proj.project_model()["round"] == 1
    assert incumbent["validation"]["score"]["mean"] == 1.0  # the easy task is learnt (fixed seeds, fp32)
    _label_round(proj, truth, 8, tmp)
    monkeypatch.setattr(continual, "fit_model", _sabotaged_fit)
    s2 = continual.train_round(proj, epochs=1, progress=False, min_steps=0)
    monkeypatch.undo()
    sc = s2["validation"]["score"]
    assert s2["decision"]["incumbent"] == 1 and s2["decision"]["incumbent_score"] > sc["ci"][1]
    assert not s2["promoted"] and s2["project_model"] == 1
    assert proj.project_model()["round"] == 1  # the project keeps round 01's model
    assert query_round(proj, "entropy", k=4, progress=False).model_round == 1  # and queries with it
    assert main(["active", "status", "--project", str(proj.root)]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("round 02:")]
    assert len(lines) == 1 and "NOT promoted" in lines[0] and "stays round 01" in lines[0]
    assert any(line.startswith("round 01: promoted") for line in out.splitlines())
    rows = list(csv.DictReader((proj.root / "learning_curve.csv").open()))
    assert [r["promoted"] for r in rows] == ["True", "True", "False"]
    # the next round starts from the project model (round 01), not from the rejected one
    import_path = tmp / "labels_03.csv"
    import_path.write_text("case,label\n" + "".join(f"{c},{truth[c]}\n" for c in
                                                     [row["case"] for row in csv.DictReader(
                                                         (proj.round_dir(3) / "worklist.csv").open())]))
    import_labels(proj, import_path, progress=False)
    s3 = continual.train_round(proj, epochs=1, progress=False, min_steps=0)
    assert s3["parent"] == 1 and s3["init"]["from"] == "round_01"
    assert math.isfinite(s3["validation"]["score"]["mean"])


def test_round_folder_predicts_classes(project: dict[str, Any], tmp_path: Path) -> None:
    run = project["proj"].model_dir(0)
    few = tmp_path / "few"
    few.mkdir()
    for name in ("c00.png", "c01.png", "c02.png"):
        (few / name).write_bytes((project["tmp"] / "img" / name).read_bytes())
    assert main(["predict", "--run", str(run), "--input", str(few), "--out", str(tmp_path / "pred")]) == 0
    rows = list(csv.DictReader((tmp_path / "pred" / "predictions.csv").open()))
    assert [r["case"] for r in rows] == ["c00", "c01", "c02"]
    # the run folder holds the round's own model and preprocessing: same probabilities as the project's view
    proj = project["proj"]
    x = proj.load_images([str(p) for p in sorted(few.iterdir())])
    probs = continual.predict_all(proj.load_model(project["s0"]), x)
    assert [int(r["predicted_class"]) for r in rows] == probs.argmax(1).tolist()
    assert np.allclose([[float(r["p0"]), float(r["p1"])] for r in rows], probs, atol=1e-4)
