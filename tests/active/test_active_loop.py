"""The human-in-the-loop cycle: init → query → annotate → import → train → query, from the CLI.

Tiny and CPU-light: 30 Kvasir pictures (or synthetic ones if the data are absent) at 32x32, a U-Net with
widths (4, 8, 16), 2 epochs per round.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

from aemia.active.ledger import Ledger  # noqa: E402
from aemia.active import continual  # noqa: E402
from aemia.active.continual import initial_model, train_round  # noqa: E402
from aemia.active.importing import import_labels  # noqa: E402
from aemia.active.pictures import decode_mask  # noqa: E402
from aemia.active.project import Project, init_project  # noqa: E402
from aemia.active.query import query_round  # noqa: E402
from aemia.active.scoring import score_pool  # noqa: E402
from aemia.active.strategies import get_strategy  # noqa: E402
from aemia.cli.main import main  # noqa: E402
from aemia.data.io import write_png  # noqa: E402
from aemia.errors import InputError  # noqa: E402

KVASIR = Path(os.environ.get("AEMIA_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data")) / "kvasir_seg_256"
N_POOL = 30
TINY = ["--size", "32", "--features", "4,8,16"]


def _make_pool(folder: Path, n: int = N_POOL) -> tuple[Path, Path]:
    """``folder/images`` (pictures) and ``folder/truth`` (their binary masks, named like the images)."""
    images, truth = folder / "images", folder / "truth"
    images.mkdir(parents=True)
    truth.mkdir()
    files = sorted((KVASIR / "images").glob("*.jpg"))[:n] if (KVASIR / "images").is_dir() else []
    if len(files) == n:
        for f in files:
            shutil.copyfile(f, images / f.name)
            shutil.copyfile(KVASIR / "masks" / f.name, truth / f.name)  # JPEG masks, > 127 = polyp
        return images, truth
    rng = np.random.default_rng(0)  # synthetic fallback: bright discs on noise
    yy, xx = np.mgrid[:64, :64]
    for i in range(n):
        cy, cx, r = rng.integers(16, 48, 2).tolist() + [int(rng.integers(6, 14))]
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        write_png(np.clip(rng.random((64, 64)) * 0.4 + 0.5 * mask, 0, 1), images / f"case{i:02d}.png")
        write_png(mask.astype(np.uint8), truth / f"case{i:02d}.png")
    return images, truth


def _annotate(worklist: Path, truth: Path, out: Path) -> list[str]:
    """The simulated annotator: copy the ground-truth mask of every worklist case into ``out``."""
    out.mkdir(parents=True)
    cases = [row["case"] for row in csv.DictReader(worklist.open())]
    for case in cases:
        src = next(truth.glob(f"{case}.*"))
        shutil.copyfile(src, out / src.name)
    return cases


def _picture_shape(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as pic:
        return pic.height, pic.width


def _cli(*args: str) -> int:
    return main(["active", *args])


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two full rounds from the CLI; returns paths and what each step printed/returned."""
    base = tmp_path_factory.mktemp("loop")
    images, truth = _make_pool(base)
    proj = base / "P"
    assert _cli("init", "--images", str(images), "--project", str(proj), *TINY) == 0
    out: dict = {"base": base, "images": images, "truth": truth, "proj": proj}
    assert _cli("query", "--project", str(proj), "--strategy", "acft", "--k", "10") == 0
    out["cases0"] = _annotate(proj / "rounds" / "00" / "worklist.csv", truth, base / "labels0")
    assert _cli("import", "--project", str(proj), "--labels", str(base / "labels0"), "--annotator", "ann") == 0
    assert _cli("import", "--project", str(proj), "--labels", str(base / "labels0"), "--annotator", "ann") == 0
    assert _cli("train", "--project", str(proj), "--epochs", "2") == 0
    assert _cli("query", "--project", str(proj), "--strategy", "acft", "--k", "8") == 0
    out["cases1"] = _annotate(proj / "rounds" / "01" / "worklist.csv", truth, base / "labels1")
    assert _cli("import", "--project", str(proj), "--labels", str(base / "labels1")) == 0
    assert _cli("train", "--project", str(proj), "--epochs", "2", "--mode", "continual") == 0
    assert _cli("query", "--project", str(proj), "--strategy", "entropy", "--k", "5") == 0
    return out


