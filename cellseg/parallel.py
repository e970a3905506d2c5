"""Chunk-parallel array work with dask: local threads or a dask.distributed cluster.

Stages whose work is array work over the whole scan (the image and label
pyramids, measuring) express it as dask tasks of one chunk each. Inside
:func:`dask_scheduler` they run on ``threads`` local threads, or on the
dask.distributed scheduler at ``address`` (``--scheduler`` on the command line,
``scheduler`` in the workflow config). Memory is bounded by the chunks in
flight: about one chunk per thread or worker.

Chunk work that holds Python's GIL (measuring cells one by one) can run on
processes of their own instead (:func:`process_map`, forked from a server
that imports the work's modules once), where the program allows it
(:func:`allow_processes`).

``distributed`` is optional: it is imported only when an address is given.
The workers must see the same file system as the process that submits the
work (paths are passed, not pixels).
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import ctypes
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import dask
import dask.threaded

from cellseg.errors import ConfigError

CONNECT_TIMEOUT_S = 30
# The distributed client of the innermost dask_scheduler block, if any.
_CLIENT: contextvars.ContextVar[Any] = contextvars.ContextVar("cellseg_dask_client", default=None)
# Local threads of the innermost dask_scheduler block.
_THREADS: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "cellseg_dask_threads", default=None
)


@contextlib.contextmanager
def dask_scheduler(threads: int | None = None, address: str | None = None) -> Iterator[None]:
    """Run the dask computations started inside the block with this scheduler.

    Parameters
    ----------
    threads : int, optional
        Local worker threads (default: the CPUs this process may use).
    address : str, optional
        Address of a running dask.distributed scheduler, e.g.
        ``tcp://10.0.0.5:8786``; the computations then run on its workers.

    Raises
    ------
    ConfigError
        If `address` is given but ``distributed`` is not installed or the
        scheduler cannot be reached.
    """
    threads_token = _THREADS.set(threads)
    try:
        if not address:
            with dask.config.set(_local_config(threads or available_cpus())):
                yield
            return
        client = connect(address)
        token = _CLIENT.set(client)
        try:
            with dask.config.set(scheduler=client.get):
                yield
        finally:
            _CLIENT.reset(token)
            client.close()
    finally:
        _THREADS.reset(threads_token)


@contextlib.contextmanager
def local_threads() -> Iterator[None]:
    """Run the dask computations inside the block on this process's threads.

    For work that reads the input scan: its dask graph holds open file
    handles, which cannot be sent to dask.distributed workers. Outside a
    :func:`dask_scheduler` block with an address this changes nothing.
    """
    if _CLIENT.get() is None:
        yield
        return
    token = _CLIENT.set(None)
    try:
        workers = _THREADS.get() or available_cpus()
        with dask.config.set(_local_config(workers)):
            yield
    finally:
        _CLIENT.reset(token)


def _local_config(workers: int) -> dict[str, Any]:
    """dask settings for work on `workers` local threads.

    The scheduler is given as its function, not its name, and the rechunk
    method is named: otherwise dask imports dask.distributed, when it is
    installed, to look for a client (some 10 MB in every process).
    """
    return {"scheduler": dask.threaded.get, "num_workers": workers, "array.rechunk.method": "tasks"}


def connect(address: str) -> Any:
    """A ``distributed.Client`` connected to the scheduler at `address`.

    Parameters
    ----------
    address : str
        Address of a running dask.distributed scheduler, e.g. ``tcp://10.0.0.5:8786``.

    Returns
    -------
    distributed.Client
        A client that is not made the default one.

    Raises
    ------
    ConfigError
        If ``distributed`` is not installed or the scheduler cannot be reached.
    """
    try:
        # optional dependency, needed only with a scheduler address
        from distributed import Client
    except ImportError:
        raise ConfigError(
            f"--scheduler {address} needs dask.distributed, which is not installed; "
            "install it (pip install distributed) or leave --scheduler out to use local threads."
        ) from None
    try:
        return Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ConfigError(
            f"cannot reach the dask scheduler at {address!r} ({type(exc).__name__}: {exc}); "
            "check the address (e.g. tcp://HOST:8786) and that the scheduler runs, "
            "or leave --scheduler out to use local threads."
        ) from None


# This process's thread pools by size (see thread_pool), and a mark on their threads.
_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()
_IN_POOL = threading.local()


def _mark_pool_thread() -> None:
    _IN_POOL.active = True


def thread_pool(workers: int) -> ThreadPoolExecutor:
    """This process's pool of `workers` threads, started on first use and then reused.

    Every stage run in one process (``cellseg segment`` runs them all) works on
    the same threads. Fresh threads for every batch of tiles or pass over the
    chunks would each get a malloc arena of their own, whose freed memory the
    process keeps: memory would grow with the number of batches.
    """
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = ThreadPoolExecutor(
                max_workers=workers,
                thread_name_prefix=f"cellseg-{workers}",
                initializer=_mark_pool_thread,
            )
            _POOLS[workers] = pool
        return pool


def in_pool_thread() -> bool:
    """Whether this thread is a worker of a :func:`thread_pool` (whose work must not wait on it)."""
    return getattr(_IN_POOL, "active", False)


#: Blocks of at least this many bytes get a mapping of their own (see :func:`keep_heap_flat`).
MMAP_THRESHOLD_BYTES = 1 << 20


def keep_heap_flat(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Have the C allocator give freed blocks of `threshold` bytes or more back at once.

    glibc raises its mmap threshold each time a large block is freed (up to
    32 MiB). After that, blocks of a chunk's size come from the heap, and each
    thread's arena keeps them once freed. A stage that reads chunk after chunk
    then holds far more than the chunks in flight. Fixing the threshold (which
    also stops that adjustment) keeps such stages flat. The command line calls
    this once at start.

    Returns
    -------
    bool
        Whether the threshold was set (False off glibc).
    """
    done = _set_mmap_threshold(threshold)
    if done:
        _HEAP["threshold"] = int(threshold)
    return done


