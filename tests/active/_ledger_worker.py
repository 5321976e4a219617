"""Subprocess driver for the ledger crash / concurrency tests (not a test module).

usage: python _ledger_worker.py DB OP [--labels DIR] [--cases a,b] [--round R] [--many] [--reverse]
                                   [--crash-step STEP --crash-nth N] [--timeout S] [--annotator NAME]

OP: create | query | annotate. With --crash-step the process SIGKILLs itself at the Nth time the ledger
reaches STEP (see Ledger._crash_hook), i.e. between two steps of a write. Prints one JSON line per result.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from aemia.active.ledger import Ledger, PoolItem
from aemia.errors import InputError


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("db")
    ap.add_argument("op", choices=["create", "query", "annotate"])
    ap.add_argument("--labels")
    ap.add_argument("--cases", default="")
    ap.add_argument("--round", type=int, default=0)
    ap.add_argument("--many", action="store_true")
    ap.add_argument("--reverse", action="store_true")
    ap.add_argument("--crash-step")
    ap.add_argument("--crash-nth", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--annotator", default="worker")
    ap.add_argument("--start-at", type=float, default=0.0, help="wait until this time.time() before working")
    a = ap.parse_args()
    time.sleep(max(0.0, a.start_at - time.time()))  # a start barrier so two workers really overlap

    seen = {"n": 0}

    def hook(step: str) -> None:
        if step == a.crash_step:
            seen["n"] += 1
            if seen["n"] == a.crash_nth:
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)

    cases = [c for c in a.cases.split(",") if c]
    if a.op == "create":
        # Ledger.create is a classmethod: install the hook through a subclass so it runs during create.
        class Hooked(Ledger):
            def __init__(self, *args: object) -> None:
                super().__init__(*args)  # type: ignore[arg-type]
                self._crash_hook = hook if a.crash_step else None

        Hooked.create(a.db, [PoolItem(c, f"/images/{c}.png", f"hash-{c}") for c in cases]).close()
        print(json.dumps({"created": len(cases)}), flush=True)
        return

    ledger = Ledger.open(a.db, timeout=a.timeout)
    if a.crash_step:
        ledger._crash_hook = hook
    if a.op == "query":
        print(json.dumps({"queried": ledger.query(cases, a.round, strategy="test")}), flush=True)
        return
    files = sorted(Path(a.labels).glob("*.txt"), reverse=a.reverse)
    if a.many:
        results = ledger.annotate_many([(f.stem, f, a.annotator) for f in files])
        for r in results:
            print(json.dumps({"case": r.case_id, "action": r.action}), flush=True)
        return
    for f in files:
        try:
            r = ledger.annotate(f.stem, f, a.annotator)
            print(json.dumps({"case": r.case_id, "action": r.action}), flush=True)
        except InputError as e:
            print(json.dumps({"case": f.stem, "error": str(e)}), flush=True)


if __name__ == "__main__":
    main()
