"""The review app in a real browser (Playwright driving Debian's chromium): the page loads, the worklist is in
priority order, a 2D stroke is saved and survives a reload with the effort in the ledger, a 3D case paints three
views with the overlay (rendered pixels checked), the token is required off loopback, traversal is refused and a
stale tab's save is refused. Screenshots go to docs/figures/review_app_*.png."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from aemia.active.ledger import Ledger, PoolItem
from aemia.serve.app import ServeConfig, create_app

pytestmark = pytest.mark.browser

FIGURES = Path(__file__).resolve().parents[2] / "docs" / "figures"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.skip("no chromium installed (apt-get install -y chromium); browser tests skipped")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def _page(browser, url: str, annotator: str = "dr-test"):
    page = browser.new_page(viewport={"width": 1400, "height": 820})
    page.add_init_script(f"localStorage.setItem('aemia-annotator', '{annotator}')")
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=15000)
    return page


def _opened(page, case: str | None = None) -> str:
    if case is None:
        page.wait_for_function("document.body.dataset.rendered", timeout=15000)
    else:
        page.wait_for_function(f"document.body.dataset.rendered === '{case}'", timeout=15000)
    return page.evaluate("document.body.dataset.rendered")


def _pixels(page, canvas_id: str) -> np.ndarray:
    data = page.evaluate(f"""() => {{ const c = document.getElementById('{canvas_id}');
        return [c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)]; }}""")
    w, h, px = data
    return np.asarray(px, np.uint8).reshape(h, w, 4)


def _stroke(page, canvas_id: str, points: list[tuple[float, float]]) -> None:
    box = page.locator(f"#{canvas_id}").bounding_box()
    xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for p in xy[1:]:
        page.mouse.move(*p, steps=4)
    page.mouse.up()


def test_2d_worklist_edit_save_reload_and_conflict(browser, project_2d: Path, live_server) -> None:
    with live_server(create_app(ServeConfig(project=project_2d))) as srv:
        page = _page(browser, srv.url + "/")
        rows = page.locator("#worklist tbody tr")
        assert rows.count() == 3
        cases = [rows.nth(i).get_attribute("data-case") for i in range(3)]
        positions = [int(rows.nth(i).locator("td").first.inner_text()) for i in range(3)]
        assert positions == [1, 2, 3]
        worklist_csv = (project_2d / "rounds" / "00" / "worklist.csv").read_text().splitlines()[1:]
        assert cases == [line.split(",")[0] for line in worklist_csv]  # the query round's rank order
        case = _opened(page)
        assert case == cases[0]
        # a second tab opens the same case before the first one saves
        other = _page(browser, srv.url + "/", annotator="dr-other")
        _opened(other, case)
        page.fill("#size", "8")
        page.dispatch_event("#size", "input")
        _stroke(page, "view-2d", [(0.1, 0.1), (0.5, 0.15), (0.9, 0.2)])
        painted = _pixels(page, "view-2d")
        page.screenshot(path=str(FIGURES / "review_app_2d.png"))
        page.click("#save")
        page.wait_for_function("(document.body.dataset.saved || '').startsWith(" + repr(case + ":") + ")")
        assert "pixels changed against the prediction" in page.inner_text("#message")
        with Ledger.open(project_2d) as led:
            e = led.efforts(case)[-1]
            assert e.annotator == "dr-test" and e.seconds > 0 and e.changed_pixels > 50
            assert e.total_pixels == 64 * 48 and led.item(case).status == "annotated"
        page.reload()
        page.wait_for_selector("body[data-ready='1']")
        _opened(page, case)
        assert np.array_equal(_pixels(page, "view-2d"), painted)  # the saved mask is what comes back
        assert "in review" in page.locator(f"#worklist tr[data-case='{case}']").inner_text()
        # the stale tab paints and saves: refused with a clear message, ledger unchanged
        _stroke(other, "view-2d", [(0.2, 0.8), (0.8, 0.8)])
        other.click("#save")
        other.wait_for_function("document.body.dataset.saved === 'error:409'")
        assert "NOT SAVED" in other.inner_text("#message") and "dr-test" in other.inner_text("#message")
        with Ledger.open(project_2d) as led:
            assert [x.annotator for x in led.efforts(case)] == ["dr-test"]
        # keyboard: n moves to the next case of the worklist
        page.keyboard.press("n")
        _opened(page, cases[1])
        other.close()
        page.close()


def test_3d_case_shows_three_views_with_overlay(browser, project_3d: Path, live_server) -> None:
    with live_server(create_app(ServeConfig(project=project_3d))) as srv:
        page = _page(browser, srv.url + "/")
        order = [r.get_attribute("data-case") for r in page.locator("#worklist tbody tr").all()]
        assert order == ["ct2", "ct1", "ct0"]  # priority.csv order
        _opened(page, "ct2")
        page.check("#heat")
        page.screenshot(path=str(FIGURES / "review_app_3d.png"))
        with_heat = {v: _pixels(page, f"view-{v}") for v in ("axial", "coronal", "sagittal")}
        page.uncheck("#heat")
        organ = np.asarray(nib.load(project_3d / "predictions" / "ct2.nii.gz").dataobj) > 0  # RAS, identity order
        heat = np.asarray(nib.load(project_3d / "attention" / "ct2_heat.nii.gz").dataobj) > 0
        nx, ny, nz = organ.shape
        middle = {"axial": (slice(None), slice(None), nz // 2), "coronal": (slice(None), ny // 2, slice(None)),
                  "sagittal": (nx // 2, slice(None), slice(None))}
        for view, where in middle.items():
            px = _pixels(page, f"view-{view}")[..., :3].astype(int)
            coloured = (px[..., 0] != px[..., 1]) | (px[..., 1] != px[..., 2])
            assert coloured.sum() == organ[where].sum() > 20, view  # every mask voxel of the slice, nothing else
            assert ((px[..., 0] == px[..., 1]) & (px[..., 0] > 0)).sum() > 50, view  # the CT itself is drawn
            changed = (with_heat[view][..., :3].astype(int) != px).any(-1)
            assert changed.sum() == heat[where].sum() == 25, view  # the heat overlay, toggled off
        page.close()


def test_token_and_traversal_in_the_browser(browser, project_2d: Path, live_server) -> None:
    token = "0123456789abcdef-token"
    with live_server(create_app(ServeConfig(project=project_2d, token=token)), host="0.0.0.0") as srv:
        page = browser.new_page()
        r = page.goto(srv.url + "/")
        assert r.status == 401 and "access token" in page.content()
        page.goto(srv.url + f"/?token={token}")
        page.wait_for_selector("body[data-ready='1']", timeout=15000)
        for path in ("/static/../pyproject.toml", "/static/%2e%2e/%2e%2e/ledger.sqlite",
                     "/api/cases/..%2F..%2Fetc%2Fpasswd/meta"):
            resp = page.request.get(srv.url + path, headers={"X-Aemia-Token": token})
            assert resp.status in (400, 404), path
            assert b"SQLite" not in resp.body() and b"root:" not in resp.body()
        page.close()


@pytest.mark.needs_data("kvasir_seg_256", "totalsegmentator_example_ct")
def test_screenshots_on_real_images(browser, tmp_path: Path, live_server) -> None:
    """README screenshots on real images: three Kvasir-SEG polyps (the AI label is the ground truth dilated by
    4 px, an over-segmenting model) and the TotalSegmentator example CT (upper abdomen, 30 slices) with five organs
    of its segmentation as the AI label; its heat map is a 2-voxel band around the label's edges (a stand-in for the
    attention map `aemia review prioritize` writes)."""
    from PIL import Image as PILImage
    from scipy import ndimage

    from aemia.active.project import PROJECT_FILE, ProjectConfig, init_project, utc_now
    from aemia.active.query import query_round
    from aemia.data.catalog import data_root
    from aemia.utils.io import write_json_atomic

    src = data_root() / "kvasir_seg_256"
    pics = tmp_path / "pics"
    pics.mkdir()
    names = sorted(p.name for p in (src / "images").iterdir())[:3]
    for name in names:
        shutil.copyfile(src / "images" / name, pics / name)
    proj2 = init_project(tmp_path / "polyps", pics, size=64, progress=False)
    query_round(proj2, "random", k=3, progress=False)
    (proj2.root / "predictions").mkdir()
    for name in names:
        gt = np.asarray(PILImage.open(src / "masks" / name).convert("L")) > 127
        ai = ndimage.binary_dilation(gt, iterations=4).astype(np.uint8) * 255
        PILImage.fromarray(ai).save(proj2.root / "predictions" / f"{Path(name).stem}.png")
    with live_server(create_app(ServeConfig(project=proj2.root))) as srv:
        page = _page(browser, srv.url + "/")
        first = _opened(page)
        page.click("#tool-eraser")
        _stroke(page, "view-2d", [(0.2, 0.2), (0.25, 0.6)])
        page.click("#save")
        page.wait_for_function("(document.body.dataset.saved || '').startsWith(" + repr(first + ":") + ")")
        rows = [r.get_attribute("data-case") for r in page.locator("#worklist tbody tr").all()]
        page.keyboard.press("n")
        _opened(page, rows[1])
        _stroke(page, "view-2d", [(0.3, 0.3), (0.35, 0.6)])
        page.screenshot(path=str(FIGURES / "review_app_polyp.png"))
        page.close()

    ct_dir = data_root() / "totalsegmentator_example_ct"
    proj3 = tmp_path / "abdomen"
    (proj3 / "predictions").mkdir(parents=True)
    (proj3 / "attention").mkdir()
    seg = nib.load(ct_dir / "example_seg.nii.gz")
    lab = np.asarray(seg.dataobj).astype(np.uint8)
    lab[lab > 5] = 0
    nib.save(nib.Nifti1Image(lab, seg.affine), proj3 / "predictions" / "example_ct.nii.gz")
    edge = ndimage.binary_dilation(lab > 0, iterations=2) & ~ndimage.binary_erosion(lab > 0, iterations=2)
    nib.save(nib.Nifti1Image((edge * 200).astype(np.uint8), seg.affine), proj3 / "attention" / "example_ct_heat.nii.gz")
    cfg = ProjectConfig(task="segmentation", classes=["background", "spleen", "kidney_right", "kidney_left",
                                                      "gallbladder", "liver"], in_channels=1, created_at=utc_now())
    write_json_atomic(proj3 / PROJECT_FILE, asdict(cfg))
    with Ledger.create(proj3 / "ledger.sqlite", [PoolItem("example_ct", str(ct_dir / "example_ct_sm.nii.gz"))]) as led:
        led.query(["example_ct"], 0)
    with live_server(create_app(ServeConfig(project=proj3))) as srv:
        page = _page(browser, srv.url + "/")
        _opened(page, "example_ct")
        page.screenshot(path=str(FIGURES / "review_app_ct.png"))
        page.close()
