"""Review app (``aemia serve``) speed, memory and a scripted reviewer session -> benchmarks/results/review_app.json.

Measured in a real browser (Playwright driving Debian's chromium) against ``aemia serve`` running as its own
process (so its memory is the server's alone):

* **first paint**: from asking for a case to every view drawn with its mask (``window.aemiaFirstPaint`` in the
  page: case metadata, mask download, the slice PNGs decoded and composed). 2D: Kvasir-SEG pictures. 3D: a
  512×512×130 CT (the IRCAD liver CT of ``liver_ct_real``, 512×512×119, padded with air to 130 slices), its
  liver label as the AI label. Reported for the first case (the server starts reading it at start-up), cold (a
  case picked out of order, read from disk on request) and *next case* (the
  annotator spent ``--dwell`` seconds (default 10) on the previous case, during which the server read the next one: the app
  prefetches the next worklist case when a case opens).
* **save round trip**: mask gzip in the browser, upload, validation, label file, ledger transaction.
* **server memory** (VmRSS / VmHWM from /proc) after opening cases of a 200-case 3D project (every case a
  symlink to the same CT file, hashes given, so the project costs no disk).
* **scripted reviewer session**: 20 Kvasir cases; the AI label is the ground truth dilated by a few pixels (an
  over-segmenting model); for each case the script paints a stroke and erases one, saves, and moves on with the
  keyboard; the ledger rows (annotator, seconds, changed pixels) are read back and summarised.

Run: ``python benchmarks/review_app.py [--dwell 3] [--out benchmarks/results/review_app.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from aemia.active.ledger import Ledger, PoolItem, file_sha256  # noqa: E402
from aemia.active.project import PROJECT_FILE, ProjectConfig, init_project, utc_now  # noqa: E402
from aemia.data.catalog import data_root  # noqa: E402
from aemia.utils.io import write_json_atomic  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``aemia serve`` in its own process."""

    def __init__(self, project: Path) -> None:
        self.port = _port()
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "aemia.cli.main", "serve", "--project", str(project),
                                      "--port", str(self.port), "--annotator", "bench"], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if "open http" not in line:
            raise RuntimeError(f"aemia serve did not start: {line}")
        self.url = f"http://127.0.0.1:{self.port}/"

    def memory_mb(self) -> dict[str, float]:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        kb = {k: float(v.split()[0]) for k, v in (ln.split(":", 1) for ln in status.splitlines()) if k in ("VmRSS", "VmHWM")}
        return {"rss_mb": round(kb["VmRSS"] / 1024, 1), "peak_rss_mb": round(kb["VmHWM"] / 1024, 1)}

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def _kvasir_project(work: Path, n: int) -> Path:
    from PIL import Image as PILImage
    from scipy import ndimage

    src = data_root() / "kvasir_seg_256"
    images = work / "kvasir_images"
    images.mkdir()
    names = sorted(p.name for p in (src / "images").iterdir())[:n]
    for name in names:
        os.symlink(src / "images" / name, images / name)
    proj = init_project(work / "kvasir", images, size=64, progress=False)
    from aemia.active.query import query_round

    query_round(proj, "random", k=n, progress=False)
    (proj.root / "predictions").mkdir()
    for name in names:  # the "AI label": the ground truth dilated by 4 px (an over-segmenting model)
        mask_file = next((src / "masks").glob(Path(name).stem + ".*"))
        gt = np.asarray(PILImage.open(mask_file).convert("L")) > 127
        ai = ndimage.binary_dilation(gt, iterations=4).astype(np.uint8)
        PILImage.fromarray(ai * 255).save(proj.root / "predictions" / f"{Path(name).stem}.png")
    return proj.root


def _ct_volume(work: Path) -> tuple[Path, Path]:
    import nibabel as nib

    src = data_root() / "liver_ct_real" / "ircad_17"
    ct, lab = nib.load(src / "ct.nii.gz"), nib.load(src / "label.nii.gz")
    a, m = np.asarray(ct.dataobj), np.asarray(lab.dataobj)
    pad = 130 - a.shape[2]
    a = np.concatenate([a, np.full(a.shape[:2] + (pad,), -1024, a.dtype)], axis=2)
    m = np.concatenate([m, np.zeros(m.shape[:2] + (pad,), m.dtype)], axis=2)
    out_ct, out_lab = work / "ct512.nii.gz", work / "ct512_liver.nii.gz"
    nib.save(nib.Nifti1Image(a.astype(np.int16), ct.affine), out_ct)
    nib.save(nib.Nifti1Image((m > 0).astype(np.uint8), ct.affine), out_lab)
    return out_ct, out_lab


