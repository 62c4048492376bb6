"""Where a sweep's cells run: in this process, in a pool of local worker processes, or on a Ray cluster.

Every runner calls the one cell function, ``cells.evaluate_cell``, and reports each cell's outcome as it
finishes. ``InProcessRunner`` keeps the staged activation cache (cells in the order the cache reaches
their layers). ``PoolRunner`` starts ``workers`` local processes for the run; ``RayRunner`` uses a Ray
cluster (``auto``, ``ray://host:port``, or ``local``: one started for the run with ``workers`` CPUs;
``pip install 'compression-explorer[ray]'``, imported only when used).

A worker gets the model and the evaluation data once, not once per cell: the pool passes them to each
process as it starts; Ray puts them in its object store once per model (``ray.put``) and each worker
reads them on its first cell. A worker then keeps one ``CellContext`` for that model (the reference
pass, the working copy or the ONNX session) across cells and sweeps, with ``threads`` torch and ONNX
Runtime intra-op threads, so that N workers do not oversubscribe the cores (the few ONNX cells that go
through ``apply_plan``, which the one-session sweep cannot stand for, run in a session of ONNX
Runtime's default threads). At most twice as many
cells as workers are in flight; a stop cancels the others and waits until none is running. A cell's
error is retried once in the worker (``evaluate_cell``); a cell whose worker dies is retried once by
Ray, then reported as failed. A local worker that dies breaks its pool: the cells in flight are
reported as failed and the sweep ends with a one-line error, its finished cells cached.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import dataclasses
import io
import multiprocessing
import pickle
import socket
import tempfile
import threading
import urllib.parse
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import torch

from compress_core.analysis.cells import Cell, CellContext, Outcome, evaluate_cell
from compress_core.analysis.sweep import FailedCell, Sweep
from compress_core.errors import CompressError, first_line
from compress_core.models.handle import ModelHandle
from compress_core.models.inventory import LayerInfo

Cancel = Callable[[], bool] | threading.Event | None
OnOutcome = Callable[[Cell, Outcome], None]
WORKER_THREADS = 1
"""Torch and ONNX Runtime intra-op threads of each worker (one core per cell)."""
IN_FLIGHT_PER_WORKER = 2
POLL_S = 0.1
CANCEL_WAIT_S = 10.0
CLIENT_REACH_S = 3.0  # how long a ray:// address may take to accept a connection
"""How long a stop waits for running cells to end before Ray kills their workers."""
RAY_INSTALL = "Ray is not installed: pip install 'compression-explorer[ray]' (or pip install 'ray[client]')"


@dataclass(frozen=True)
class SweepJob:
    """A sweep's model (``layers``: its inventory), the layers it measures, its levels, and how it batches."""

    handle: ModelHandle
    layers: list[LayerInfo]
    swept: list[LayerInfo]
    sweep: Sweep
    batch_size: int
    staged: bool = True
    key: str = ""
    """The handle's ``sweep_cache.model_key`` and the batch size: which context a worker holds."""


@dataclass(frozen=True)
class SweepInfo:
    """What a runner reports beside the cells: the quality metric, its value on the original model, how
    cells were evaluated, and whether a stop cut the run short."""

    metric_name: str
    baseline: float
    strategy: str
    cancelled: bool = False


