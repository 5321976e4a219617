"""Benchmark: why does Models Genesis pretraining not help Kvasir fine-tuning here? (issue 3, the "why")

``ssl_label_efficiency`` finds Genesis- and TransVW-pretrained UNet++ below scratch on Kvasir-SEG. This script
tests the obvious explanations one at a time, each as one fine-tuning run at 10% of the labels (80 images, the
``ssl_label_efficiency`` recipe: 128 px, Adam 2e-3 cosine, batch 8, 60 epochs = 600 steps), seed 1 (the seed
with the largest gap there, 0.617 vs 0.481):

* ``scratch``                 random initialisation;
* ``genesis``                 all pretrained weights (the benchmark's arm; pretraining Adam 2e-3 cosine, 12 epochs
                              on the 798 training images, labels unused);
* ``genesis_encoder_only``    only the encoder X^{i,0} transferred (is the restoration decoder the problem?);
* ``genesis_renormalised``    every conv filter followed by batch norm rescaled to the random initialisation's
                              mean filter norm, running statistics scaled to match: the same function, but the
                              effective learning rate of scratch (pretraining grows filter norms ~1.5x, which slows
                              scale-invariant layers under Adam);
* ``genesis_shrink_perturb``  every such filter replaced by the unit mix 0.5·pretrained + 0.5·random (directions),
                              at the random filter norm (Ash & Adams, "On warm-starting neural network training",
                              NeurIPS 2020); batch-norm statistics reset;
* ``genesis_paper_sgd``       pretraining with the paper's optimiser (SGD lr 1.0, momentum 0.9, StepLR(40, 0.5));
* ``genesis_lr5e-4``, ``genesis_lr8e-3``  the fine-tuning learning rate 4x lower / higher.

For every run: test Dice (100 test images, case-bootstrap 95% CI), the last epoch's training loss (deep
supervision, sum of 4 heads' Dice+CE), the validation-Dice curve, and the effective rank of each encoder level's
features (``aemia.pretrain.diagnostics``) of the fine-tuned model; plus the ranks at random initialisation and
after pretraining. One seed per variant: differences under ~5 points are within seed noise (the main benchmark's
seed spread is 3-5 points).

Runs live in ``benchmarks/work/ssl_transfer_ablations/`` and finished ones are reused (about 10 minutes per
fine-tuning and 8 per pretraining on 2 cores).

    .venv/bin/python benchmarks/ssl_transfer_ablations.py            # all variants, resumable
    .venv/bin/python benchmarks/ssl_transfer_ablations.py --only scratch,genesis
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from aemia.nets import create_model, load_weights  # noqa: E402
from aemia.pretrain.diagnostics import encoder_feature_ranks  # noqa: E402
from aemia.pretrain.restore import PretrainConfig, pretrain  # noqa: E402
from aemia.recipes.run import train_run  # noqa: E402
from aemia.runs import PRESETS, RunConfig  # noqa: E402
from aemia.train.trainer import TrainConfig  # noqa: E402
from aemia.utils.io import write_json_atomic  # noqa: E402
from provenance import provenance  # noqa: E402

FRACTION, SEED, SIZE = 0.1, 1, 128
ADAM = dict(epochs=12, batch_size=8, lr=2e-3, optimizer="adam", schedule="cosine", deep_supervision=False)
PAPER_SGD = dict(epochs=12, batch_size=8, lr=1.0, optimizer="sgd", momentum=0.9, nesterov=False, schedule="step",
                 step_epochs=40, step_gamma=0.5, deep_supervision=False)


def fresh_model() -> torch.nn.Module:
    torch.manual_seed(SEED)
    return create_model("unetpp", 2, 3, 2, features=PRESETS["cpu"], deep_supervision=True)


def pretrained(work: Path, name: str, recipe: dict) -> Path:
    out = work / name
    if not (out / "metrics.json").exists():
        cfg = PretrainConfig(data="kvasir", dims=2, method="genesis", preset="cpu", size=[SIZE, SIZE],
                             train=TrainConfig(**recipe))
        print(f"== pretraining {name}", flush=True)
        pretrain(cfg, out, resume=(out / "checkpoints" / "last.safetensors").exists())
    return out


def _state(src: Path) -> dict[str, torch.Tensor]:
    s = load_file(str(src / "checkpoints" / "best.safetensors"))
    return {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in s.items()}


def _write(work: Path, name: str, src: Path, state: dict[str, torch.Tensor]) -> str:
    dst = work / name
    dst.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(dst / "best.safetensors"))
    shutil.copy(src / "checkpoints" / "best.json", dst / "best.json")
    return str(dst / "best")


def _bn_convs(state: dict[str, torch.Tensor]) -> list[tuple[str, str]]:
    """(conv weight key, its batch norm prefix) for every conv directly followed by batch norm."""
    out = []
    for k, v in state.items():
        m = re.match(r"(.*)\.(\d+)\.weight$", k)
        if m and v.ndim >= 3 and f"{m.group(1)}.{int(m.group(2)) + 1}.running_var" in state:
            out.append((k, f"{m.group(1)}.{int(m.group(2)) + 1}"))
    return out


def encoder_only(work: Path, src: Path) -> str:
    s = _state(src)
    return _write(work, "ck_encoder_only", src, {k: v for k, v in s.items()
                                                   if k.startswith("nodes.") and k.split(".")[1].endswith("_0")})


def renormalised(work: Path, src: Path) -> str:
    s, fresh = _state(src), fresh_model().state_dict()
    out = dict(s)
    for k, bn in _bn_convs(s):
        scale = fresh[k].flatten(1).norm(dim=1).mean() / s[k].flatten(1).norm(dim=1).clamp(min=1e-12)
        out[k] = s[k] * scale.view(-1, *([1] * (s[k].ndim - 1)))
        out[f"{bn}.running_mean"] = s[f"{bn}.running_mean"] * scale
        out[f"{bn}.running_var"] = s[f"{bn}.running_var"] * scale ** 2
    return _write(work, "ck_renormalised", src, out)


def shrink_perturb(work: Path, src: Path, lam: float = 0.5) -> str:
    s, fresh = _state(src), fresh_model().state_dict()
    out = dict(s)

    def unit(a: torch.Tensor) -> torch.Tensor:
        return a / a.norm(dim=1, keepdim=True).clamp(min=1e-12)

    for k, bn in _bn_convs(s):
        f, p = fresh[k].flatten(1), s[k].flatten(1)
        out[k] = (unit(lam * unit(p) + (1 - lam) * unit(f)) * f.norm(dim=1, keepdim=True)).view_as(s[k])
        out[f"{bn}.running_mean"] = torch.zeros_like(s[f"{bn}.running_mean"])
        out[f"{bn}.running_var"] = torch.ones_like(s[f"{bn}.running_var"])
    return _write(work, "ck_shrink_perturb", src, out)


def finetune(work: Path, name: str, init: str | None, lr: float = 2e-3) -> Path:
    run = work / name
    if not (run / "metrics.json").exists():
        cfg = RunConfig(dataset="kvasir", model="unetpp", preset="cpu", label_fraction=FRACTION, size=SIZE, init=init,
                        train=TrainConfig(epochs=60, batch_size=8, lr=lr, seed=SEED))
        print(f"== {name}", flush=True)
        train_run(cfg, run, resume=(run / "checkpoints" / "last.safetensors").exists())
    return run


def variants(work: Path) -> dict[str, Callable[[], Path]]:
    g = lambda: pretrained(work, "pre_genesis", ADAM)  # noqa: E731
    return {
        "scratch": lambda: finetune(work, "ft_scratch_s1", None),
        "genesis": lambda: finetune(work, "ft_genesis_s1", str(g())),
        "genesis_encoder_only": lambda: finetune(work, "ft_genesis_enc_s1", encoder_only(work, g())),
        "genesis_renormalised": lambda: finetune(work, "ft_genesis_renorm_s1", renormalised(work, g())),
        "genesis_shrink_perturb": lambda: finetune(work, "ft_genesis_sp05_s1", shrink_perturb(work, g())),
        "genesis_paper_sgd": lambda: finetune(work, "ft_genesis_sgd_s1",
                                              str(pretrained(work, "pre_genesis_sgd", PAPER_SGD))),
        "genesis_lr5e-4": lambda: finetune(work, "ft_genesis_lr5e-4_s1", str(g()), lr=5e-4),
        "genesis_lr8e-3": lambda: finetune(work, "ft_genesis_lr8e-3_s1", str(g()), lr=8e-3),
    }


def summary(run: Path, x: Any) -> dict[str, Any]:
    m = json.loads((run / "metrics.json").read_text())
    log = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines() if ln.strip()]
    model = fresh_model()
    load_weights(model, run / "checkpoints" / "best", strict=True)
    d = m["segmentation"]["polyp"]["dice"]
    return {"dice": d["mean"], "ci": d["ci"], "n_test": d["n"], "best_epoch": m.get("run", {}).get("best_epoch"),
            "final_train_loss": round(log[-1]["train_loss"], 4),
            "val_dice_curve": [round(e["val_dice"], 4) for e in log],
            "effective_rank_finetuned": encoder_feature_ranks(model, x)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated variants (default: all)")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "ssl_transfer_ablations")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ssl_transfer_ablations.json")
    args = ap.parse_args()
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    from aemia.data.catalog import get_dataset

    x = get_dataset("kvasir").arrays("val", SIZE)[0][:32]
    table = variants(args.work)
    chosen = [v for v in args.only.split(",") if v] or list(table)
    unknown = [v for v in chosen if v not in table]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {', '.join(table)}")
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    results = previous.get("variants", {})
    for v in chosen:
        results[v] = summary(table[v](), x)
    ranks = {"random_init": encoder_feature_ranks(fresh_model(), x)}
    for name in ("pre_genesis", "pre_genesis_sgd"):
        if (args.work / name / "metrics.json").exists():
            m = fresh_model()
            load_weights(m, args.work / name / "checkpoints" / "best", strict=False)
            ranks[f"{name}_pretrained"] = encoder_feature_ranks(m, x)
    scratch = results.get("scratch", {}).get("dice")
    out = {
        "benchmark": "ssl_transfer_ablations",
        **provenance(),
        "recipe": {"fraction": FRACTION, "seed": SEED, "size": SIZE, "fine_tuning": "Adam 2e-3 cosine, batch 8, 60 "
                   "epochs (600 steps), deep supervision", "pretraining": ADAM, "paper_sgd_pretraining": PAPER_SGD,
                   "encoder_levels_channels": PRESETS["cpu"]},
        "variants": results,
        "minus_scratch": {v: round(r["dice"] - scratch, 4) for v, r in results.items() if scratch is not None},
        "effective_rank": ranks,
    }
    write_json_atomic(args.out, out)
    for v, r in results.items():
        print(f"{v:24s} dice {r['dice']:.3f} ({r['ci'][0]:.3f}-{r['ci'][1]:.3f})  train loss {r['final_train_loss']:.3f}  "
              f"ranks {r['effective_rank_finetuned']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