def _ct_project(work: Path, ct: Path, label: Path, n: int, name: str) -> Path:
    proj = work / name
    (proj / "predictions").mkdir(parents=True)
    vols = work / f"{name}_volumes"
    vols.mkdir()
    digest = file_sha256(ct)
    cases = [f"ct{i:03d}" for i in range(n)]
    for c in cases:
        os.symlink(ct, vols / f"{c}.nii.gz")
        os.symlink(label, proj / "predictions" / f"{c}.nii.gz")
    cfg = ProjectConfig(task="segmentation", classes=["background", "liver"], in_channels=1, images=str(vols),
                        created_at=utc_now())
    write_json_atomic(proj / PROJECT_FILE, asdict(cfg))
    with Ledger.create(proj / "ledger.sqlite", [PoolItem(c, str(vols / f"{c}.nii.gz"), digest) for c in cases]) as led:
        led.query(cases, 0, strategy="benchmark")
    return proj


def _open_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1500, "height": 900})
    page.add_init_script("localStorage.setItem('aemia-annotator', 'scripted-reviewer')")
    page.goto(url)
    page.wait_for_function("document.body.dataset.rendered", timeout=120000)
    return page


TIMINGS: list[dict[str, float]] = []


def _next(page, expected: str) -> float:
    page.keyboard.press("n")
    page.wait_for_function(f"document.body.dataset.rendered === '{expected}'", timeout=120000)
    TIMINGS.append({k: round(v, 1) for k, v in page.evaluate("window.aemiaTimings").items()})
    return float(page.evaluate("window.aemiaFirstPaint"))


def _stroke(page, canvas: str, pts: list[tuple[float, float]]) -> None:
    box = page.locator(f"#{canvas}").bounding_box()
    xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in pts]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for p in xy[1:]:
        page.mouse.move(*p, steps=5)
    page.mouse.up()


def _save(page, case: str) -> float:
    page.evaluate("document.body.dataset.saved = ''")
    page.click("#save")
    page.wait_for_function(f"(document.body.dataset.saved || '').startsWith('{case}:')", timeout=120000)
    return float(page.evaluate("window.aemiaLastSave"))