class CellRunner:
    """Runs cells of a ``SweepJob``; ``on_outcome`` gets each one as it finishes. Use as a context
    manager (or call ``close``) to end what the runner started."""

    def run(self, job: SweepJob, cells: list[Cell], on_outcome: OnOutcome, cancel: Cancel) -> SweepInfo:
        raise NotImplementedError

    def workers(self) -> int:
        """How many cells run at once."""
        raise NotImplementedError

    def describe(self) -> str:
        """Where the cells run, for the user."""
        raise NotImplementedError

    def close(self) -> None:
        """End the processes or the cluster connection the runner started (nothing by default)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InProcessRunner(CellRunner):
    """Cells one after another in this process, with the staged activation cache where the model has one."""

    def run(self, job: SweepJob, cells: list[Cell], on_outcome: OnOutcome, cancel: Cancel) -> SweepInfo:
        context = CellContext(job.handle, job.layers, job.swept, batch_size=job.batch_size, staged=job.staged)
        by_layer: dict[str, list[Cell]] = {}
        for cell in cells:
            by_layer.setdefault(cell[0], []).append(cell)
        state = None
        for layer in context.stage_order([layer for layer in job.swept if layer.name in by_layer]):
            state = context.advance(state, layer)
            for cell in by_layer[layer.name]:
                if is_cancelled(cancel):
                    return SweepInfo(context.metric_name, context.baseline, context.strategy, cancelled=True)
                on_outcome(cell, evaluate_cell(context, cell, job.sweep, state))
        return SweepInfo(context.metric_name, context.baseline, context.strategy)

    def workers(self) -> int:
        return 1

    def describe(self) -> str:
        return "this process"


class _RemoteRunner(CellRunner):
    """The loop shared by the pool and Ray: submit, collect as cells finish, cancel on a stop."""

    def run(self, job: SweepJob, cells: list[Cell], on_outcome: OnOutcome, cancel: Cancel) -> SweepInfo:
        self._prepare(job)
        info = self._submit_info(job)
        queue, pending = deque(cells), dict[Any, Cell]()
        cancelled, in_flight = False, IN_FLIGHT_PER_WORKER * self.workers()
        while queue or pending:
            if is_cancelled(cancel):
                cancelled = True
                break
            while queue and len(pending) < in_flight:
                cell = queue.popleft()
                pending[self._submit(job, cell)] = cell
            for task in self._wait(list(pending)):
                cell = pending.pop(task)
                on_outcome(cell, self._outcome(task, cell))
        if cancelled:
            for task, outcome in self._cancel(pending):
                on_outcome(pending[task], outcome)
        metric_name, baseline, strategy = self._info(info)
        return SweepInfo(metric_name, baseline, f"{strategy}; {self.describe()}", cancelled)

    def _prepare(self, job: SweepJob) -> None:
        raise NotImplementedError

    def _submit_info(self, job: SweepJob) -> Any:
        raise NotImplementedError

    def _info(self, task: Any) -> tuple[str, float, str]:
        raise NotImplementedError

    def _submit(self, job: SweepJob, cell: Cell) -> Any:
        raise NotImplementedError

    def _wait(self, tasks: list[Any]) -> list[Any]:
        """The tasks among ``tasks`` that finished within ``POLL_S``."""
        raise NotImplementedError

    def _outcome(self, task: Any, cell: Cell) -> Outcome:
        raise NotImplementedError

    def _cancel(self, pending: dict[Any, Cell]) -> list[tuple[Any, Outcome]]:
        """Cancel the pending tasks, wait until none runs, and return the outcomes of those that finished."""
        raise NotImplementedError


class PoolRunner(_RemoteRunner):
    """``count`` local worker processes (spawned, so that no thread pool is forked), started at the first
    sweep and kept for the sweeps of the same model."""

    def __init__(self, count: int, threads: int = WORKER_THREADS) -> None:
        if count < 1:
            raise CompressError(f"--workers {count} is not allowed; use 1 or more local worker processes")
        self.count, self.threads = count, threads
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None
        self.key = ""

    def workers(self) -> int:
        return self.count

    def describe(self) -> str:
        return f"{self.count} local worker process{'es' if self.count > 1 else ''}"

    def _prepare(self, job: SweepJob) -> None:
        if self.pool is not None and self.key == job.key:
            return
        self.close()
        try:
            payload = pickle.dumps(Payload.of(job, self.threads))
        except Exception as exc:  # noqa: BLE001 - pickling a model can raise anything its classes raise
            raise CompressError(
                f"model '{job.handle.name}' cannot be sent to worker processes ({first_line(exc)}); "
                "run the sweep in this process, or on Ray (--ray local), which sends your metric's code along"
            ) from exc
        self.pool = concurrent.futures.ProcessPoolExecutor(
            self.count, multiprocessing.get_context("spawn"), initializer=_pool_start, initargs=(job.key, payload)
        )
        self.key = job.key

    def _running(self) -> concurrent.futures.ProcessPoolExecutor:
        assert self.pool is not None, "_prepare starts the pool"
        return self.pool

    def _submit_info(self, job: SweepJob) -> Any:
        return self._running().submit(_pool_info)

    def _info(self, task: Any) -> tuple[str, float, str]:
        try:
            return task.result()
        except concurrent.futures.process.BrokenProcessPool as exc:
            raise self._broken(exc) from exc

    def _submit(self, job: SweepJob, cell: Cell) -> Any:
        try:
            return self._running().submit(_pool_cell, cell, job.sweep)
        except concurrent.futures.process.BrokenProcessPool as exc:
            raise self._broken(exc) from exc

    def _wait(self, tasks: list[Any]) -> list[Any]:
        done, _ = concurrent.futures.wait(tasks, timeout=POLL_S, return_when=concurrent.futures.FIRST_COMPLETED)
        return list(done)

    def _outcome(self, task: Any, cell: Cell) -> Outcome:
        try:
            return task.result()
        except concurrent.futures.process.BrokenProcessPool as exc:
            return FailedCell(*cell, f"a worker process died: {first_line(exc)}")

    def _cancel(self, pending: dict[Any, Cell]) -> list[tuple[Any, Outcome]]:
        for task in pending:
            task.cancel()
        concurrent.futures.wait(list(pending))
        return [(task, self._outcome(task, pending[task])) for task in pending if not task.cancelled()]

    def _broken(self, exc: Exception) -> CompressError:
        """The error of a pool whose process died (the pool is ended; the next sweep starts a new one)."""
        self.close()
        return CompressError(
            f"the local worker processes stopped ({first_line(exc)}); the finished cells are cached: "
            "run the sweep again, with fewer workers if memory ran out"
        )

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


def check_client_address(address: str, timeout: float = CLIENT_REACH_S) -> None:
    """Fail fast, with a clear message, where a ``ray://HOST:PORT`` address names no port or nothing
    answers there: Ray's client would retry for about half a minute. Other addresses pass unchecked."""
    if not address.startswith("ray://"):
        return
    parsed = urllib.parse.urlsplit(address)
    try:
        port = parsed.port
    except ValueError:
        port = None
    if not parsed.hostname or port is None:
        raise CompressError(
            f"Ray address '{address}' names no host and port; give ray://HOST:PORT (the cluster's client port, 10001 by default)"
        )
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise CompressError(
            f"nothing answers at {parsed.hostname}:{port} for Ray address '{address}' ({type(exc).__name__}: "
            f"{first_line(exc)}); is a cluster's client server running there ('ray start --head' listens on 10001)?"
        ) from exc


