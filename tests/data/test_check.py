"""`aemia data check` and check_path on synthetic MSD folders with bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aemia.cli.main import main
from aemia.data.check import check_path
from aemia.data.image import Image
from aemia.data.io import read_image, write_nifti


def _run(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, str]:
    rc = main(["data", "check", str(path)])
    out = capsys.readouterr()
    return rc, out.out


def test_valid_msd_is_ok(make_msd, capsys) -> None:
    root = make_msd(3)
    assert check_path(root) == []
    rc, out = _run(capsys, root)
    assert rc == 0 and "OK: 3 cases checked" in out


def _corrupt(root: Path) -> dict[str, str]:
    """Break one file per problem type; return {file name: expected words}."""
    tr, lb = root / "imagesTr", root / "labelsTr"
    # truncated image
    data = (tr / "case_000_0000.nii.gz").read_bytes()
    (tr / "case_000_0000.nii.gz").write_bytes(data[: len(data) // 2])
    # label value not in dataset.json
    lab = read_image(lb / "case_001.nii.gz")
    arr = lab.array[0].copy()
    arr[0, 0, 0] = 9
    write_nifti(arr, lb / "case_001.nii.gz", like=lab)
    # image/label shape mismatch
    write_nifti(np.ones((8, 9, 4), np.uint8), lb / "case_002.nii.gz")
    # spacing mismatch
    lab3 = read_image(lb / "case_003.nii.gz")
    aff = lab3.affine.copy()
    aff[2, 2] = 2.5
    write_nifti(lab3.array[0], lb / "case_003.nii.gz", like=Image(lab3.array, (1.0, 1.5, 2.5), aff))
    # NaN voxels
    img4 = read_image(tr / "case_004_0000.nii.gz")
    a4 = img4.array.copy()
    a4[0, 1, 1, 1] = np.nan
    write_nifti(img4.with_array(a4), tr / "case_004_0000.nii.gz")
    # empty mask
    lab5 = read_image(lb / "case_005.nii.gz")
    write_nifti(np.zeros(lab5.spatial_shape, np.uint8), lb / "case_005.nii.gz", like=lab5)
    # non-image file
    (tr / "notes.txt").write_text("not an image")
    return {
        "case_000_0000.nii.gz": "truncated or corrupt",
        "case_001.nii.gz": "label values [9] not in dataset.json",
        "case_002.nii.gz": "shape",
        "case_003.nii.gz": "spacing",
        "case_004_0000.nii.gz": "NaN",
        "case_005.nii.gz": "empty",
        "notes.txt": "not a recognised image format",
    }


def test_every_bad_input_reported_with_file_name(make_msd, capsys, snapshot) -> None:
    root = make_msd(6)
    expected = _corrupt(root)
    before = snapshot(root)
    problems = check_path(root)
    for name, words in expected.items():
        hits = [p for p in problems if Path(p.path).name == name and words in p.problem]
        assert hits, f"{name}: expected a problem with '{words}', got {[str(p) for p in problems]}"
    assert len(problems) == len(expected)  # nothing reported twice, nothing spurious
    rc, out = _run(capsys, root)
    assert rc == 2
    lines = out.strip().splitlines()
    assert len(lines) == len(expected)
    for name in expected:
        assert any(name in line for line in lines)
    assert all(line.startswith(str(root)) for line in lines)  # "PATH: problem"
    assert snapshot(root) == before  # check wrote nothing


def test_empty_folder_and_single_files(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    rc, out = _run(capsys, tmp_path / "empty")
    assert rc == 2 and "empty" in out and "folder is empty" in out
    (tmp_path / "data.bin").write_bytes(b"\x00\x01")
    rc, out = _run(capsys, tmp_path / "data.bin")
    assert rc == 2 and "data.bin: not a recognised image format" in out
    good = write_nifti(np.ones((4, 4, 4), np.float32), tmp_path / "good.nii.gz")
    rc, out = _run(capsys, good)
    assert rc == 0 and "OK: 1 cases checked" in out
    assert main(["data", "check", str(tmp_path / "missing")]) == 2


def test_plain_folder_of_images(tmp_path: Path, capsys) -> None:
    from PIL import Image as PILImage

    folder = tmp_path / "pics"
    folder.mkdir()
    PILImage.fromarray(np.zeros((4, 4), np.uint8)).save(folder / "a.png")
    (folder / "b.jpg").write_bytes(b"junk")
    (folder / "labels.csv").write_text("a,0\n")  # metadata is allowed next to images
    problems = check_path(folder)
    assert [(Path(p.path).name, "cannot read" in p.problem) for p in problems] == [("b.jpg", True)]


def test_msd_missing_files_and_bad_json(make_msd) -> None:
    root = make_msd(2)
    (root / "labelsTr" / "case_001.nii.gz").unlink()
    problems = check_path(root)
    assert any(Path(p.path).name == "case_001.nii.gz" and "not found" in p.problem for p in problems)
    (root / "dataset.json").write_text("{not json")
    problems = check_path(root)
    assert len(problems) == 1 and "dataset.json" in problems[0].path and "JSON" in problems[0].problem


@pytest.mark.needs_data
def test_data_list_and_help(data_dir: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("AEMIA_DATA", str(data_dir))
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "kvasir" in out and "798" in out and "4708" in out and "CC BY-NC-SA" in out
    for cmd in (["data", "--help"], ["data", "list", "--help"], ["data", "check", "--help"]):
        assert main(cmd) == 0
        assert "Example: aemia data" in capsys.readouterr().out


@pytest.mark.needs_data
def test_real_example_ct_is_ok(data_dir: Path) -> None:
    assert check_path(data_dir / "totalsegmentator_example_ct" / "example_ct.nii.gz") == []
    assert check_path(data_dir / "totalsegmentator_example_ct" / "example_ct_dicom") == []


@pytest.mark.needs_data
def test_medmnist_npz_checked(data_dir: Path, tmp_path: Path) -> None:
    assert check_path(data_dir / "breastmnist") == []
    np.savez(tmp_path / "bad.npz", train_images=np.zeros((3, 28, 28), np.uint8), train_labels=np.zeros(2))
    problems = check_path(tmp_path / "bad.npz")
    assert len(problems) == 1 and problems[0].path.endswith("bad.npz") and "do not match" in problems[0].problem
