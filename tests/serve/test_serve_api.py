"""The review app's HTTP API without a browser: worklist order, views, saves with effort, conflicts, upload
validation, path traversal, the token and the refusal to start on a bad project."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pytest

from aemia.active.ledger import Ledger
from aemia.errors import InputError
from aemia.serve.app import ServeConfig, create_app

CLIENT = {"X-Aemia-Client": "1"}


def _client(project: Path, **kw: object):
    from fastapi.testclient import TestClient

    return TestClient(create_app(ServeConfig(project=project, **kw)), base_url="http://127.0.0.1")


def _mask(client, case: str, which: str = "current") -> tuple[np.ndarray, int]:
    r = client.get(f"/api/cases/{case}/mask", params={"which": which})
    assert r.status_code == 200, r.text
    return np.frombuffer(r.content, np.uint8), int(r.headers["X-Case-Version"])


def _save(client, case: str, mask: np.ndarray, version: int, who: str = "ann", **extra: object):
    params = {"action": "saved", "base_version": version, "annotator": who, "seconds": 7.5,
              "started_at": "2026-12-03T10:00:00Z", "encoding": "gzip", **extra}
    return client.post(f"/api/cases/{case}/save", params=params, content=gzip.compress(mask.tobytes()), headers=CLIENT)


def test_3d_worklist_follows_priority_and_views_render(project_3d: Path) -> None:
    from PIL import Image as PILImage

    c = _client(project_3d)
    order = [w["case"] for w in c.get("/api/worklist").json()]
    assert order == ["ct2", "ct1", "ct0"]  # priority.csv ranks, not case-id order
    meta = c.get("/api/cases/ct2/meta").json()
    assert meta["is3d"] and meta["dims"] == [40, 32, 24] and set(meta["views"]) == {"axial", "coronal", "sagittal"}
    assert meta["has_heat"] and meta["window"] == "abdomen" and meta["next"] == "ct1"
    for view, info in meta["views"].items():
        r = c.get("/api/cases/ct2/slice", params={"view": view, "index": info["slices"] // 2, "window": "liver"})
        pic = PILImage.open(io.BytesIO(r.content))
        assert (pic.width, pic.height) == (info["width"], info["height"])
        assert np.asarray(pic).max() == 229  # 120 HU in the liver window (W 150, L 60): 135/150 * 255
    start, _ = _mask(c, "ct2", "start")
    assert start.sum() > 0  # the AI label is the starting mask
    assert c.get("/api/cases/ct2/slice", params={"view": "axial", "index": 999}).status_code == 400


def test_2d_save_records_effort_and_reload_shows_it(project_2d: Path) -> None:
    c = _client(project_2d)
    work = c.get("/api/worklist").json()
    assert [w["position"] for w in work] == [1, 2, 3] and all(w["state"] == "to annotate" for w in work)
    case = next(w["case"] for w in work if c.get(f"/api/cases/{w['case']}/meta").json()["start_source"].startswith("AI"))
    start, version = _mask(c, case, "start")
    edited = start.copy()
    edited[:10] = 1  # ten rows painted
    r = _save(c, case, edited, version)
    assert r.status_code == 200, r.text
    changed = int(np.count_nonzero(edited != start))
    assert r.json()["changed_pixels"] == changed > 0
    again, new_version = _mask(c, case)
    assert np.array_equal(again, edited) and new_version == r.json()["version"]
    with Ledger.open(project_2d) as led:
        e = led.efforts(case)[-1]
        assert (e.annotator, e.seconds, e.changed_pixels, e.total_pixels) == ("ann", 7.5, changed, 64 * 48)
        assert e.started_at == "2026-12-03T10:00:00Z" and e.saved_at and led.item(case).status == "annotated"
    row = next(w for w in c.get("/api/worklist").json() if w["case"] == case)
    assert (row["state"], row["annotator"], row["seconds"], row["changed_pixels"]) == ("in review", "ann", 7.5, changed)


def test_second_save_from_a_stale_tab_is_refused(project_2d: Path) -> None:
    c = _client(project_2d)
    case = c.get("/api/worklist").json()[0]["case"]
    mask, version = _mask(c, case)
    assert _save(c, case, mask, version, who="tab1").status_code == 200
    stale = mask.copy()
    stale[0] = 1
    r = _save(c, case, stale, version, who="tab2")
    assert r.status_code == 409 and "changed by tab1 after you opened it" in r.json()["detail"]
    now, _ = _mask(c, case)
    assert np.array_equal(now, mask)  # never silently overwritten
    with Ledger.open(project_2d) as led:
        assert [e.annotator for e in led.efforts(case)] == ["tab1"]


@pytest.mark.parametrize("body, problem", [
    (lambda m: gzip.compress(m.tobytes()[:-1]), "values, the case needs"),
    (lambda m: gzip.compress(m.tobytes() + b"\0"), "values, the case needs"),
    (lambda m: gzip.compress(np.full_like(m, 7).tobytes()), "not a class"),
    (lambda m: b"not gzip at all", "not valid gzip"),
])
def test_bad_uploads_change_nothing(project_2d: Path, body, problem: str) -> None:
    c = _client(project_2d)
    case = c.get("/api/worklist").json()[0]["case"]
    mask, version = _mask(c, case)
    labels_before = sorted((project_2d / "labels").glob("*")) if (project_2d / "labels").exists() else []
    r = c.post(f"/api/cases/{case}/save", params={"base_version": version, "annotator": "a", "encoding": "gzip"},
               content=body(mask), headers=CLIENT)
    assert r.status_code == 400 and problem in r.json()["detail"]
    with Ledger.open(project_2d) as led:
        assert led.efforts() == [] and led.item(case).status == "queried"
    assert (sorted((project_2d / "labels").glob("*")) if (project_2d / "labels").exists() else []) == labels_before


def test_upload_over_the_size_limit_is_refused(project_2d: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import aemia.serve.routes as routes

    monkeypatch.setattr(routes, "MAX_UPLOAD_BYTES", 100)
    c = _client(project_2d)
    case = c.get("/api/worklist").json()[0]["case"]
    r = c.post(f"/api/cases/{case}/save", params={"base_version": 0, "annotator": "a", "encoding": "raw"},
               content=b"\0" * 101, headers=CLIENT)
    assert r.status_code == 413


@pytest.mark.parametrize("path", ["/static/../pyproject.toml", "/static/%2e%2e/%2e%2e/pyproject.toml",
                                  "/static/..%2F..%2F..%2Fledger.sqlite", "/static//etc/passwd",
                                  "/api/cases/..%2F..%2Fetc%2Fpasswd/meta", "/api/cases/..%2Fledger.sqlite/mask",
                                  "/api/cases/not-a-case/meta", "/api/cases/%2Fetc%2Fpasswd/slice?view=2d"])
def test_paths_from_the_browser_never_leave_the_project(project_2d: Path, path: str) -> None:
    r = _client(project_2d).get(path)
    assert r.status_code in (400, 404)
    assert b"root:" not in r.content and b"SQLite format" not in r.content and b"[project]" not in r.content


def test_static_files_and_page_are_served(project_2d: Path) -> None:
    c = _client(project_2d)
    assert "aemia review" in c.get("/").text
    assert c.get("/static/app.js").headers["content-type"].startswith("text/javascript") or \
        c.get("/static/app.js").headers["content-type"].startswith("application/javascript")


def test_token_is_required_on_every_request(project_2d: Path) -> None:
    from fastapi.testclient import TestClient

    token = "s3cret-token-0123456789"
    app = create_app(ServeConfig(project=project_2d, token=token))
    c = TestClient(app, base_url="http://192.168.1.20:8765")
    for path in ("/", "/api/worklist", "/static/app.js"):
        assert c.get(path).status_code == 401
    assert c.get("/api/worklist", headers={"X-Aemia-Token": "wrong"}).status_code == 401
    assert c.get("/api/worklist", headers={"X-Aemia-Token": token}).status_code == 200
    page = c.get("/", params={"token": token})
    assert page.status_code == 200 and "aemia_token" in page.headers["set-cookie"]
    assert c.get("/api/worklist").status_code == 200  # the cookie now carries it


def test_without_token_only_loopback_hosts_and_app_writes(project_2d: Path) -> None:
    from fastapi.testclient import TestClient

    app = create_app(ServeConfig(project=project_2d))
    assert TestClient(app, base_url="http://evil.example:8765").get("/api/worklist").status_code == 403
    c = TestClient(app, base_url="http://localhost:8765")
    assert c.get("/api/worklist").status_code == 200
    case = c.get("/api/worklist").json()[0]["case"]
    r = c.post(f"/api/cases/{case}/decision", json={"action": "rejected", "annotator": "a", "base_version": 0})
    assert r.status_code == 403  # no X-Aemia-Client header: not from the app (cross-site form)


def test_reject_and_flag(project_2d: Path) -> None:
    c = _client(project_2d)
    case = c.get("/api/worklist").json()[0]["case"]
    v = _mask(c, case)[1]
    r = c.post(f"/api/cases/{case}/decision", json={"action": "flagged", "annotator": "a", "base_version": v},
               headers=CLIENT)
    assert r.status_code == 400 and "comment" in r.json()["detail"]
    r = c.post(f"/api/cases/{case}/decision", headers=CLIENT,
               json={"action": "flagged", "comment": "motion blur", "annotator": "a", "base_version": v, "seconds": 3})
    assert r.status_code == 200
    row = next(w for w in c.get("/api/worklist").json() if w["case"] == case)
    assert (row["state"], row["comment"]) == ("flagged", "motion blur")


def test_3d_save_writes_nifti_in_the_image_geometry(project_3d: Path) -> None:
    import nibabel as nib

    c = _client(project_3d)
    start, v = _mask(c, "ct0", "start")
    edited = start.copy()
    edited[:100] = 1
    r = _save(c, "ct0", edited, v)
    assert r.status_code == 200 and r.json()["changed_pixels"] == int(np.count_nonzero(edited != start))
    with Ledger.open(project_3d) as led:
        label = led.item("ct0").label_path
    img = nib.load(label)
    assert img.shape == (40, 32, 24) and np.allclose(img.affine, np.diag([1.0, 1.0, 2.0, 1.0]))
    # the browser's flat order is x + nx * (y + ny * z): the first 100 values are x 0..39 of rows y 0..2, z 0
    data = np.asarray(img.dataobj)
    assert data[:, :2, 0].all() and data[:20, 2, 0].all()


def test_3d_label_goes_back_to_the_stored_voxel_order(project_3d: Path) -> None:
    import nibabel as nib

    c = _client(project_3d)
    start, v = _mask(c, "ct1", "start")  # ct1 is stored LPS: the app shows it RAS, the label must be LPS again
    r = _save(c, "ct1", start, v)
    assert r.status_code == 200 and r.json()["changed_pixels"] == 0
    with Ledger.open(project_3d) as led:
        label = nib.load(led.item("ct1").label_path)
    pred = nib.load(project_3d / "predictions" / "ct1.nii.gz")
    assert np.array_equal(np.asarray(label.dataobj), np.asarray(pred.dataobj)) and np.allclose(label.affine, pred.affine)
    again, _ = _mask(c, "ct1")
    assert np.array_equal(again, start)


def test_refuses_missing_or_corrupt_project(tmp_path: Path, project_2d: Path) -> None:
    from aemia.cli.main import main

    with pytest.raises(InputError, match="not an active-learning project"):
        create_app(ServeConfig(project=tmp_path))
    (project_2d / "ledger.sqlite").write_bytes(b"garbage" * 100)
    with pytest.raises(InputError, match="not a ledger database"):
        create_app(ServeConfig(project=project_2d))
    assert main(["serve", "--project", str(project_2d), "--port", "0"]) == 2
    assert main(["serve", "--project", str(project_2d), "--host", "0.0.0.0"]) == 2  # no --token


def test_effort_report_in_status(project_2d: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from aemia.active.status import project_status

    c = _client(project_2d)
    case = c.get("/api/worklist").json()[0]["case"]
    mask, v = _mask(c, case)
    mask = mask.copy()
    mask[:5] = 1
    _save(c, case, mask, v, seconds=42.0)
    st = project_status(project_2d, plot=False)
    eff = st["effort"]
    assert eff["rounds"][0]["labels"] == 1 and eff["rounds"][0]["seconds"] == 42.0
    assert eff["cases"][0]["case"] == case and eff["cases"][0]["changed_pixels"] > 0
    assert c.get("/api/effort").json()["total_seconds"] == 42.0
    from aemia.cli.main import main

    assert main(["active", "status", "--project", str(project_2d)]) == 0
    out = capsys.readouterr().out
    assert "human effort per round" in out and "human effort per case" in out and case in out


def test_model_prediction_is_the_starting_mask_when_there_is_no_ai_label(project_2d: Path, tmp_path: Path) -> None:
    """A project with a trained model: a case without an AI label starts from the model's prediction, cached
    under P/predictions/model_round_NN/ with its uncertainty (entropy) heat map."""
    from PIL import Image as PILImage

    from aemia.active.continual import train_round
    from aemia.active.importing import import_labels
    from aemia.active.query import query_round

    labels = tmp_path / "labels"
    labels.mkdir()
    with Ledger.open(project_2d) as led:
        queried = [it for it in led.items("queried")]
    for it in queried:
        img = np.asarray(PILImage.open(it.image_path))
        PILImage.fromarray(((img > 128) * 255).astype(np.uint8)).save(labels / f"{it.case_id}.png")
    import_labels(project_2d, labels, progress=False)
    train_round(project_2d, epochs=1, progress=False, min_steps=0)
    case = query_round(project_2d, "random", k=1, progress=False).cases[0]
    c = _client(project_2d)
    meta = c.get(f"/api/cases/{case}/meta").json()
    assert meta["start_source"] == "prediction of model_round_00" and meta["has_heat"]
    cached = project_2d / "predictions" / "model_round_00"
    assert (cached / f"{case}.png").is_file() and (cached / f"{case}_heat.png").is_file()
    start, _ = _mask(c, case, "start")
    assert start.size == 64 * 48 and start.max() <= 1
    heat = np.frombuffer(c.get(f"/api/cases/{case}/heat").content, np.uint8)
    assert heat.size == 64 * 48 and heat.max() > 0  # an untrained-ish model is uncertain somewhere


def _diff(index: list[int], values: list[int], count: int | None = None) -> bytes:
    n = len(index) if count is None else count
    return gzip.compress(np.array([n], "<u4").tobytes() + np.array(index, "<u4").tobytes() +
                         np.array(values, np.uint8).tobytes())


def test_diff_uploads_apply_to_the_mask_the_browser_loaded(project_3d: Path) -> None:
    c = _client(project_3d)
    start, v = _mask(c, "ct0", "start")
    post = lambda body, version: c.post("/api/cases/ct0/save", content=body, headers=CLIENT,  # noqa: E731
                                        params={"base_version": version, "annotator": "a", "encoding": "diff"})
    first = post(_diff([0, 5, 40 * 32 * 24 - 1], [1, 1, 1]), v)
    assert first.status_code == 200 and first.json()["changed_pixels"] == 3
    second = post(_diff([5], [0]), first.json()["version"])  # applied to the first save's mask, not the start
    assert second.status_code == 200 and second.json()["changed_pixels"] == 2
    now, _ = _mask(c, "ct0")
    expected = start.copy()
    expected[[0, 40 * 32 * 24 - 1]] = 1
    assert np.array_equal(now, expected)
    version = second.json()["version"]
    for body, problem in [(_diff([40 * 32 * 24], [1]), "outside the mask"), (_diff([1], [9]), "not a class"),
                          (_diff([1, 2], [1, 1], count=3), "does not hold"), (b"junk", "not valid gzip")]:
        r = post(body, version)
        assert r.status_code == 400 and problem in r.json()["detail"]
    assert post(_diff([1], [1]), v).status_code == 409  # made against an old version