def test_loop_rounds_worklists_and_ledger(loop: dict) -> None:
    proj: Path = loop["proj"]
    for r, k in ((0, 10), (1, 8), (2, 5)):
        folder = proj / "rounds" / f"{r:02d}"
        rows = list(csv.DictReader((folder / "worklist.csv").open()))
        assert list(rows[0]) == ["case", "image_path", "score", "rank"]
        assert [int(row["rank"]) for row in rows] == list(range(1, k + 1))
        scores = [float(row["score"]) for row in rows]
        assert scores == sorted(scores, reverse=True)
        copies = sorted(p.name for p in (folder / "to_annotate").iterdir())
        assert copies == sorted(Path(row["image_path"]).name for row in rows)
    with Ledger.open(proj) as led:
        assert led.status_counts() == {"unlabelled": N_POOL - 23, "queried": 5, "annotated": 18}
        rounds = led.rounds()
        assert [ri.round for ri in rounds] == [0, 1, 2]
        assert rounds[0].strategy.startswith("random (cold start")  # no model in round 0
        assert rounds[1].strategy == "acft" and rounds[2].strategy == "entropy"
        assert {it.case_id for it in led.items(round=0)} == set(loop["cases0"])
        assert all(it.annotator == "ann" for it in led.items(round=0))
        # the second import of the same labels changed nothing: one 'annotated' event per case
        assert sum(e.kind == "annotated" for e in led.events()) == 18
        assert led.check() == []
    assert not set(loop["cases1"]) & set(loop["cases0"])


def test_round_two_starts_from_round_one(loop: dict) -> None:
    proj = Project.open(loop["proj"])
    s0 = json.loads((proj.model_dir(0) / "summary.json").read_text())
    s1 = json.loads((proj.model_dir(1) / "summary.json").read_text())
    assert (proj.model_dir(1) / "model.safetensors").is_file() and (proj.model_dir(1) / "model.json").is_file()
    assert (proj.model_dir(1) / "checkpoints" / "last.safetensors").is_file()
    assert s0["init"]["from"] == "M0" and s0["parent"] is None
    fresh = proj.new_model().state_dict()
    assert s0["mode"] == "all-labelled" and s1["parent"] == 0 and s1["mode"] == "continual"
    assert s1["init"]["from"] == "round_00"
    assert s1["init"]["loaded"] == len(fresh) and s1["init"]["missing"] == 0 and s1["init"]["unexpected"] == 0
    # the weights round 1 starts from are round 0's model, not a fresh initialisation
    start, init = initial_model(proj, "continual", s0)
    assert init["loaded"] == len(fresh)
    round0 = proj.load_model(s0).state_dict()
    round1 = proj.load_model(s1).state_dict()
    conv = [k for k, v in fresh.items() if v.dtype.is_floating_point and v.ndim > 1]
    assert all(torch.equal(start.state_dict()[k], round0[k]) for k in conv)
    assert any(not torch.allclose(round0[k], fresh[k]) for k in conv)
    assert any(not torch.allclose(round1[k], round0[k]) for k in conv)
    # ACFT(HQ): round 1 trained on the new cases plus the old ones round 0's model gets wrong (Dice < 0.5)
    record = json.loads((proj.root / "validation.json").read_text())
    val = set(record["cases"])
    first, second = (set(a["cases"]) for a in record["added"])
    assert len(first) == 3 and first <= set(loop["cases0"])  # min(20, 10 // 3) of the first round, held out
    assert len(second) == 3 and second <= set(loop["cases1"])  # grown to min(20, 18 // 3) from new cases only
    assert val == first | second and not second & set(s0["labelled"])
    assert set(s1["new"]) == set(loop["cases1"]) - val
    assert all(d < 0.5 for d in s1["hard"].values())
    assert set(s1["hard"]) <= set(s0["labelled"])
    assert set(s1["trained_on"]) == set(s1["new"]) | set(s1["hard"])
    assert not val & set(s1["trained_on"])
    assert s1["n_labels"] == 18 and s1["n_train_labels"] == 12


