"""RunFolder: where a run's files are, config.yaml round trip, errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from aemia.errors import InputError
from aemia.runs import RunConfig, RunFolder, check_method, class_names, labelled_subset
from aemia.train.trainer import TrainConfig


def test_paths_follow_the_run_contract(tmp_path: Path) -> None:
    run = RunFolder(tmp_path / "r")
    assert run.path == tmp_path / "r" and RunFolder(str(tmp_path / "r")) == run
    names = {run.config_path: "config.yaml", run.splits_path: "splits.json", run.log_path: "log.jsonl",
             run.metrics_path: "metrics.json", run.per_case_path: "per_case.csv", run.report_path: "report.html",
             run.checkpoints: "checkpoints", run.figures: "figures"}
    for path, name in names.items():
        assert path == run.path / name
    assert run.checkpoint() == run.path / "checkpoints" / "best"
    assert run.checkpoint("last") == run.path / "checkpoints" / "last"
    assert not run.is_run() and not run.has_checkpoint("last")


def test_config_round_trip_keeps_every_field(tmp_path: Path) -> None:
    cfg = RunConfig(dataset="kvasir", model="unet", features=[4, 8], label_fraction=0.25, size=64,
                    labels={3: "liver"}, semi="mean_teacher", train=TrainConfig(epochs=3, lr=5e-4, seed=7),
                    postprocess={"kind": "liver_tumor", "tumor_threshold": 0.3, "tumor_dice_by_threshold": {"0.3": 0.5}})
    run = RunFolder(tmp_path / "r")
    written = run.save_config(cfg)
    assert written == run.config_path and run.is_run()
    back = run.config()
    assert back == cfg and back.semi == "mean-teacher" and back.labels == {3: "liver"}
    assert yaml.safe_load(run.config_path.read_text())["train"]["seed"] == 7
    assert not list(run.path.glob("*.tmp*"))  # atomic write leaves no temporary file


def test_a_plain_mapping_is_written_as_is(tmp_path: Path) -> None:
    """Active rounds record a subset of RunConfig plus their own keys; the reader ignores the extra keys."""
    data = {"dataset": "active-project:p", "model": "unet", "features": [4, 8], "size": 32, "round": 2,
            "classes": ["a", "b"], "train": {"epochs": 1, "amp": "none"}}
    run = RunFolder(tmp_path / "r")
    run.save_config(data)
    assert yaml.safe_load(run.config_path.read_text()) == data
    cfg = run.config()
    assert cfg.dataset == "active-project:p" and cfg.size == 32 and cfg.train.epochs == 1


def test_missing_or_invalid_config_is_an_input_error_naming_the_file(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    with pytest.raises(InputError, match="config.yaml missing") as exc:
        run.config()
    assert exc.value.path == str(run.config_path)
    run.config_path.write_text("dataset: kvasir\nlabel_fraction: 2.0\n")
    with pytest.raises(InputError, match="invalid run config"):
        run.config()
    run.config_path.write_text("dataset: [unclosed\n")
    with pytest.raises(InputError, match="invalid run config"):
        run.config()


def test_records_and_log(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    assert run.log() == []
    with pytest.raises(InputError, match="not written"):
        run.metrics()
    run.save_metrics({"dice": 0.5})
    run.save_splits({"labelled": ["a"]})
    assert run.metrics() == {"dice": 0.5} and run.splits() == {"labelled": ["a"]}
    run.log_path.write_text(json.dumps({"epoch": 0}) + "\n\n" + json.dumps({"epoch": 1}) + "\n")
    assert [e["epoch"] for e in run.log()] == [0, 1]
    run.metrics_path.write_text("{")
    with pytest.raises(InputError, match="invalid JSON"):
        run.metrics()


def test_labelled_subset_is_nested_and_seeded() -> None:
    ids = [f"c{i}" for i in range(40)]
    small, large = labelled_subset(ids, 0.1, 3), labelled_subset(ids, 0.5, 3)
    assert len(small) == 4 and len(large) == 20 and set(small) <= set(large)
    assert labelled_subset(ids, 0.1, 3) == small and labelled_subset(ids, 0.1, 4) != small
    assert labelled_subset(ids, 1e-6, 0) and len(labelled_subset(ids, 1.0, 0)) == 40


def test_run_config_vocabulary() -> None:
    assert check_method("Pseudo_Label") == "pseudo-label"
    with pytest.raises(ValueError, match="semi-supervised"):
        RunConfig(dataset="x", semi="co-training")
    with pytest.raises(ValueError, match="preset"):
        RunConfig(dataset="x", preset="huge")

    class _Ds:
        labels = {0: "background", 1: "a", 2: "b"}

    assert class_names(RunConfig(dataset="x"), _Ds()) == _Ds.labels  # type: ignore[arg-type]
    assert class_names(RunConfig(dataset="x", labels={5: "kidney"}), _Ds()) == {0: "background", 1: "kidney"}  # type: ignore[arg-type]
    assert class_names(RunConfig(dataset="x", task="liver-tumor"), _Ds())[2] == "liver tumor"  # type: ignore[arg-type]


def test_subset_seed_fixes_the_labelled_cases_while_the_training_seed_varies() -> None:
    from aemia.runs import RunConfig
    from aemia.train.trainer import TrainConfig

    a = RunConfig(dataset="kvasir", label_fraction=0.1, subset_seed=0, train=TrainConfig(seed=3))
    b = RunConfig(dataset="kvasir", label_fraction=0.1, train=TrainConfig(seed=3))
    assert a.labelled_seed() == 0 and b.labelled_seed() == 3
    ids = [f"c{i}" for i in range(50)]
    assert labelled_subset(ids, 0.2, a.labelled_seed()) == labelled_subset(ids, 0.2, 0)
    assert RunConfig.from_dict(a.to_dict()).subset_seed == 0


def test_a_mapping_is_written_as_plain_yaml_and_read_back(tmp_path: Path) -> None:
    """SSAC, MB-DCNN and pretraining runs save a dataclass's ``asdict``: the bytes are ``yaml.safe_dump`` of its
    JSON-plain form in field order (tuples as lists), exactly what those methods wrote before RunFolder did it."""
    data = {"method": "MB-DCNN", "size": 64, "widths": (8, 16), "lr": 1e-4, "positive_class": None,
            "train": {"epochs": 2, "amp": "none"}}
    run = RunFolder(tmp_path / "m")
    run.save_config(data)
    plain = {**data, "widths": [8, 16]}
    assert run.config_path.read_text() == yaml.safe_dump(plain, sort_keys=False)
    assert run.config_dict() == plain


def test_config_dict_reads_a_legacy_config_json_and_names_the_file_on_errors(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    with pytest.raises(InputError, match="config.yaml missing"):
        run.config_dict()
    (tmp_path / "config.json").write_text('{"dataset": "busi", "seed": 3}')
    assert run.config_dict() == {"dataset": "busi", "seed": 3}
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="invalid run config") as exc:
        run.config_dict()
    assert exc.value.path == str(tmp_path / "config.json")
    run.config_path.write_text("- a list\n")  # config.yaml wins over config.json
    with pytest.raises(InputError, match="not a mapping"):
        run.config_dict()


def test_run_folder_and_trainer_agree_on_names(tmp_path: Path) -> None:
    from aemia.train.trainer import CHECKPOINTS_DIR, LOG_FILE

    run = RunFolder(tmp_path)
    assert run.checkpoints == tmp_path / CHECKPOINTS_DIR and run.log_path == tmp_path / LOG_FILE