def _stats(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs, float)
    return {"median_ms": round(float(np.median(a)), 1), "min_ms": round(float(a.min()), 1),
            "max_ms": round(float(a.max()), 1), "n": int(a.size)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dwell", type=float, default=10.0, help="seconds spent on a 3D case before moving on")
    ap.add_argument("--session", type=int, default=20, help="cases in the scripted 2D session")
    ap.add_argument("--memory-cases", type=int, default=200, help="cases in the 3D project for the memory figure")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "review_app.json")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="review_app_bench_"))
    result: dict = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
                               f"(shared with other jobs)", "command": "python " + " ".join(sys.argv),
                    "browser": "Debian chromium via Playwright (headless)",
                    "load_average_at_start": [round(x, 1) for x in os.getloadavg()]}
    try:
        kvasir = _kvasir_project(work, args.session)
        ct, lab = _ct_volume(work)
        ct_proj = _ct_project(work, ct, lab, 10, "ct10")
        mem_proj = _ct_project(work, ct, lab, args.memory_cases, "ct200")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                         args=["--no-sandbox"])
            # ---- 2D: scripted session of N cases
            srv = Server(kvasir)
            page = _open_page(browser, srv.url)
            cases = [r.get_attribute("data-case") for r in page.locator("#worklist tbody tr").all()]
            paints, saves = [float(page.evaluate("window.aemiaFirstPaint"))], []
            t_session = time.perf_counter()
            for i, case in enumerate(cases):
                _stroke(page, "view-2d", [(0.2, 0.3 + 0.02 * i), (0.45, 0.35), (0.6, 0.4)])  # add a region
                page.click("#tool-eraser")
                _stroke(page, "view-2d", [(0.5, 0.5), (0.7, 0.55)])  # trim the over-segmentation
                page.click("#tool-brush")
                saves.append(_save(page, case))
                if i + 1 < len(cases):
                    paints.append(_next(page, cases[i + 1]))
            session_s = time.perf_counter() - t_session
            mem_2d = srv.memory_mb()
            page.close()
            srv.close()
            with Ledger.open(kvasir) as led:
                eff = [e for e in led.efforts() if e.action == "saved"]
            result["2d"] = {"data": f"Kvasir-SEG 256 px, {len(cases)} cases, AI label = ground truth dilated 4 px",
                            "first_paint": _stats(paints), "save_round_trip": _stats(saves), "server": mem_2d}
            result["scripted_session"] = {
                "cases": len(cases), "saved_rows": len(eff), "wall_seconds": round(session_s, 1),
                "annotators": sorted({e.annotator for e in eff}),
                "seconds_recorded": {"total": round(sum(e.seconds for e in eff), 2),
                                     "median_per_case": round(float(np.median([e.seconds for e in eff])), 2)},
                "changed_pixels": {"total": int(sum(e.changed_pixels or 0 for e in eff)),
                                   "median_per_case": int(np.median([e.changed_pixels or 0 for e in eff])),
                                   "fraction_of_pixels": round(sum(e.changed_pixels or 0 for e in eff) /
                                                               sum(e.total_pixels or 1 for e in eff), 4)},
                "every_row_has_effort_fields": all(e.annotator and e.started_at and e.saved_at and e.seconds > 0
                                                   and e.changed_pixels is not None for e in eff)}
            # ---- 3D: 512x512x130 CT, cold and next-case first paint, save round trip
            srv = Server(ct_proj)
            page = _open_page(browser, srv.url)
            first = float(page.evaluate("window.aemiaFirstPaint"))  # read since start-up (ServeConfig.warm)
            order = [r.get_attribute("data-case") for r in page.locator("#worklist tbody tr").all()]
            time.sleep(args.dwell)  # let the prefetch of the second case finish: the next open is truly cold
            page.click(f"#worklist tr[data-case='{order[4]}']")  # out of order: nobody has read it yet
            page.wait_for_function(f"document.body.dataset.rendered === '{order[4]}'", timeout=120000)
            cold = [float(page.evaluate("window.aemiaFirstPaint"))]
            nxt, saves3 = [], []
            TIMINGS.clear()
            for i in range(5, 8):
                time.sleep(args.dwell)  # the annotator looks at the case; the server prefetches the next one
                nxt.append(_next(page, order[i]))
            for k in range(3):
                _stroke(page, "view-axial", [(0.3, 0.3 + 0.1 * k), (0.6, 0.5)])
                saves3.append(_save(page, order[7]))
            after_saves = _next(page, order[8])  # the saves took a few seconds: prefetched meanwhile
            nxt_no_dwell = _next(page, order[9])  # straight on: the prefetch started when order[8] opened
            result["3d"] = {"data": "IRCAD liver CT 512x512x119 padded with air to 512x512x130 (int16), liver label "
                                    "as the AI label", "first_paint_first_case_ms": round(first, 1),
                            "first_paint_cold": _stats(cold),
                            "first_paint_next_case": _stats(nxt), "dwell_seconds": args.dwell,
                            "next_case_breakdown_ms": TIMINGS[:3],
                            "first_paint_next_case_after_three_saves_ms": round(after_saves, 1),
                            "first_paint_next_case_without_dwell_ms": round(nxt_no_dwell, 1),
                            "save_round_trip": _stats(saves3), "server": srv.memory_mb(),
                            "target_ms": 1000}
            page.close()
            srv.close()
            # ---- memory with a 200-case 3D project
            srv = Server(mem_proj)
            page = _open_page(browser, srv.url)
            order = [r.get_attribute("data-case") for r in page.locator("#worklist tbody tr").all()]
            for i in range(1, 8):
                _next(page, order[i])
            result["memory_200_case_3d"] = {"cases": len(order), "cases_opened": 8, "server": srv.memory_mb(),
                                            "note": "the server keeps 3 cases in memory (ServeConfig.cache_cases)"}
            page.close()
            srv.close()
            browser.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["load_average_at_end"] = [round(x, 1) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
