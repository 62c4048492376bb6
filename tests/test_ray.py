"""Sweeps on a local Ray cluster (``ray.init(num_cpus=2)``): the same table as in this process, and a stop
that leaves no task running, after which a rerun completes from the cache."""

from __future__ import annotations

import time

import pytest
from apptest_helpers import button, finish_job, first_run

from compress_core import load_model
from compress_core.analysis.runners import RayRunner
from compress_core.analysis.sensitivity import run_sensitivity
from compress_core.analysis.sweep import Sweep
from explorer_ui import state

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray
CPUS = 2


@pytest.fixture(scope="module")
def cluster():
    # address="local": a new cluster even where a `ray start` cluster of this machine is found
    ray.init(address="local", num_cpus=CPUS, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def cnn():
    return load_model("digits_cnn")


def test_ray_gives_the_in_process_table_cell_for_cell(cluster, cnn):
    sweep = Sweep(bits=(8, 4, 2), prune=(0.5,), ranks=(0.5,), kinds=("bits", "prune", "rank", "structured"))
    here = run_sensitivity(cnn, sweep, cache=False)
    runner = RayRunner()
    on_ray = run_sensitivity(cnn, sweep, cache=False, runner=runner)
    key = lambda row: (row.layer, row.kind, row.level)  # noqa: E731
    assert sorted(on_ray.rows, key=key) == sorted(here.rows, key=key) and on_ray.rows == here.rows
    assert on_ray.skipped == here.skipped and on_ray.baseline == here.baseline and not on_ray.failed
    assert len(here.rows) == 4 * 6 + 5  # conv1 ... fc1 at 6 cells; the head skips structured
    assert on_ray.strategy.endswith("a local Ray cluster: 1 node, 2 CPUs, 2 workers")
    runner.close()
    assert ray.is_initialized()  # a runner leaves alone the connection it did not start


def test_stop_cancels_every_task_and_a_rerun_completes_from_the_cache(cluster, cnn, tmp_path):
    sweep = Sweep(kinds=("bits", "prune"))
    cells = 5 * (5 + 9)
    seen = []
    stopped = run_sensitivity(
        cnn, sweep, cache=tmp_path, runner=RayRunner(), progress=seen.append, cancel=lambda: len(seen) >= 3
    )
    assert stopped.cancelled and 3 <= len(stopped.rows) < cells
    # the runner returned after every task it submitted ended: all the CPUs are free again
    # (Ray frees them a moment after a task ends)
    deadline = time.monotonic() + 10
    while ray.available_resources().get("CPU", 0) < CPUS and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ray.available_resources().get("CPU", 0) == CPUS
    whole = run_sensitivity(cnn, sweep, cache=tmp_path, runner=RayRunner())
    assert not whole.cancelled and len(whole.rows) == cells
    assert whole.evaluations == cells - len(stopped.rows)  # the finished cells came from the cache
    done = {(row.layer, row.kind, row.level): row for row in stopped.rows}
    assert [row for row in whole.rows if (row.layer, row.kind, row.level) in done] == stopped.rows


def test_the_sensitivity_page_runs_on_ray_and_shows_the_workers(cluster, private_dirs):
    app = first_run()
    app.switch_page("pages/sensitivity.py").run()
    app.multiselect[0].set_value(["bits"]).run()
    app.multiselect[1].set_value([4]).run()
    app.radio[0].set_value("a Ray cluster").run()
    button(app, "Connect").click().run()
    assert not app.error
    assert "Connected to a local Ray cluster: 1 node, 2 CPUs, 2 workers." in [caption.value for caption in app.caption]
    assert any("5 cells, estimated" in caption.value and "over 2 workers" in caption.value for caption in app.caption)
    button(app, "Run sensitivity").click().run()
    finish_job(app.session_state[state.SENSITIVITY_JOB]["job"])
    app.run()
    assert not app.exception and not app.error
    result = app.session_state[state.SENSITIVITY]["digits_cnn"]
    assert len(result["rows"]) == 5 and result["strategy"].endswith("a local Ray cluster: 1 node, 2 CPUs, 2 workers")
    assert ray.is_initialized()  # the page's connection stays for the next sweep