def test_status_writes_learning_curve(loop: dict, capsys: pytest.CaptureFixture[str]) -> None:
    proj: Path = loop["proj"]
    assert _cli("status", "--project", str(proj)) == 0
    text = " ".join(capsys.readouterr().out.split())  # rich wraps long lines at the console width
    assert "5 queried" in text and "18 annotated" in text and "learning curve" in text
    assert "round 00: promoted" in text and "round 01:" in text
    png = proj / "learning_curve.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((proj / "learning_curve.csv").open()))
    assert [int(r["n_train_labels"]) for r in rows] == [7, 12]
    assert all(0.0 <= float(r["value"]) <= 1.0 for r in rows)


def test_round_folder_is_a_run_for_predict_and_evaluate(loop: dict, tmp_path: Path) -> None:
    """``aemia predict --run P/models/round_01`` gives masks in each input's own size; evaluate scores them."""
    run = loop["proj"] / "models" / "round_01"
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "best.safetensors").is_file()
    few, gt = tmp_path / "few", tmp_path / "gt"
    few.mkdir()
    gt.mkdir()
    for src in sorted(loop["images"].iterdir())[:3]:
        shutil.copyfile(src, few / src.name)
        truth = next(loop["truth"].glob(f"{src.stem}.*"))
        shutil.copyfile(truth, gt / truth.name)
    assert main(["predict", "--run", str(run), "--input", str(few), "--out", str(tmp_path / "pred")]) == 0
    masks = sorted((tmp_path / "pred").glob("*.png"))  # beside them: summary.json and the resume records
    assert len(masks) == 3
    for m, src in zip(masks, sorted(few.iterdir())):
        assert m.stem == src.stem and _picture_shape(m) == _picture_shape(src)
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(gt),
                 "--out", str(tmp_path / "eval"), "--n-bootstrap", "50"]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["n_cases"] == 3


