"""A process pool whose workers set up once (load the model) and share the cores, and read-ahead within a worker.

:func:`run_pool` hands chunks of items to ``W`` worker processes (``concurrent.futures.ProcessPoolExecutor`` with
the ``spawn`` context: no fork of a process holding threads or a torch runtime). Each worker calls
``setup(*args)`` once, which returns the callable that processes a chunk, so a model is read once per worker,
not once per case; each worker uses ``torch.set_num_threads(max(1, budget // W))`` threads, ``budget`` being
``OMP_NUM_THREADS`` if set, else this machine's cores divided by the torchrun processes on it. ``W = 1`` runs the
same setup and chunk functions in this process (no pool, so single-process prediction is the same code path).

A worker that dies (out of memory, a segfault) breaks the pool; the items it had not reported are passed to
``on_crash`` with the reason, so they are reported as failed, never silently lost. Errors of one item are the
chunk function's business (it reports them per item and goes on).

:func:`prefetched` runs ``load(item)`` for the next item in a background thread while the caller works on the
current one: reading, resampling and writing overlap with compute (zlib, NumPy and torch release the GIL).
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from aemia.infer.shard import local_processes

T = TypeVar("T")
R = TypeVar("R")

_WORKER: dict[str, Callable[[list[Any]], list[Any]]] = {}
_WORKER_ERROR: dict[str, str] = {}


def thread_budget(workers: int) -> int:
    """Torch threads per worker: ``OMP_NUM_THREADS`` (or the usable cores / local torchrun processes) // W."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        total = int(env)
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        total = max(1, cores // local_processes())
    return max(1, total // max(1, workers))


def _init_worker(setup: Callable[..., Callable[[list[Any]], list[Any]]], args: tuple[Any, ...], threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        _WORKER["run"] = setup(*args)
    except Exception as exc:
        if multiprocessing.parent_process() is None:
            raise
        _WORKER_ERROR["setup"] = f"the worker could not start: {exc}"


def _run_chunk(chunk: list[Any]) -> list[Any]:
    return _WORKER["run"](chunk)


def _run_chunk_in_worker(chunk: list[Any]) -> list[Any]:
    """In a pool worker: an error of the setup reaches the parent as a plain RuntimeError with its message
    (aemia's own errors do not survive pickling)."""
    try:
        return _WORKER["run"](chunk)
    except KeyError:
        raise RuntimeError(_WORKER_ERROR.get("setup", "worker setup failed")) from None


def chunks(items: Sequence[T], workers: int, max_chunk: int = 8) -> list[list[T]]:
    """Consecutive chunks, about four per worker (load balance) and at most ``max_chunk`` items (progress)."""
    size = max(1, min(max_chunk, math.ceil(len(items) / (4 * max(1, workers)))))
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def run_pool(setup: Callable[..., Callable[[list[T]], list[R]]], args: tuple[Any, ...], items: Sequence[T],
             workers: int, on_results: Callable[[list[R]], None],
             on_crash: Callable[[list[T], str], list[R]]) -> None:
    """Process ``items`` in ``workers`` processes (see the module docstring); ``on_results`` gets each chunk's
    results as it finishes, in completion order."""
    if not items:
        return
    parts = chunks(items, workers)
    threads = thread_budget(workers)
    if workers <= 1:
        import torch

        before = torch.get_num_threads()
        try:
            _init_worker(setup, args, threads)
            for chunk in parts:
                on_results(_run_chunk(chunk))
        finally:
            _WORKER.clear()
            torch.set_num_threads(before)
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(setup, args, threads)) as pool:
        futures: dict[Future[list[R]], list[T]] = {pool.submit(_run_chunk_in_worker, c): c for c in parts}
        for fut in as_completed(futures):
            try:
                results = fut.result()
            except BrokenProcessPool as exc:
                results = on_crash(futures[fut], f"worker process died ({exc or 'killed'})")
            except Exception as exc:  # the chunk function itself failed (e.g. setup could not load the model)
                results = on_crash(futures[fut], f"{type(exc).__name__}: {exc}")
            on_results(results)


def prefetched(items: Iterable[T], load: Callable[[T], R], depth: int = 1) -> Iterator[tuple[T, R | Exception]]:
    """``(item, load(item))`` in order, ``load`` of the next ``depth`` items running in a background thread; an
    exception raised by ``load`` is yielded in place of its result."""
    it = iter(items)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="aemia-prefetch") as ex:
        pending: deque[tuple[T, Future[R]]] = deque()

        def fill(target: int) -> None:
            while len(pending) < target:
                nxt = next(it, _END)
                if nxt is _END:
                    return
                pending.append((nxt, ex.submit(load, nxt)))  # type: ignore[arg-type]

        fill(depth + 1)
        while pending:
            item, fut = pending.popleft()
            fill(depth)  # the next items load while the caller works on this one
            try:
                result: R | Exception = fut.result()
            except Exception as exc:
                result = exc
            yield item, result


_END = object()
