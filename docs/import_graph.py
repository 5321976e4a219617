"""Draw the package import graph of ``src/aemia`` to ``docs/figures/import_graph.png``.

Layers run left to right, bottom layer first, as declared in ``tests/test_architecture.py`` (whose scanner this
script uses, so the picture is what the test checks). An arrow means "imports"; a red arrow imports a higher
layer (such an import is what closes a cycle; today only the violations listed in ``ALLOWED_FOR_NOW``), a pink
package is part of a cycle. Red labels count the module imports behind an arrow.

    python docs/import_graph.py [--out docs/figures/import_graph.png]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import test_architecture as arch  # noqa: E402


def draw(out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = arch.import_edges()
    counts = Counter((arch.component(a), arch.component(b)) for a, b in edges)
    scc_of = {c: i for i, scc in enumerate(arch.cycles(arch.component_graph(edges))) for c in scc}
    in_cycle = set(scc_of)
    used = {c for pair in counts for c in pair}
    pos: dict[str, tuple[float, float]] = {}
    for x, layer in enumerate(arch.LAYERS):
        names = [n for n in layer if n in used]
        for k, name in enumerate(names):
            pos[name] = (float(x), (k - (len(names) - 1) / 2) * 1.6 + (0.5 if x % 2 else -0.5))

    fig, ax = plt.subplots(figsize=(17, 6), dpi=110)
    for (a, b), n in sorted(counts.items()):
        la, lb = arch.layer_of(a), arch.layer_of(b)
        bad = lb > la or (la == lb and a in scc_of and scc_of.get(b) == scc_of[a])
        (xa, ya), (xb, yb) = pos[a], pos[b]
        color, lw, alpha = ("tab:red", 1.8, 0.95) if bad else ("0.55", 0.7, 0.2 if a == "cli" else 0.6)
        ax.annotate("", xy=(xb, yb), xytext=(xa, ya),
                    arrowprops=dict(arrowstyle="-|>", color=color, lw=lw, shrinkA=22, shrinkB=22, alpha=alpha,
                                    connectionstyle=f"arc3,rad={-0.25 if bad else 0.12}"))
        if bad:
            ax.text((xa + xb) / 2, (ya + yb) / 2 + 0.15, str(n), color="tab:red", fontsize=8, ha="center")
    for name, (x, y) in pos.items():
        ax.text(x, y, name, ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="round,pad=0.4", fc="mistyrose" if name in in_cycle else "white",
                          ec="tab:red" if name in in_cycle else "0.3"))
    for x in range(int(max(x for x, _ in pos.values()))):
        ax.axvline(x + 0.5, color="0.92", lw=0.8, zorder=0)
    ax.set_xlim(-0.6, max(x for x, _ in pos.values()) + 0.6)
    ys = [y for _, y in pos.values()]
    ax.set_ylim(min(ys) - 1.2, max(ys) + 1.2)
    ax.axis("off")
    n_bad = sum(1 for a, b in edges if arch.layer_of(arch.component(b)) > arch.layer_of(arch.component(a)))
    ax.set_title(f"aemia package imports, lower layers left (arrow: imports). Red: an import of a higher layer or "
                 f"a cycle ({n_bad} upward module imports, {len(in_cycle)} packages in cycles)", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "figures" / "import_graph.png")
    print(draw(parser.parse_args().out))


if __name__ == "__main__":
    main()
