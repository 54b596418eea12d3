"""Many machines through Dask: :func:`run` spreads :func:`lrpfast.run` over a
``dask.distributed`` cluster (``pip install "lrpfast[dask]"``).

::

    from dask.distributed import Client
    import lrpfast.dask
    client = Client("tcp://scheduler:8786")
    res = lrpfast.dask.run(client, "deploy.prototxt", "/data/val", weights="net.caffemodel",
                           rules=["cmp_alpha2_flat"], out="/shared/val.zarr")

How it works: the client checks the arguments, creates (or resumes) the Zarr store exactly as
:func:`lrpfast.run` does, and submits one task per chunk of ``batch`` images that has no
completion marker yet. A task decodes its images, runs the engine and writes its chunk and then
its marker to the store; no two tasks write one chunk, so the workers need no locks, only a
file system they all see (the store path, the images and, unless ``ship_model=True``, the
model files must have the same path on every worker). Each worker process loads the Net once,
on its first task, and keeps it for every later task of the same model (a per-process cache
keyed by the model files, net options and thread count). A task that fails, or whose worker
dies, is retried on another worker (``retries`` times for an exception raised in the task;
Dask's ``distributed.scheduler.allowed-failures`` times for a worker lost while running it);
a retried task rewrites its whole chunk, so the store is the same. The table is assembled by
the client from the markers at the end. Interrupted (client stopped, cluster lost), the same
call resumes: only chunks without a marker are submitted.

The store and the table are identical to :func:`lrpfast.run`'s for the same arguments (the
same chunks go through the same engine calls).
"""
from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import threading
import time
from typing import Optional

from .pipeline import (Engine, Plan, Progress, RunResult, Store, chunk_relevance, chunk_rows,
                       compute_chunk, decode, deliver, image_hook, load_net, make_plan,
                       write_table)

__all__ = ["run", "tune_worker_malloc", "worker_net"]

_NETS: dict = {}           # per worker process: Plan.engine_key() -> Net
_LOCK = threading.Lock()
#: Nets loaded by this process (tests check that a worker loads its Net once).
LOADS = [0]


def _shipped(plan: Plan, payload) -> Plan:
    """The plan with its model files written once to this machine's temporary folder (when the
    client shipped them: ``ship_model=True``)."""
    if not payload:
        return plan
    import dataclasses
    paths: list = []
    for name, data in payload:
        if data is None:
            paths.append(None)
            continue
        d = os.path.join(tempfile.gettempdir(), "lrpfast-models",
                         hashlib.sha1(data).hexdigest()[:16])
        p = os.path.join(d, name)
        if not os.path.isfile(p):
            from ._files import atomic_path
            with atomic_path(p) as tmp, open(tmp, "wb") as f:
                f.write(data)
        paths.append(p)
    return dataclasses.replace(plan, model=paths[0], weights=paths[1])


def tune_worker_malloc() -> bool:
    """Let glibc's malloc reuse the engine's large buffers in this worker process.

    A Dask nanny starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (Dask's default
    ``distributed.nanny.pre-spawn-environ``). Setting that threshold switches off glibc's dynamic
    mmap threshold, so every buffer over 128 KiB (activations, im2col columns, decoded images)
    is a fresh mmap whose pages fault in on each use: measured here, CaffeNet chunk tasks took
    1.5x as long (decoding 2x). This raises the mmap threshold to 32 MiB and the trim threshold
    to 128 MiB, so such buffers are reused from the heap; a worker may then hold up to about
    128 MiB of freed memory more. Set ``LRPFAST_DASK_MALLOC=keep`` in the workers' environment
    to leave malloc as Dask set it. Returns whether the settings were applied (glibc only)."""
    if os.environ.get("LRPFAST_DASK_MALLOC", "").lower() == "keep":
        return False
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3   # glibc's malloc.h
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and \
            bool(libc.mallopt(M_TRIM_THRESHOLD, 128 << 20))
    except (OSError, AttributeError):   # not glibc: nothing to tune
        return False


def worker_net(plan: Plan):
    """This process's Net for ``plan`` (loaded on first use, then kept; the first load also
    runs :func:`tune_worker_malloc`)."""
    key = plan.engine_key()
    with _LOCK:
        net = _NETS.get(key)
        if net is None:
            if not _NETS:
                tune_worker_malloc()
            net = load_net(plan)
            _NETS[key] = net
            LOADS[0] += 1
    return net


