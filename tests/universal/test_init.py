"""``--init universal``: a shipped universal model starts a U-Net through the one resolver, printing what loaded;
a missing shipped model and a network that does not fit are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import aemia.runs.shipped as shipped
from aemia.cli.main import main
from aemia.errors import CheckpointError, InputError
from aemia.nets import create_model
from aemia.nets.checkpoint import save_checkpoint
from aemia.runs.init import init_weights, resolve_init
from aemia.universal.model import TEXT_DIM, UniversalModel
from aemia.universal.training import load_universal

CPU = [16, 16, 32, 64, 128]


@pytest.fixture()
def fake_shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A shipped ``universal2d`` folder in a temporary SHIPPED_DIR (model.safetensors, config.json, card)."""
    torch.manual_seed(0)
    model = UniversalModel(2, 3, ["polyp", "skin lesion"], features=CPU, text_embeddings=torch.randn(2, TEXT_DIM),
                           heads={"ph2": 3})
    folder = tmp_path / "shipped" / "universal2d"
    save_checkpoint(model, folder / "model")
    (folder / "model.json").rename(folder / "config.json")
    (folder / "MODEL_CARD.md").write_text("# test\n")
    monkeypatch.setattr(shipped, "SHIPPED_DIR", tmp_path / "shipped")
    return folder


def test_init_universal_loads_the_backbone_and_reports(fake_shipped: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert resolve_init("universal") == fake_shipped / "model"
    unet = create_model("unet", 2, 3, 2, features=CPU)
    report = init_weights(unet, "universal")
    out = capsys.readouterr().out
    assert "universal model" in out and "loaded:" in out and "newly initialised" in out
    assert set(report.missing) == {"head.weight", "head.bias"} and not report.mismatched
    source = load_universal("universal")
    torch.testing.assert_close(unet.state_dict()["encoder.0.0.weight"], source.state_dict()["backbone.encoder.0.0.weight"])
    assert json.loads((fake_shipped / "config.json").read_text())["model"]["name"] == "universal"


def test_a_network_that_does_not_fit_is_refused(fake_shipped: Path) -> None:
    with pytest.raises(CheckpointError, match="--model unet"):
        init_weights(create_model("unetpp", 2, 3, 2, features=CPU), "universal")
    with pytest.raises(CheckpointError, match="refusing"):
        init_weights(create_model("unet", 2, 3, 2, features=[32, 32, 64, 128, 256]), "universal")


def test_missing_shipped_model_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(shipped, "SHIPPED_DIR", tmp_path / "none")
    with pytest.raises(InputError, match="no shipped model 'universal2d'"):
        resolve_init("universal")
    monkeypatch.chdir(tmp_path)
    rc = main(["train", "--dataset", "kvasir", "--init", "universal2d-no-kvasir", "--run", str(tmp_path / "r")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and "no shipped model 'universal2d-no-kvasir'" in err[0]
    rc = main(["universal", "predict", "--run", "universal", "--input", str(tmp_path), "--classes", "polyp",
               "--out", str(tmp_path / "o")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and "no shipped model" in err[0]
    assert not (tmp_path / "r").exists() and not (tmp_path / "o").exists()


def test_universal_predict_writes_masks(fake_shipped: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from aemia.data.io import write_png

    pics = tmp_path / "pics"
    write_png(torch.rand(3, 40, 48).numpy(), pics / "a.png")
    rc = main(["universal", "predict", "--run", "universal", "--input", str(pics), "--classes", "polyp,skin lesion",
               "--out", str(tmp_path / "o"), "--size", "32"])
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a_polyp.png", "a_skin_lesion.png"]
    rc = main(["universal", "predict", "--run", "universal", "--input", str(pics), "--classes", "liver",
               "--out", str(tmp_path / "o2")])
    assert rc == 2 and "its classes: polyp, skin lesion" in capsys.readouterr().err


def test_active_init_universal_starts_m0_from_the_shipped_backbone(fake_shipped: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from aemia.data.io import write_png

    pics = tmp_path / "pics"
    for i in range(3):
        write_png(torch.rand(3, 32, 32).numpy(), pics / f"p{i}.png")
    rc = main(["active", "init", "--images", str(pics), "--project", str(tmp_path / "proj"), "--size", "32",
               "--model", "unet", "--features", "16,16,32,64,128", "--init", "universal"])
    assert rc == 0, capsys.readouterr().err
    from aemia.active.project import Project

    proj = Project.open(tmp_path / "proj")
    assert proj.config.pretrained == str(fake_shipped / "model")
    model = proj.new_model()
    assert "universal model" in capsys.readouterr().out
    torch.testing.assert_close(model.state_dict()["encoder.0.0.weight"],
                               load_universal("universal").state_dict()["backbone.encoder.0.0.weight"])


@pytest.mark.parametrize("name", ["universal", "universal2d-no-kvasir"])
def test_shipped_universal_models_start_a_cpu_unet(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    folder = resolve_init(name).parent
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 25 * 2**20
    report = init_weights(create_model("unet", 2, 3, 2, features=CPU), name)
    assert set(report.missing) == {"head.weight", "head.bias"}
    assert "licence" in (folder / "MODEL_CARD.md").read_text().lower()
    classes = load_universal(name).class_names
    assert ("polyp" in classes) == (name == "universal")  # the leave-out variant never saw a polyp