def test_train_refuses_when_nothing_new(loop: dict, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli("train", "--project", str(loop["proj"]), "--epochs", "1") == 2
    assert "already has a model" in capsys.readouterr().err


@pytest.fixture()
def small(tmp_path: Path) -> dict:
    images, truth = _make_pool(tmp_path, 10)
    proj = tmp_path / "P"
    assert _cli("init", "--images", str(images), "--project", str(proj), *TINY) == 0
    assert _cli("query", "--project", str(proj), "--k", "4") == 0
    labels = tmp_path / "labels"
    cases = _annotate(proj / "rounds" / "00" / "worklist.csv", truth, labels)
    return {"tmp": tmp_path, "proj": proj, "labels": labels, "cases": cases, "truth": truth}


def _counts(proj: Path) -> dict[str, int]:
    with Ledger.open(proj) as led:
        return led.status_counts()


def test_one_bad_label_accepts_none(small: dict, capsys: pytest.CaptureFixture[str]) -> None:
    bad = small["cases"][2]
    for f in small["labels"].glob(f"{bad}.*"):
        f.unlink()
    write_png(np.zeros((20, 24), np.uint8), small["labels"] / f"{bad}.png")  # wrong size
    assert _cli("import", "--project", str(small["proj"]), "--labels", str(small["labels"])) == 2
    err = capsys.readouterr().err
    assert bad in err and "size 24x20" in err and "nothing imported" in err
    assert len(err.strip().splitlines()) == 1
    assert _counts(small["proj"])["annotated"] == 0
    assert not (small["proj"] / "labels").exists() or not any((small["proj"] / "labels").iterdir())


def test_bad_values_and_unknown_or_unqueried_cases_rejected(small: dict, capsys: pytest.CaptureFixture[str]) -> None:
    proj, labels = small["proj"], small["labels"]
    write_png(np.zeros((8, 8), np.uint8), labels / "no_such_case.png")
    assert _cli("import", "--project", str(proj), "--labels", str(labels)) == 2
    err = capsys.readouterr().err
    assert "'no_such_case'" in err and "unknown case" in err
    (labels / "no_such_case.png").unlink()
    with Ledger.open(proj) as led:
        unqueried = led.items("unlabelled")[0]
    src = next(small["truth"].glob(f"{unqueried.case_id}.*"))
    shutil.copyfile(src, labels / src.name)
    assert _cli("import", "--project", str(proj), "--labels", str(labels)) == 2
    err = capsys.readouterr().err
    assert f"'{unqueried.case_id}'" in err and "never queried" in err
    (labels / src.name).unlink()
    # wrong values: a lossless mask with a value 7 in a binary project
    case = small["cases"][0]
    for f in labels.glob(f"{case}.*"):
        shape = _picture_shape(f)
        f.unlink()
    write_png(np.full(shape, 7, np.uint8), labels / f"{case}.png")
    assert _cli("import", "--project", str(proj), "--labels", str(labels)) == 2
    err = capsys.readouterr().err
    assert f"'{case}'" in err and "not allowed" in err
    assert _counts(proj)["annotated"] == 0


def test_import_is_idempotent_and_refuses_silent_relabel(small: dict) -> None:
    proj, labels = small["proj"], small["labels"]
    first = import_labels(proj, labels, annotator="a", progress=False)
    assert sorted(first.annotated) == sorted(small["cases"])
    again = import_labels(proj, labels, annotator="a", progress=False)
    assert again.annotated == [] and sorted(again.unchanged) == sorted(small["cases"])
    case = small["cases"][0]
    for f in labels.glob(f"{case}.*"):
        shape = _picture_shape(f)
        f.unlink()
    write_png(np.zeros(shape, np.uint8), labels / f"{case}.png")
    with pytest.raises(InputError, match="different label"):
        import_labels(proj, labels, progress=False)
    res = import_labels(proj, labels, replace=True, progress=False)
    assert res.reannotated == [case]
    assert len(list((proj / "labels").iterdir())) == len(small["cases"]) + 1  # content-addressed, nothing overwritten


def test_modes_and_strategies_on_a_trained_project(small: dict) -> None:
    proj = Project.open(small["proj"])
    import_labels(proj, small["labels"], progress=False)
    s0 = train_round(proj, epochs=1, progress=False, min_steps=0)
    assert s0["init"]["from"] == "M0"
    # from-scratch starts every round from M0; all-labelled and continual from the previous model
    m0, init = initial_model(proj, "from-scratch", s0)
    fresh = proj.new_model().state_dict()
    assert init["from"] == "M0" and all(torch.equal(v, fresh[k]) for k, v in m0.state_dict().items())
    _, init = initial_model(proj, "all-labelled", s0)
    assert init["from"] == "round_00"
    model = proj.load_model(s0)
    with Ledger.open(proj.root) as led:
        pool, labelled = led.items("unlabelled"), led.items("annotated")
    for name, params in (("acft", {"reduce": "foreground"}), ("entropy", {}), ("margin", {}), ("fg-random", {}),
                         ("coreset", {}), ("least-confidence", {"reduce": "foreground"})):
        scores = score_pool(proj, model, get_strategy(name, **params), pool, labelled=labelled, progress=False)
        assert scores.shape == (len(pool),) and np.isfinite(scores).all(), name
    with pytest.raises(InputError, match="dropout"):
        score_pool(proj, model, get_strategy("bald"), pool, progress=False)
    with pytest.raises(InputError, match="mode"):
        train_round(proj, mode="sideways", progress=False)


def test_classification_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    (tmp_path / "img").mkdir()
    truth = {}
    for i in range(16):
        a = rng.random((32, 32)) * 0.3
        if i % 2:
            a[8:24, 8:24] += 0.6
        write_png(a, tmp_path / "img" / f"c{i:02d}.png")
        truth[f"c{i:02d}"] = ["normal", "lesion"][i % 2]
    proj = init_project(tmp_path / "P", tmp_path / "img", task="classification", classes=["normal", "lesion"], size=32,
                        features=[4, 8], val_fraction=0.25, progress=False)
    for r in range(2):
        q = query_round(proj, "acft", k=6, progress=False)
        labels = tmp_path / f"l{r}.csv"
        labels.write_text("case,label\n" + "".join(f"{c},{truth[c]}\n" for c in q.cases))
        assert len(import_labels(proj, labels, progress=False).annotated) == 6
        s = train_round(proj, epochs=2, progress=False, min_steps=12)
    # --min-steps raises the epochs: at least 12 optimiser steps of batch 8 over the round's training cases
    steps_per_epoch = math.ceil(len(s["trained_on"]) / 8)
    assert s["min_steps"] == 12 and s["epochs"] == max(2, math.ceil(12 / steps_per_epoch)) > 2
    assert s["parent"] == 0 and s["init"]["from"] == "round_00"
    assert s["hard_threshold"] == "misclassified" and set(s["hard"]) <= set(json.loads(
        (proj.model_dir(0) / "summary.json").read_text())["labelled"])
    assert 0.0 <= s["validation"]["accuracy"] <= 1.0
    # without --min-steps a 2D round trains at least DEFAULT_MIN_STEPS_2D steps (not what the tests above use)
    seen: dict[str, Any] = {}

    def _capture(*args: Any, **kwargs: Any) -> None:
        seen.update(kwargs)
        raise RuntimeError("captured")

    monkeypatch.setattr(continual, "fit_model", _capture)
    with pytest.raises(RuntimeError, match="captured"):
        train_round(proj, epochs=2, progress=False, overwrite=True)
    assert seen["min_steps"] == continual.DEFAULT_MIN_STEPS_2D == 1000 and seen["epochs"] == 2
    with pytest.raises(InputError, match="min-steps"):
        train_round(proj, epochs=2, progress=False, overwrite=True, min_steps=-1)
    bad = tmp_path / "bad.csv"
    bad.write_text("case,label\nc00,tumour\n")
    with pytest.raises(InputError, match="c00"):
        import_labels(proj, bad, progress=False)


def test_init_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images, _ = _make_pool(tmp_path, 3)
    proj = tmp_path / "P"
    assert _cli("init", "--images", str(images), "--project", str(proj), *TINY) == 0
    assert _cli("init", "--images", str(images), "--project", str(proj), *TINY) == 2
    assert "already exists" in capsys.readouterr().err
    vol = tmp_path / "vols"
    vol.mkdir()
    (vol / "ct.nii.gz").write_bytes(b"not really")
    assert _cli("init", "--images", str(vol), "--project", str(tmp_path / "Q")) == 2
    assert "ct.nii.gz" in (err := capsys.readouterr().err) and "corrupt" in err  # a 3D pool, read and refused
    (vol / "pic.png").write_bytes(b"x")
    assert _cli("init", "--images", str(vol), "--project", str(tmp_path / "Q")) == 2
    out = capsys.readouterr().out  # every problem listed: the volume among pictures and the unreadable picture
    assert "ct.nii.gz" in out and "3D volume among 1 2D pictures" in out and "pic.png" in out
    assert _cli("init", "--images", str(images), "--project", str(tmp_path / "R"), "--size", "30",
                "--features", "4,8,16") == 2
    assert "multiple of 4" in capsys.readouterr().err


def test_decode_mask_rules() -> None:
    m, p = decode_mask(np.array([[[0, 255], [255, 0]]], np.uint8), 2, lossy=False)
    assert p is None and m.tolist() == [[0, 1], [1, 0]]
    m, p = decode_mask(np.array([[[0, 2], [1, 0]]], np.uint8), 3, lossy=False)
    assert p is None and m.max() == 2
    assert decode_mask(np.array([[[0, 3]]], np.uint8), 3, lossy=False)[1] is not None
    jpeg = np.array([[[3, 250], [230, 12]]], np.uint8)  # ringing around 0/255
    assert decode_mask(jpeg, 2, lossy=True)[0].tolist() == [[0, 1], [1, 0]]
    assert "mask" in decode_mask(np.full((1, 4, 4), 128, np.uint8), 2, lossy=True)[1]
    rgb = np.stack([np.zeros((2, 2)), np.ones((2, 2)), np.zeros((2, 2))]).astype(np.uint8)
    assert "colour" in decode_mask(rgb, 2, lossy=False)[1]


@pytest.mark.parametrize("command", ["init", "query", "import", "train", "status"])
def test_every_command_help_has_an_example(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["active", command, "--help"]) == 0
    out = capsys.readouterr().out
    assert any(line.strip().startswith(f"Example: aemia active {command}") for line in out.splitlines())


def test_group_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["active", "--help"]) == 0
    assert "Example: aemia active" in capsys.readouterr().out
