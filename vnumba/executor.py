"""The one seam through which work runs: in this process, a local process pool, or Dask.

Every job that can run in parallel (dataset generation, whole-slide analysis, data-parallel
training) hands its tasks to an :class:`Executor` made
here by :func:`get_executor` from the command line's ``--scheduler`` (and ``synth generate
--workers``); no other module creates pools, clusters or clients.

Specs
-----
``None`` / ``""``
    In-process (the default): tasks run one after another in this process.
``processes:N``
    A local ``concurrent.futures`` process pool of ``N`` workers (what ``synth generate
    --workers N`` has always meant); the workers die with this process.
``local:N``
    A ``distributed.LocalCluster`` started here: ``N`` single-threaded worker processes.
``tcp://HOST:PORT`` (or ``tls://``, ``ws://``...)
    An existing Dask scheduler; its workers must have this package installed and see the same
    paths (a shared file system) for what tasks read.

Tasks are ``fn(shared, item)``: ``shared`` is sent to each worker once (on Dask the result of
one task that returns it, so that it is recomputed rather than lost with a dead worker; a pool
initializer locally), ``item`` is small.  :meth:`Executor.map` yields
the results **in the order of the items**, whatever order they finish in, and keeps only a
window of tasks in flight (memory bounded); a task whose worker dies is rerun by Dask on
another worker (its results depend on its item alone: every random draw is seeded per item).

Numba in workers: every Dask worker runs one thread (``threads_per_worker=1``) and its
kernels with ``NUMBA_NUM_THREADS`` = 1 (unless set), so that N workers on N cores do not
oversubscribe; ``NUMBA_CACHE_DIR`` is passed on so that kernels compiled once are loaded by
every worker (docs/distributed.md).

Memory in workers: before its first task a Dask worker keeps freed memory for reuse
(:func:`vnumba.ops.memory.keep_freed_memory`), overriding the ``MALLOC_TRIM_THRESHOLD_=65536``
that Dask's nanny sets by default (``distributed.nanny.pre-spawn-environ``).  Dask's default
hands memory back after every task; our tasks allocate the same large arrays again, and every
fresh page then costs a page fault: a training iteration on one worker took 8.4 s against
6.2 s with the memory kept (bench/bench_distributed.py).  ``VNUMBA_KEEP_MEMORY=0`` in the
workers' environment, or a ``MALLOC_TRIM_THRESHOLD_`` other than Dask's default, keeps the
trimming.
"""
from __future__ import annotations

import itertools
import os
from collections import deque
from typing import Any, Callable, Iterable, Iterator

__all__ = ["Executor", "SchedulerError", "get_executor", "parse_scheduler", "WORKER_ENV"]

#: Environment of the worker processes a ``local:N`` cluster starts (values the user set win).
WORKER_ENV = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1"}


#: Seconds to wait for the first worker of a scheduler that has none yet.
FIRST_WORKER_TIMEOUT_S = 120.0


class SchedulerError(ValueError):
    """A ``--scheduler`` that cannot be used (bad spec, unreachable address, Dask missing)."""


def parse_scheduler(spec) -> tuple[str, Any]:
    """``(kind, arg)`` of a scheduler spec: ``("inprocess", None)``, ``("processes", N)``,
    ``("local", N)`` or ``("address", "tcp://...")``.

    Raises
    ------
    SchedulerError
        Anything else, naming the spec.
    """
    if spec is None or str(spec).strip() == "":
        return "inprocess", None
    s = str(spec).strip()
    for kind in ("processes", "local"):
        if s.startswith(kind + ":"):
            n = s[len(kind) + 1:]
            if not n.isdigit() or not 1 <= int(n) <= 1024:
                raise SchedulerError(f"--scheduler {s!r}: expected {kind}:N with N from 1 to 1024")
            return kind, int(n)
    if "://" in s and s.split("://", 1)[1]:
        return "address", s
    raise SchedulerError(f"--scheduler {s!r}: expected local:N, or a scheduler address such "
                         f"as tcp://host:8786")


