"""Sweep runners without a Ray cluster: a failing cell, local worker processes, --ray without the extra, and
a ray:// address where nothing listens."""

from __future__ import annotations

import socket
import sys

import pytest

from compress_core import CompressError, load_model
from compress_core.analysis import cells
from compress_core.analysis.runners import RAY_INSTALL, InProcessRunner, PoolRunner, check_client_address, using
from compress_core.analysis.sensitivity import run_sensitivity
from compress_core.analysis.suggest import suggest_plan
from compress_core.analysis.sweep import Sweep
from compress_core.cli import main
from compress_core.models.handle import Quality

SWEEP = Sweep(bits=(4, 2), kinds=("bits",))


@pytest.fixture(scope="module")
def mlp():
    return load_model("digits_mlp")


def test_a_failing_cell_is_tried_twice_then_listed_as_failed(mlp, tmp_path, monkeypatch):
    real, calls = cells.CellContext.evaluate, []

    def flaky(context, layer, kind, level, sweep, state=None):
        if layer.name == "fc2" and level == 2:
            calls.append(level)
            raise RuntimeError("out of memory\nsecond line")
        return real(context, layer, kind, level, sweep, state)

    monkeypatch.setattr(cells.CellContext, "evaluate", flaky)
    result = run_sensitivity(mlp, SWEEP, cache=tmp_path)
    assert calls == [2, 2]  # tried once more, then reported
    assert [(cell.layer, cell.kind, cell.level, cell.error) for cell in result.failed] == [
        ("fc2", "bits", 2, "RuntimeError: out of memory")
    ]
    assert len(result.rows) == 7 and not result.cancelled  # the sweep went on
    assert not list(tmp_path.glob("*.json"))  # a table with a failed cell is not kept whole
    monkeypatch.setattr(cells.CellContext, "evaluate", real)
    again = run_sensitivity(mlp, SWEEP, cache=tmp_path)
    assert not again.failed and len(again.rows) == 8 and again.evaluations == 1  # only the failed cell ran again


def test_local_worker_processes_give_the_in_process_table(mlp):
    here = run_sensitivity(mlp, SWEEP, cache=False)
    with PoolRunner(2) as runner:
        pooled = run_sensitivity(mlp, SWEEP, cache=False, runner=runner)
    assert pooled.rows == here.rows and pooled.baseline == here.baseline and pooled.evaluations == 8
    assert pooled.strategy == "weight swap, full passes; 2 local worker processes"


def test_ray_option_without_ray_says_how_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    code = main(["sensitivity", "digits_mlp", "--ray", "auto", "--out", str(tmp_path / "s.csv")])
    error = capsys.readouterr().err.strip()
    assert code != 0 and "\n" not in error
    assert (
        error == "error: Ray is not installed: pip install 'compression-explorer[ray]' (or pip install 'ray[client]')"
    )
    assert main(["sensitivity", "digits_mlp", "--workers", "0", "--out", str(tmp_path / "s.csv")]) != 0
    assert "--workers 0 is not allowed" in capsys.readouterr().err


def test_sweeps_given_no_runner_use_the_one_set_for_the_block(mlp):
    class Counting(InProcessRunner):
        def __init__(self) -> None:
            self.cells: list = []

        def run(self, job, cells, on_outcome, cancel):
            self.cells += cells
            return super().run(job, cells, on_outcome, cancel)

    counting = Counting()
    with using(counting):
        suggestion = suggest_plan(mlp, target_size=0.25, sweep=SWEEP, cache=False)  # as `suggest --workers` runs it
    assert len(counting.cells) == 8 and suggestion.plan.layers
    assert run_sensitivity(mlp, SWEEP, cache=False).evaluations == 8 and len(counting.cells) == 8  # block ended


def test_a_metric_that_cannot_be_pickled_is_refused_for_worker_processes(mlp):
    local = mlp.replace(quality=Quality(metric=lambda reference, outputs, labels: 1.0, metric_label="m.py:f"))
    with PoolRunner(2) as runner, pytest.raises(CompressError, match="cannot be sent to worker processes"):
        run_sensitivity(local, SWEEP, cache=False, runner=runner)
    assert runner.pool is None  # nothing was started


@pytest.mark.parametrize(
    "command",
    [
        ["suggest", "digits_mlp", "--target-size", "0.2", "--ray", "auto", "--out", "plan.yaml"],
        ["bench", "out", "--ray", "auto", "--latency-on", "cluster"],
    ],
)
def test_suggest_and_bench_say_how_to_install_ray(command, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(command) != 0
    assert capsys.readouterr().err.strip() == f"error: {RAY_INSTALL}"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_ray_address_where_nothing_listens_is_refused_before_rays_own_retries(tmp_path, capsys):
    pytest.importorskip("ray")
    port = _closed_port()
    out = tmp_path / "s.csv"
    code = main(["sensitivity", "digits_mlp", "--ray", f"ray://127.0.0.1:{port}", "--out", str(out)])
    error = capsys.readouterr().err.strip().split("\n")[-1]  # the progress line (cells in the cache) is ended first
    assert code != 0 and not out.exists()
    assert error.startswith(f"error: nothing answers at 127.0.0.1:{port} for Ray address 'ray://127.0.0.1:{port}'")
    assert "ConnectionRefusedError" in error and "10001" in error


@pytest.mark.parametrize("address", ["ray://", "ray://headnode", "ray://headnode:port"])
def test_a_ray_address_without_host_and_port_is_refused(address):
    with pytest.raises(CompressError, match=f"Ray address '{address}' names no host and port"):
        check_client_address(address)