def _set_mmap_threshold(threshold: int) -> bool:
    """glibc's ``mallopt(M_MMAP_THRESHOLD, threshold)``; False off glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_mmap_threshold = -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, int(threshold)))


#: The mmap threshold while a network runs (see :func:`roomy_heap`).
ROOMY_THRESHOLD_BYTES = 64 << 20
# The threshold keep_heap_flat fixed (None: glibc's own), and roomy_heap blocks open.
_HEAP: dict[str, Any] = {"threshold": None, "open": 0}
_HEAP_LOCK = threading.Lock()


@contextlib.contextmanager
def roomy_heap(threshold: int = ROOMY_THRESHOLD_BYTES) -> Iterator[None]:
    """Within the block, blocks below `threshold` bytes come from the heap and are reused.

    A network's forward pass allocates and frees tensors of many MiB, layer
    after layer. With the small threshold :func:`keep_heap_flat` fixes, each
    of them is a fresh mapping whose every page is faulted in and zeroed:
    a stack's forward pass took about 1.5 times as long. On leaving, the
    threshold is set back and the heaps' free pages are given back
    (:func:`trim_heap`), so memory stays flat from batch to batch. Where
    :func:`keep_heap_flat` was not called, nothing changes.
    """
    with _HEAP_LOCK:
        fixed = _HEAP["threshold"]
        raise_it = fixed is not None and fixed < threshold and _HEAP["open"] == 0
        raise_it = raise_it and _set_mmap_threshold(threshold)
        _HEAP["open"] += 1
    try:
        yield
    finally:
        with _HEAP_LOCK:
            _HEAP["open"] -= 1
            if raise_it:
                _set_mmap_threshold(fixed)
                trim_heap()


def trim_heap() -> None:
    """Give the free pages of the C allocator's heaps back to the system (glibc; else nothing).

    For a stage that is done with a large working set made of many small
    blocks, before it starts on something else.
    """
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def available_cpus() -> int:
    """CPUs this process was given: the least of what its affinity, cgroup and SLURM allow.

    The affinity mask (``taskset``, SLURM's CPU binding), the cgroup's CPU quota
    (a container's or a SLURM job's ``cpu.max``, rounded up) and
    ``SLURM_CPUS_PER_TASK`` each bound the count; at least 1.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    if quota is not None:
        count = min(count, quota)
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm.isdigit() and int(slurm) > 0:
        count = min(count, int(slurm))
    return max(1, count)


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup") -> int | None:
    """CPUs of this process's cgroup quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), rounded up.

    None when there is no quota or no cgroup to read.
    """
    own = ""
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                hierarchy, _, rest = line.strip().partition(":")
                controllers, _, where = rest.partition(":")
                if hierarchy == "0" or "cpu" in controllers.split(","):
                    own = where
                    break
    except OSError:
        pass
    limits = []
    for folder in {os.path.join(root, own.lstrip("/")), root}:
        quota, period = _read_words(os.path.join(folder, "cpu.max"))[:2] or (None, None)
        if quota is None:
            v1 = os.path.join(root, "cpu", own.lstrip("/")) if own else os.path.join(root, "cpu")
            quota = next(iter(_read_words(os.path.join(v1, "cpu.cfs_quota_us"))), None)
            period = next(iter(_read_words(os.path.join(v1, "cpu.cfs_period_us"))), None)
        try:
            q, p = int(quota), int(period)
        except (TypeError, ValueError):
            continue  # "max", -1 or absent: no quota
        if q > 0 and p > 0:
            limits.append(max(1, -(-q // p)))
    return min(limits) if limits else None


def _read_words(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.read().split()
    except OSError:
        return []


def map_chunks(
    func: Callable[[Any], Any],
    items: Iterable[Any],
    *,
    threads: int | None = None,
    processes: bool = False,
    preload: Sequence[str] = (),
) -> Iterator[Any]:
    """``func(item)`` for every item, in order, chunk-parallel.

    Inside :func:`dask_scheduler` with an address the calls run on the
    dask.distributed workers (`func` is pickled with cloudpickle); otherwise
    on `threads` local threads of :func:`thread_pool` (None: every available
    CPU; 1, or when called from a pool thread: in this thread), or with
    `processes` on as many processes of their own (:func:`process_map`, where
    :data:`PROCESSES_AVAILABLE`; `func` and the items must pickle, the modules
    named in `preload` are imported once before the processes start). Each
    item should stand for one chunk of work, so that memory is bounded by the
    chunks in flight.

    Examples
    --------
    >>> list(map_chunks(lambda x: x * x, range(5), threads=2))
    [0, 1, 4, 9, 16]
    """
    items = list(items)
    client = _CLIENT.get()
    if client is not None:
        for future in client.map(func, items, pure=False):
            yield future.result()
            future.release()
        return
    workers = threads or available_cpus()
    if workers <= 1 or len(items) <= 1 or in_pool_thread():
        for item in items:
            yield func(item)
        return
    if processes and PROCESSES_AVAILABLE:
        yield from process_map(func, items, workers=workers, preload=preload)
        return
    yield from thread_pool(workers).map(func, items)


# Whether work may choose processes of its own by itself (see allow_processes).
_PROCESSES = {"allowed": False}


def allow_processes(allowed: bool = True) -> None:
    """Let chunk work choose processes of its own (:func:`process_map`) by itself.

    Processes import the main module of the program again, so a script that
    starts work at import time would run twice; an entry point whose main
    module is guarded (the command line) allows them. Elsewhere they are
    used only when asked for.
    """
    _PROCESSES["allowed"] = bool(allowed)


def processes_allowed() -> bool:
    """Whether :func:`allow_processes` was called and this platform can fork a server."""
    return _PROCESSES["allowed"] and PROCESSES_AVAILABLE


#: Whether :func:`process_map` can run here (a ``forkserver``: Linux, macOS).
PROCESSES_AVAILABLE = "forkserver" in multiprocessing.get_all_start_methods()


def _start_worker(threshold: int | None) -> None:
    """Set up a :func:`process_map` worker: the parent's heap setting, no nested pools."""
    if threshold is not None:
        keep_heap_flat(threshold)
    _IN_POOL.active = True


def _process_context(preload: Sequence[str]) -> Any:
    """The ``forkserver`` context, its server to import `preload` when it starts."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    return context


def start_process_server(preload: Sequence[str] = ()) -> None:
    """Start the server :func:`process_map` forks its processes from, in the background.

    The server imports the modules in `preload` (about a second for the
    measuring code) while the caller goes on, e.g. with a first pass over the
    chunks; a later :func:`process_map` then starts its processes at once.
    Once started, the server stays until this process exits.
    """
    if not PROCESSES_AVAILABLE:
        return
    _process_context(preload)
    from multiprocessing import forkserver

    forkserver.ensure_running()


def process_map(
    func: Callable[[Any], Any],
    items: Iterable[Any],
    *,
    workers: int,
    preload: Sequence[str] = (),
) -> Iterator[Any]:
    """``func(item)`` for every item, in order, on `workers` processes of their own.

    For chunk work that holds the GIL (per-cell meshes and hulls), where
    threads do not run in parallel. The processes are forked from a fresh
    server process (``forkserver``: never from this one, whose threads may
    hold locks), which imports the modules in `preload` once; they take the
    parent's heap setting (:func:`keep_heap_flat`) and are gone when the
    iteration ends. At most ``2 * workers`` items are in flight, so memory is
    bounded by the chunks being worked on. Starting costs about a second
    (the imports; :func:`start_process_server` starts them ahead): for work of
    several seconds or more.

    Examples
    --------
    >>> list(process_map(abs, [-2, 1, -3], workers=2))
    [2, 1, 3]
    """
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=_process_context(preload),
        initializer=_start_worker,
        initargs=(_HEAP["threshold"],),
    )
    pending: collections.deque = collections.deque()
    try:
        for item in items:
            pending.append(pool.submit(func, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