def _chunk_task(index: int, plan: Plan, payload=None, on_image=None, hook=None) -> dict:
    """One chunk on a worker: decode, compute, write the chunk and its marker."""
    if hook is not None:
        hook(index)
    t0, c0 = time.perf_counter(), time.process_time()
    plan = _shipped(plan, payload)
    net = worker_net(plan)
    engine = Engine(net, plan.rules, plan.classes, plan.top)
    a, b = plan.chunk(index)
    decoded = [decode(plan, plan.items[i], engine.input_shape) for i in range(a, b)]
    t1 = time.perf_counter()
    res = compute_chunk(engine, index, decoded)
    t2 = time.perf_counter()
    rows = chunk_rows(plan, engine, res)
    Store(plan.out or "").write_chunk(plan, index, chunk_relevance(plan, engine, res), rows)
    errors = deliver(res, on_image)
    return {"index": index, "images": b - a, "errors": errors, "pid": os.getpid(),
            "loads": LOADS[0], "decode_s": t1 - t0, "engine_s": t2 - t1,
            "seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def _preload(plan: Plan, payload=None) -> int:
    """Load this worker's Net for ``plan`` now (``client.run``); returns the process id."""
    worker_net(_shipped(plan, payload))
    return os.getpid()


def _input_shape(plan: Plan):
    """The net's input shape, read on the client (a prototxt without its weights)."""
    from .net import Net
    net = Net(plan.model, **plan.net_options)
    return Engine(net, plan.rules, plan.classes, plan.top).input_shape


def run(client, model, images, *, out, weights=None, rules=None, classes=None, table=None,
        batch: int = 16, preprocessing=None, dtype: str = "float32", top=None, boxes=None,
        class_names=None, resume: bool = True, progress=None, threads: Optional[int] = None,
        retries: int = 3, ship_model: bool = False, preload: bool = True, prefix=None,
        net_options=None, on_image=None, on_error=None, pictures=None,
        picture_formats: str = "png,overlay", _hook=None) -> RunResult:
    """:func:`lrpfast.run` on a Dask cluster, with its arguments (see there) and these.

    The decoding runs inside each task; a worker with 2 threads runs two tasks at once (one
    decodes while the other computes, on one shared Net).

    Parameters
    ----------
    client : dask.distributed.Client
    out : str
        The Zarr store (required: the workers write their chunks there), on a file system
        every worker sees.
    threads : int, optional
        Engine threads per worker process (``lrpfast.set_num_threads``; None: lrpfast's default,
        all the CPUs the process may use; give each process its share of the machine).
    retries : int
        Retries of a chunk whose task raised.
    preload : bool
        Load the Net on every worker before the first task (a worker that joins later loads it
        with its first task).
    ship_model : bool
        Send the model files to the workers (written once per worker machine into its temporary
        folder) instead of reading them from the same path there.
    on_image : callable, optional
        As for :func:`lrpfast.run`, but called in the task, on the worker: it must pickle, and
        write where the client can see it (so must ``pictures``).

    Returns
    -------
    RunResult
        ``engine_s``, ``task_s`` and ``task_cpu_s``: the engine time, the task time and the
        worker processes' CPU time during the tasks, summed over the tasks.
    """
    from dask.distributed import as_completed
    if out is None:
        raise ValueError("lrpfast.dask.run needs out= (a Zarr store every worker can write)")
    t0 = time.perf_counter()
    plan = make_plan(model, images, weights=weights, rules=rules, classes=classes, top=top,
                     preprocessing=preprocessing, batch=batch, out=os.path.abspath(out),
                     dtype=dtype, boxes=boxes, class_names=class_names, threads=threads,
                     prefix=prefix, net_options=net_options)
    on_image = image_hook(plan, on_image, pictures, picture_formats)
    shape = _input_shape(plan)
    store = Store.open(plan, shape, resume)
    todo = sorted(set(range(plan.n_chunks)) - store.done())
    payload: Optional[list] = None
    if ship_model:
        payload = []
        for p in (plan.model, plan.weights):
            if p is None:
                payload.append((None, None))
            else:
                with open(p, "rb") as f:
                    payload.append((os.path.basename(p), f.read()))
    bar = Progress(sum(plan.chunk(i)[1] - plan.chunk(i)[0] for i in todo), progress)
    on_error = on_error or (lambda label, msg: print(f"lrpfast: error: {label}: {msg}",
                                                     file=sys.stderr))
    failed = computed = 0
    engine_s = task_s = cpu_s = 0.0
    if todo and preload:
        client.run(_preload, plan, payload)
    if todo:
        [plan_f] = client.scatter([plan], broadcast=True, hash=False)
        pay_f = None
        if payload:
            [pay_f] = client.scatter([payload], broadcast=True, hash=False)
        futures = client.map(_chunk_task, todo, plan=plan_f, payload=pay_f, on_image=on_image,
                             hook=_hook, retries=retries, pure=False)
        try:
            for fut in as_completed(futures):
                r = fut.result()
                for label, msg in r["errors"]:
                    on_error(label, msg)
                failed += len(r["errors"])
                computed += r["images"]
                engine_s += r["engine_s"]
                task_s += r["seconds"]
                cpu_s += r["cpu_s"]
                bar.step(r["images"])
        finally:
            client.cancel(futures)
    bar.close()
    rows = store.rows(plan.n_chunks)
    write_table(os.fspath(table) if table else os.path.join(store.path, "table.csv"), rows)
    return RunResult(rows, computed, failed, time.perf_counter() - t0, engine_s, 0.0,
                     plan.out, len(todo), task_s, cpu_s)