class RayRunner(_RemoteRunner):
    """Cells as Ray tasks: on the cluster at ``address`` (``auto``, ``ray://host:port``), or on one
    started for the run (``local``, with ``workers`` CPUs; all of this machine's by default).
    Each task takes ``threads`` CPUs. A connection this process already has is reused unless a runner
    connected it to another address; ``close`` ends only a connection this runner made."""

    connected: str | None = None
    """The address a runner of this process connected Ray to (None: not connected, or by someone else)."""

    def __init__(self, address: str = "local", workers: int | None = None, threads: int = WORKER_THREADS) -> None:
        self.address, self.local_cpus, self.threads = address, workers, threads
        self.started = False
        self.refs: dict[str, Any] = {}  # model key -> the model's reference in the object store
        self.remote: dict[str, Any] = {}

    def connect(self) -> Any:
        """The ``ray`` module, connected to this runner's address."""
        ray = import_ray()
        if ray.is_initialized() and RayRunner.connected not in (None, self.address):
            ray.shutdown()
            RayRunner.connected = None
        if ray.is_initialized():
            return ray
        check_client_address(self.address)
        try:
            with warnings.catch_warnings():  # a failed connection warns before it raises: the error says it all
                warnings.simplefilter("ignore")
                if self.address == "local":
                    ray.init(address="local", num_cpus=self.local_cpus, log_to_driver=False, include_dashboard=False)
                else:
                    ray.init(address=self.address, log_to_driver=False)
        except Exception as exc:  # noqa: BLE001 - Ray's connection errors share no type
            raise CompressError(
                f"could not connect to the Ray cluster at '{self.address}' ({type(exc).__name__}: {first_line(exc)}); "
                "give auto (a cluster started here with 'ray start --head'), ray://HOST:10001, or local"
            ) from exc
        self.started, RayRunner.connected = True, self.address
        return ray

    def workers(self) -> int:
        cpus = self.connect().cluster_resources().get("CPU", 0)
        return max(1, int(cpus // self.threads))

    def describe(self) -> str:
        ray = self.connect()
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        cpus = int(ray.cluster_resources().get("CPU", 0))
        where = "a local Ray cluster" if self.address == "local" else f"Ray at {self.address}"
        return f"{where}: {len(nodes)} node{'s' if len(nodes) != 1 else ''}, {cpus} CPUs, {self.workers()} workers"

    def _prepare(self, job: SweepJob) -> None:
        ray = self.connect()
        if not self.remote:
            self.remote = {
                "cell": ray.remote(_ray_cell).options(num_cpus=self.threads, max_retries=1),
                "info": ray.remote(_ray_info).options(num_cpus=self.threads, max_retries=1),
            }
        if job.key not in self.refs:
            try:
                self.refs = {job.key: ray.put(Payload.of(job, self.threads))}
            except Exception as exc:  # noqa: BLE001 - pickling a model can raise anything its classes raise
                raise CompressError(
                    f"model '{job.handle.name}' cannot be sent to Ray ({first_line(exc)}); run the sweep in this process"
                ) from exc

    def _stored(self, job: SweepJob) -> list[Any]:
        return [self.refs[job.key]]  # in a list, so that Ray passes the reference, not the value, to every task

    def _submit_info(self, job: SweepJob) -> Any:
        return self.remote["info"].remote(job.key, self._stored(job))

    def _info(self, task: Any) -> tuple[str, float, str]:
        ray = self.connect()
        try:
            metric_name, baseline, strategy = ray.get(task)
            return metric_name, baseline, strategy
        except ray.exceptions.RayError as exc:
            raise CompressError(f"the sweep's reference pass failed on Ray: {first_line(exc)}") from exc

    def _submit(self, job: SweepJob, cell: Cell) -> Any:
        return self.remote["cell"].remote(job.key, self._stored(job), cell, job.sweep)

    def _wait(self, tasks: list[Any]) -> list[Any]:
        ready, _ = self.connect().wait(tasks, num_returns=1, timeout=POLL_S)
        return ready

    def _outcome(self, task: Any, cell: Cell) -> Outcome:
        ray = self.connect()
        try:
            return ray.get(task)
        except ray.exceptions.RayError as exc:  # the worker died twice, or the task could not run
            return FailedCell(*cell, f"{type(exc).__name__}: {first_line(exc)}")

    def _cancel(self, pending: dict[Any, Cell]) -> list[tuple[Any, Outcome]]:
        ray = self.connect()
        tasks = list(pending)
        for task in tasks:
            ray.cancel(task)
        ready, stuck = ray.wait(tasks, num_returns=len(tasks), timeout=CANCEL_WAIT_S) if tasks else ([], [])
        for task in stuck:
            ray.cancel(task, force=True)
        if stuck:
            ray.wait(stuck, num_returns=len(stuck), timeout=CANCEL_WAIT_S)
        finished = []
        for task in ready:
            with contextlib.suppress(ray.exceptions.TaskCancelledError, ray.exceptions.RayTaskError):
                finished.append((task, ray.get(task)))
        return finished

    def close(self) -> None:
        if self.started:
            import_ray().shutdown()
            self.started, self.refs, self.remote, RayRunner.connected = False, {}, {}, None


def bench_on_ray(
    cluster: RayRunner, folder: Path, threads: int, cancel: Cancel, **options: Any
) -> tuple[list[dict], str]:
    """``ort.bench.bench_folder`` of the export folder's files as one Ray task of ``threads`` CPUs on a node
    of the cluster (the files travel through the object store); its rows and the name of the host that
    measured them. ``options``: ``bench_folder``'s batch, runs, warmup and budget_s. A stop cancels the task."""
    ray = cluster.connect()
    files = {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}
    task = ray.remote(_bench_files).options(num_cpus=threads, max_retries=0).remote([ray.put(files)], threads, options)
    while not ray.wait([task], timeout=POLL_S)[0]:
        if is_cancelled(cancel):
            ray.cancel(task, force=True)
            return [], ""
    try:
        return ray.get(task)
    except ray.exceptions.RayTaskError as exc:
        raise CompressError(f"the benchmark failed on the cluster: {first_line(exc)}") from exc


def _bench_files(stored: list[Any], threads: int, options: dict[str, Any]) -> tuple[list[dict], str]:
    import ray

    from compress_core.ort.bench import bench_folder

    with tempfile.TemporaryDirectory() as folder:
        for name, data in ray.get(stored[0]).items():
            (Path(folder) / name).write_bytes(data)
        return bench_folder(folder, threads, **options), socket.gethostname()


def import_ray() -> Any:
    """The ``ray`` module, or a one-line ``CompressError`` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise CompressError(RAY_INSTALL) from exc
    return ray


def runner_for(workers: int | None = None, ray: str | None = None) -> CellRunner:
    """The runner the options ask for: Ray at ``ray`` (with ``workers`` CPUs when ``local``), else a
    pool of ``workers`` local processes, else this process."""
    if ray is not None:
        import_ray()
        return RayRunner(ray, workers)
    if workers is not None:
        return PoolRunner(workers)
    return InProcessRunner()


_CURRENT: contextvars.ContextVar[CellRunner | None] = contextvars.ContextVar("sweep_runner", default=None)


def current_runner() -> CellRunner:
    """The runner ``using`` set for this context, else an ``InProcessRunner``."""
    return _CURRENT.get() or InProcessRunner()


@contextlib.contextmanager
def using(runner: CellRunner) -> Iterator[CellRunner]:
    """Within the block, sweeps that are given no runner (those ``suggest_plan`` runs) use ``runner``."""
    token = _CURRENT.set(runner)
    try:
        yield runner
    finally:
        _CURRENT.reset(token)


def is_cancelled(cancel: Cancel) -> bool:
    """Whether ``cancel`` (a callable, an event, or None) says stop."""
    if cancel is None:
        return False
    return cancel.is_set() if isinstance(cancel, threading.Event) else bool(cancel())


class Payload:
    """What a worker needs for every cell of a model: the handle (without its ONNX Runtime session; a
    TorchScript module travels as its saved bytes), the inventory, the batch size and the thread limit."""

    def __init__(self, handle: ModelHandle, layers: list[LayerInfo], batch_size: int, threads: int) -> None:
        self.handle, self.layers, self.batch_size, self.threads = handle, layers, batch_size, threads

    @classmethod
    def of(cls, job: SweepJob, threads: int) -> Payload:
        return cls(dataclasses.replace(job.handle, _ort_session=None), job.layers, job.batch_size, threads)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if isinstance(self.handle.model, torch.jit.ScriptModule):
            buffer = io.BytesIO()
            torch.jit.save(self.handle.model, buffer)
            state["handle"], state["script"] = dataclasses.replace(self.handle, model=None), buffer.getvalue()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        script = state.pop("script", None)
        if script is not None:
            state["handle"] = dataclasses.replace(state["handle"], model=torch.jit.load(io.BytesIO(script)))
        self.__dict__.update(state)

    def context(self) -> CellContext:
        """The worker's context: full passes (no activation cache), every layer's weight feedable."""
        torch.set_num_threads(self.threads)
        return CellContext(
            self.handle, self.layers, self.layers, batch_size=self.batch_size, staged=False, threads=self.threads
        )


_WORKER: dict[str, CellContext] = {}  # in a worker process: the context of the last model it served


def worker_context(key: str, load: Callable[[], Payload]) -> CellContext:
    """This worker's context for the model ``key``, built from ``load()`` the first time."""
    context = _WORKER.get(key)
    if context is None:
        _WORKER.clear()
        context = _WORKER[key] = load().context()
    return context


def _info_of(context: CellContext) -> tuple[str, float, str]:
    return context.metric_name, context.baseline, context.strategy


_POOL_PAYLOAD: dict[str, bytes] = {}


def _pool_start(key: str, payload: bytes) -> None:
    _POOL_PAYLOAD.clear()
    _POOL_PAYLOAD[key] = payload


def _pool_context() -> CellContext:
    ((key, payload),) = _POOL_PAYLOAD.items()
    return worker_context(key, lambda: pickle.loads(payload))


def _pool_info() -> tuple[str, float, str]:
    return _info_of(_pool_context())


def _pool_cell(cell: Cell, sweep: Sweep) -> Outcome:
    return evaluate_cell(_pool_context(), cell, sweep)


def _ray_info(key: str, stored: list[Any]) -> tuple[str, float, str]:
    import ray

    return _info_of(worker_context(key, lambda: ray.get(stored[0])))


def _ray_cell(key: str, stored: list[Any], cell: Cell, sweep: Sweep) -> Outcome:
    import ray

    return evaluate_cell(worker_context(key, lambda: ray.get(stored[0])), cell, sweep)