class Executor:
    """Runs ``fn(shared, item)`` for every item (see the module docstring)."""

    #: What the executor is, in words (progress lines and reports).
    description = "in-process"
    #: Worker processes (1 in-process).
    workers = 1
    #: True when tasks run in the calling process (callers may then pass live objects).
    in_process = True

    def map(self, fn: Callable, items: Iterable, shared: Any = None, chunk: int = 1) -> Iterator:
        """Yield ``fn(shared, item)`` for each item, in the items' order.

        ``chunk``: items per task on workers (short tasks: the per-task cost of a cluster,
        some 50 ms, is paid once per chunk); results and their order do not depend on it.
        """
        for item in items:
            yield fn(shared, item)

    def close(self) -> None:
        """Release the workers (a cluster started here is shut down)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


# ------------------------------------------------------------------ local process pool
_POOL_SHARED: Any = None


def _pool_init(parent_pid, shared):
    global _POOL_SHARED
    _die_with_parent(parent_pid)
    _POOL_SHARED = shared


def _pool_call(fn, item):
    return fn(_POOL_SHARED, item)


def _die_with_parent(parent_pid: int) -> None:
    """Make this worker process exit when the process that made the pool dies (also by
    ``kill -9``): an orphaned worker would keep computing and keep files open.  Linux: the
    kernel sends SIGKILL on the parent's death (``prctl(PR_SET_PDEATHSIG)``); everywhere: a
    daemon thread that exits once the parent process id changes."""
    import signal
    import threading
    import time

    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before the call above
        os._exit(1)

    def watch():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


class _PoolExecutor(Executor):
    in_process = False

    def __init__(self, n: int):
        self.workers = n
        self.description = f"{n} local worker processes"

    def map(self, fn, items, shared=None, chunk=1):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        items = list(items)
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_pool_init,
                                 initargs=(os.getpid(), shared)) as ex:
            chunk = max(chunk, min(8, len(items) // (4 * self.workers)))
            yield from ex.map(_pool_call, [fn] * len(items), items, chunksize=chunk)


# ------------------------------------------------------------------ Dask
class _DaskExecutor(Executor):
    """Tasks on a Dask cluster through a ``distributed.Client``."""

    in_process = False

    def __init__(self, kind: str, arg):
        try:
            import distributed
        except ImportError:
            raise SchedulerError("--scheduler needs dask and distributed (pip install 'dask[distributed]')") \
                from None
        self._cluster = None
        if kind == "local":
            env = {k: os.environ.get(k, v) for k, v in WORKER_ENV.items()}
            if os.environ.get("NUMBA_CACHE_DIR"):
                env["NUMBA_CACHE_DIR"] = os.environ["NUMBA_CACHE_DIR"]
            import logging
            import warnings

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # e.g. "port 8787 in use": no dashboard asked
                    self._cluster = distributed.LocalCluster(
                        n_workers=arg, threads_per_worker=1, processes=True, dashboard_address=":0",
                        env=env, silence_logs=logging.ERROR)
                    self._client = distributed.Client(self._cluster)
            except Exception as e:  # noqa: BLE001 - any failure to start is one line
                self.close()
                raise SchedulerError(f"--scheduler local:{arg}: cannot start a local cluster: "
                                     f"{' '.join(str(e).split())}") from None
            self.description = f"Dask LocalCluster of {arg} worker processes"
        else:
            try:
                # timeout: Dask's distributed.comm.timeouts.connect (30 s unless configured,
                # e.g. DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=5s)
                self._client = distributed.Client(arg)
            except Exception as e:  # noqa: BLE001 - OSError, TimeoutError, ValueError...
                raise SchedulerError(f"--scheduler {arg}: cannot reach the scheduler "
                                     f"({type(e).__name__}: {' '.join(str(e).split())[:160]})") \
                    from None
            self.description = f"Dask scheduler {arg}"
        if not self._client.scheduler_info().get("workers"):
            # A scheduler whose workers are still queued (a batch system): wait for the first
            # rather than submit into nothing; tasks then also reach workers joining later.
            try:
                self._client.wait_for_workers(1, timeout=FIRST_WORKER_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - TimeoutError (asyncio's or the builtin)
                self.close()
                raise SchedulerError(f"--scheduler {arg}: no worker joined the scheduler within "
                                     f"{FIRST_WORKER_TIMEOUT_S:g} s") from None
        self.workers = max(1, len(self._client.scheduler_info().get("workers", {})))
        try:
            self._check_workers()
        except SchedulerError:
            self.close()
            raise

    def _check_workers(self):
        """Every worker must import this package (the tasks are its functions)."""
        import vnumba

        def probe():
            import vnumba as v
            return v.__version__

        try:
            versions = self._client.run(probe)
        except Exception as e:  # noqa: BLE001 - ModuleNotFoundError travels as any type
            raise SchedulerError(f"{self.description}: a worker cannot import vnumba "
                                 f"({type(e).__name__}: {' '.join(str(e).split())[:160]}); "
                                 f"install the same version on every worker") from None
        other = {w: v for w, v in versions.items() if v != vnumba.__version__}
        if other:
            w, v = next(iter(other.items()))
            raise SchedulerError(f"{self.description}: worker {w} has vnumba {v}, this process "
                                 f"{vnumba.__version__}; install the same version everywhere")

    def map(self, fn, items, shared=None, chunk=1):
        # The shared object as the result of a task that returns it (not a scatter): the
        # scheduler keeps it in that task's spec, so when the worker holding it dies it is
        # recomputed rather than lost with it.  Workers fetch it from one another (once each).
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sending large graph": a reference bundle, once
            shared_f = self._client.submit(_identity, shared, pure=False)
        window = deque()
        items = iter(items)
        ahead = 4 * self.workers

        # tasks of up to `chunk` items (one by default); their results unpacked in order below
        items = _chunks(items, max(1, int(chunk)))

        def submit(part):
            return self._client.submit(_dask_task, fn, shared_f, part, pure=False)

        for item in items:
            window.append(submit(item))
            if len(window) >= ahead:
                break
        while window:
            fut = window.popleft()
            res = fut.result()  # a lost worker's task is rerun by the scheduler
            fut.release()
            nxt = next(items, _END)
            if nxt is not _END:
                window.append(submit(nxt))
            yield from res

    def close(self):
        client, cluster = getattr(self, "_client", None), self._cluster
        self._client = self._cluster = None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        if cluster is not None:
            try:
                cluster.close()
            except Exception:  # noqa: BLE001
                pass


_END = object()


def _identity(x):
    return x


#: glibc trim threshold that Dask's nanny gives every worker unless configured otherwise
#: (distributed.yaml: ``distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_``).
DASK_TRIM_DEFAULT = "65536"
_WORKER = {"ready": False}


def setup_worker() -> bool:
    """Keep freed memory in this Dask worker process (module docstring); True if in force."""
    from vnumba.ops.memory import keep_freed_memory

    if (os.environ.get("MALLOC_TRIM_THRESHOLD_") == DASK_TRIM_DEFAULT
            and "MALLOC_MMAP_THRESHOLD_" not in os.environ):
        # Dask's default, not the user's choice: keep_freed_memory leaves a user's alone
        del os.environ["MALLOC_TRIM_THRESHOLD_"]
    return keep_freed_memory()


def _dask_task(fn, shared, items):
    """A task on a Dask worker: the worker's one-time set-up, then ``fn(shared, item)`` for
    each item, the results in order."""
    if not _WORKER["ready"]:
        setup_worker()
        _WORKER["ready"] = True
    return [fn(shared, item) for item in items]


def _chunks(items, n: int):
    """Lists of ``n`` consecutive items (the last one shorter)."""
    it = iter(items)
    while True:
        part = list(itertools.islice(it, n))
        if not part:
            return
        yield part


def get_executor(spec=None) -> Executor:
    """The executor of a ``--scheduler`` spec (module docstring).

    Raises
    ------
    SchedulerError
        An invalid spec, an unreachable scheduler, Dask not installed, or workers without
        this package.
    """
    kind, arg = parse_scheduler(spec)
    if kind == "inprocess" or (kind == "processes" and arg == 1):
        return Executor()
    if kind == "processes":
        return _PoolExecutor(arg)
    return _DaskExecutor(kind, arg)
