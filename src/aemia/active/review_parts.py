"""The parts of a sharded ``aemia review prioritize``: what each part computed, kept until the merge.

Part ``K`` of ``N`` (:class:`aemia.infer.shard.Shard`: ``--num-parts/--part-id``, or the torchrun rank) computes
the attention of its cases, moves their maps into ``OUT/attention/`` and records the numbers in
``OUT/.review-parts/part-K-of-N.json`` and the displayed slices (for ``priority.png``) in ``part-K-of-N.npz``
(plain arrays, no pickle). The JSON is written last, so its presence means the part finished; a restarted part
whose record matches (same cases, organs and configuration) is skipped. The merge (the only part, torchrun rank 0,
or ``--merge``) reads every part, ranks all cases and writes the tables, then removes this folder.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from aemia.active.attention import CaseAttention, OrganAttention
from aemia.errors import InputError
from aemia.infer.shard import Shard
from aemia.utils.io import atomic_path, write_json_atomic

PARTS = ".review-parts"
_ARRAYS = ("flags", "background")


def _stem(out: Path, shard: Shard) -> Path:
    return Path(out) / PARTS / f"part-{shard.part_id}-of-{shard.num_parts}"


def part_done(out: Path, shard: Shard, key: dict[str, Any]) -> bool:
    """Whether this part already finished with the same ``key`` (cases, organs, configuration)."""
    stem = _stem(out, shard)
    try:
        record = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return record.get("key") == key and stem.with_suffix(".npz").is_file()


def save_part(out: Path, shard: Shard, key: dict[str, Any], results: dict[str, CaseAttention],
              slices: dict[str, dict[str, Any]]) -> None:
    """Record a finished part: arrays first, the JSON (its completion mark) last; both atomic."""
    stem = _stem(out, shard)
    arrays = {f"{case}/{name}": np.asarray(kept[name]) for case, kept in slices.items() for name in _ARRAYS}
    with atomic_path(stem.with_suffix(".npz"), suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)
    cases = {case: {"organs": {n: asdict(o) for n, o in r.organs.items()}, "voxel_volume_mm3": r.voxel_volume_mm3,
                    "slice": {k: v for k, v in slices[case].items() if k not in _ARRAYS}}
             for case, r in results.items()}
    write_json_atomic(stem.with_suffix(".json"), {"key": key, "cases": cases})


def load_parts(out: Path, num_parts: int, keys: list[dict[str, Any]]
               ) -> tuple[dict[str, CaseAttention], dict[str, dict[str, Any]]]:
    """Every part's numbers and slices; ``keys[k]`` is part k's expected key. Raises InputError naming the parts
    that have not finished."""
    results: dict[str, CaseAttention] = {}
    slices: dict[str, dict[str, Any]] = {}
    missing = [k for k in range(num_parts) if not part_done(out, Shard(k, num_parts), keys[k])]
    if missing:
        raise InputError(Path(out) / PARTS, f"{len(missing)} of {num_parts} part(s) not finished (part id(s) "
                                            f"{', '.join(map(str, missing[:10]))}); run them, then merge again")
    empty = np.zeros((0,), dtype=np.uint8)
    for k in range(num_parts):
        stem = _stem(out, Shard(k, num_parts))
        record = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
        with np.load(stem.with_suffix(".npz"), allow_pickle=False) as arrays:
            for case, item in record["cases"].items():
                results[case] = CaseAttention({n: OrganAttention(**o) for n, o in item["organs"].items()},
                                              empty, empty, empty, float(item["voxel_volume_mm3"]), empty)
                slices[case] = {**item["slice"], **{name: arrays[f"{case}/{name}"] for name in _ARRAYS}}
    return results, slices


def parts_in(out: Path) -> int:
    """``N`` of the part records in ``OUT`` (for ``--merge`` without ``--num-parts``)."""
    found = {int(m.group(1)) for f in (Path(out) / PARTS).glob("part-*-of-*.json")
             if (m := re.fullmatch(r"part-\d+-of-(\d+)\.json", f.name))}
    if len(found) != 1:
        raise InputError(Path(out) / PARTS, "no part records to merge" if not found else
                         f"part records of different splits ({sorted(found)} parts); give --num-parts")
    return found.pop()


def clear_parts(out: Path) -> None:
    shutil.rmtree(Path(out) / PARTS, ignore_errors=True)
