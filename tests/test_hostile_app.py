"""The app against hostile input: private working files, uploads that are not what they claim,
failing background jobs, and requests to the graph server that are not the app's own."""

from __future__ import annotations

import io
import os
import socket
import stat
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from apptest_helpers import button, first_run
from streamlit.testing.v1 import AppTest

from compress_core import CompressError
from compress_core.plan import Plan
from explorer_ui import exporting, recover_panel, sensitivity_view, sources, state
from explorer_ui.cache import VIEWER_TOKEN
from explorer_ui.jobs import BackgroundJob
from explorer_ui.netron_server import KEPT_MODELS, MAX_PATH_LENGTH, NetronServer, new_token

JOB_TIMEOUT = 600


@pytest.fixture
def app(private_dirs) -> AppTest:
    """The app after its first run; its private folder and caches under this test's tmp_path (conftest)."""
    return first_run()


@pytest.fixture
def server():
    server = NetronServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mlp_onnx() -> bytes:
    """digits_mlp as an ONNX file's bytes (input: 64 floats per sample)."""
    import compress_core as cc
    from compress_core.ort.export import to_onnx

    return to_onnx(cc.load_model("digits_mlp")).SerializeToString()


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _upload(
    app: AppTest, model: tuple[str, bytes], data: tuple[str, bytes] | None = None, shape: str = "", trust: bool = False
) -> AppTest:
    """Fill in the Model page's upload form and submit it."""
    app.file_uploader(key=state.UPLOAD_MODEL).set_value((*model, "application/octet-stream"))
    next(box for box in app.text_input if box.label.startswith("Input shape")).set_value(shape)
    if data is not None:
        app.file_uploader(key=state.UPLOAD_DATA).set_value((*data, "application/octet-stream"))
    if trust:
        next(box for box in app.checkbox if box.label.startswith("I trust this file")).check()
    return button(app, "Load model").click().run()


def _assert_one_error_and_model_kept(app: AppTest, label: str, name: str, *fragments: str) -> None:
    """One error naming ``fragments``; the model ``label`` (titled ``name``) still the current one."""
    assert not app.exception
    assert len(app.error) == 1, [error.value for error in app.error]
    message = app.error[0].value.replace(str(sources.private_dir("uploads")), "<uploads>")  # tmp_path names the test
    for fragment in fragments:
        assert fragment in message, message
    assert app.session_state[state.CURRENT] == label
    assert app.title[0].value == f"Model: {name}"


# Private working files ------------------------------------------------------------------------


def test_working_files_are_in_a_private_folder_of_this_process(private_dirs):
    uploads, exports = sources.private_dir("uploads"), exporting.export_folder("key", Plan()).parent
    root = uploads.parent
    assert exports.parent == root and root.parent == Path(tempfile.gettempdir()) and root.is_relative_to(private_dirs)
    assert root.name.startswith(sources.PRIVATE_PREFIX) and root.name != sources.PRIVATE_PREFIX  # a fresh mkdtemp name
    for folder in (root, uploads, exports):
        info = folder.lstat()
        assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.getuid()
    assert sources.private_dir("uploads") == uploads  # one folder per process (and temp folder)


def test_an_upload_is_0600_and_a_planted_symlink_is_not_followed(private_dirs):
    victim = private_dirs / "victim.txt"
    victim.write_text("keep me")
    content = b"model bytes"
    first = sources.save_upload("model.onnx", content)
    assert first.read_bytes() == content and stat.S_IMODE(first.stat().st_mode) == 0o600
    first.unlink()
    first.symlink_to(victim)
    again = sources.save_upload("model.onnx", content)
    assert again == first and not again.is_symlink() and again.read_bytes() == content
    assert victim.read_text() == "keep me"
    assert [path.name for path in first.parent.iterdir()] == ["model.onnx"]  # no temporary left behind


@pytest.mark.parametrize("name", ["", ".", "..", "dir/..", "bad\x00.onnx", "a" * 250 + ".onnx"])
def test_an_upload_name_that_names_no_file_is_refused(private_dirs, name):
    with pytest.raises(CompressError, match="not a usable file name"):
        sources.save_upload(name, b"x")


def test_an_upload_keeps_only_the_last_part_of_a_path_it_was_sent_with(private_dirs):
    path = sources.save_upload("..\\..\\evil.onnx", b"x")
    assert path.name == "evil.onnx" and path.parent.parent == sources.private_dir("uploads")


def test_only_the_newest_export_folders_are_kept(tmp_path):
    for index in range(exporting.KEPT_EXPORTS + 3):
        folder = tmp_path / f"build{index:02d}"
        folder.mkdir()
        os.utime(folder, ns=(index * 10**9, index * 10**9))
    (tmp_path / ".staging.partial").mkdir()
    removed = exporting.remove_old_exports(tmp_path)
    assert sorted(path.name for path in removed) == ["build00", "build01", "build02"]
    kept = sorted(path.name for path in tmp_path.iterdir())
    assert kept == [".staging.partial", *(f"build{index:02d}" for index in range(3, exporting.KEPT_EXPORTS + 3))]


def test_the_export_page_asks_for_a_rebuild_when_its_folder_was_removed(app, private_dirs):
    gone = private_dirs / "removed-export"
    report = {"path": str(gone / "report.md"), "bytes": 1, "zip_bytes": 1}
    app.session_state[state.EXPORTS] = {
        "digits_cnn": {"folder": str(gone), "files": {"report.md": report}, "metrics": {}}
    }
    app.switch_page("pages/export.py").run()
    assert not app.exception and not app.error
    assert any("build them again" in info.value for info in app.info)
    assert "digits_cnn" not in app.session_state[state.EXPORTS]
    assert not app.get("download_button")


# Uploads that are not what they claim ----------------------------------------------------------


def test_untrusted_torchscript_is_refused_and_the_previous_model_stays(app):
    import torch

    from compress_core.models.samples import build_architecture

    buffer = io.BytesIO()
    torch.jit.save(torch.jit.trace(build_architecture("digits_mlp").eval(), torch.zeros(1, 64)), buffer)
    app.sidebar.selectbox[0].set_value("digits_mlp").run()
    _upload(app, ("scripted.ts", buffer.getvalue()), shape="64")  # the shape given: trust is all it lacks
    _assert_one_error_and_model_kept(app, "digits_mlp", "digits_mlp", "scripted.ts", "trust")
    assert list(app.session_state[state.UPLOADED]) == []
    checkbox = next(box for box in app.checkbox if box.label.startswith("I trust this file"))
    assert not checkbox.value and "TorchScript" in checkbox.help and ".pt2" in checkbox.help
    _upload(app, ("scripted.ts", buffer.getvalue()), shape="64", trust=True)
    assert not app.error and app.session_state[state.CURRENT] == "scripted.ts (uploaded)"
    assert state.current_source(app.session_state).trust_code


def test_a_corrupt_npz_is_one_error_and_the_previous_model_stays(app, mlp_onnx):
    _upload(app, ("mlp.onnx", mlp_onnx), ("data.npz", b"PK\x03\x04 not really a zip"))
    _assert_one_error_and_model_kept(app, "digits_cnn", "digits_cnn", "data.npz: ", "zip")


def test_data_of_the_wrong_shape_is_one_error_and_the_previous_model_stays(app, mlp_onnx):
    _upload(app, ("mlp.onnx", mlp_onnx), ("data.npz", _npz(inputs=np.zeros((4, 3, 5), np.float32))))
    _assert_one_error_and_model_kept(app, "digits_cnn", "digits_cnn", "samples of shape (3, 5)", "declared [N, 64]")


def test_a_failed_upload_keeps_an_uploaded_model_current(app, mlp_onnx):
    _upload(app, ("mlp.onnx", mlp_onnx))
    assert not app.error and app.session_state[state.CURRENT] == "mlp.onnx (uploaded)"
    _upload(app, ("broken.onnx", b"\x08\x01garbage"))
    _assert_one_error_and_model_kept(app, "mlp.onnx (uploaded)", "mlp", "broken.onnx")


def test_a_library_exception_while_loading_is_one_error_line(app, mlp_onnx, monkeypatch):
    from explorer_ui import cache

    real = cache.load_model

    def crash_on_files(source, **options):
        if Path(source).suffix:
            raise RuntimeError("parser blew up\nsecond line")
        return real(source, **options)

    monkeypatch.setattr(cache, "load_model", crash_on_files)
    _upload(app, ("mlp.onnx", mlp_onnx))
    assert not app.exception
    assert [error.value for error in app.error] == [
        "mlp.onnx (uploaded): could not be loaded (RuntimeError: parser blew up)"
    ]
    assert app.session_state[state.CURRENT] == "digits_cnn"


# Background jobs that fail -----------------------------------------------------------------------


def _raise(exc: Exception) -> None:
    raise exc


def test_a_job_that_raises_anything_reports_it():
    job = BackgroundJob(lambda report, cancel: 1 / 0)
    job.wait(JOB_TIMEOUT)
    assert job.done and job.result is None
    assert job.error == "ZeroDivisionError: division by zero" and isinstance(job.exception, ZeroDivisionError)
    for message, shown in (("layer 'x': bad", "layer 'x': bad"), ("", "CompressError")):
        failed = BackgroundJob(lambda report, cancel, message=message: _raise(CompressError(message)))
        failed.wait(JOB_TIMEOUT)
        assert failed.error == shown
    fine = BackgroundJob(lambda report, cancel: 42)
    fine.wait(JOB_TIMEOUT)
    assert fine.result == 42 and fine.error is None and fine.exception is None


def _raise_runtime_error(*args, **kwargs):
    raise RuntimeError("boom in the engine")


def _finish(app: AppTest, key: str) -> None:
    """Wait for the page's background job under ``key`` and redraw. A job that had already ended
    when its page was drawn was handled in that run (its error shown there): nothing to wait for."""
    if key in app.session_state:
        job = app.session_state[key]["job"]
        job.wait(JOB_TIMEOUT)
        assert job.done
        app.run()


def test_a_sensitivity_sweep_that_raises_shows_its_message(app, monkeypatch):
    monkeypatch.setattr(sensitivity_view, "run_sensitivity", _raise_runtime_error)
    app.switch_page("pages/sensitivity.py").run()
    button(app, "Run sensitivity").click().run()
    _finish(app, state.SENSITIVITY_JOB)
    assert not app.exception
    assert [error.value for error in app.error] == ["RuntimeError: boom in the engine"]
    assert state.SENSITIVITY_JOB not in app.session_state
    assert "digits_cnn" not in app.session_state[state.SENSITIVITY]


def test_a_recovery_that_raises_shows_its_message(app, monkeypatch):
    monkeypatch.setattr(recover_panel, "finetune", _raise_runtime_error)
    app.switch_page("pages/tune.py").run()
    button(app, "All Conv layers").click().run()
    button(app, "Apply").click().run()
    button(app, "Recover").click().run()
    _finish(app, recover_panel.RECOVER_JOB)
    assert not app.exception
    assert [error.value for error in app.error] == ["RuntimeError: boom in the engine"]
    assert recover_panel.RECOVERED not in app.session_state or not app.session_state[recover_panel.RECOVERED]


# The graph server --------------------------------------------------------------------------------


def _status(server: NetronServer, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def _model_path(viewer: str) -> str:
    return "/" + urllib.parse.parse_qs(urllib.parse.urlsplit(viewer).query)["url"][0]


def _raw_status(server: NetronServer, target: bytes) -> int:
    """The status line's code for ``GET target`` sent byte for byte (no client-side checks)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as connection:
        connection.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        reply = connection.makefile("rb").readline()
    return int(reply.split()[1])


def test_a_model_is_served_only_under_the_token_of_the_session_that_published_it(server):
    mine, other = new_token(), new_token()
    path = _model_path(server.for_session(mine).publish("my model.onnx", b"model bytes"))
    assert mine in path
    assert _status(server, path) == 200
    assert _status(server, path.replace(mine, other)) == 404
    assert _status(server, path.replace(f"/{mine}", "")) == 404
    assert _status(server, path.replace(mine, mine[:-1])) == 404
    with pytest.raises(ValueError):
        server.publish("x.onnx", b"x", "guessable")


@pytest.mark.parametrize(
    "target",
    [
        b"/%00",
        b"/%00.js",
        b"/..%2f..%2f..%2fetc%2fpasswd",
        b"/..%2f__init__.py",
        b"/%zz",
        b"/%f",
        b"/%ff%fe.js",
        b"/a\x00b",
        b"/" + b"a" * (MAX_PATH_LENGTH + 10),
        b"/" + b"a" * 300 + b".js",
        b"/model/%00/x/y.onnx",
        b"/model/",
    ],
)
def test_malformed_requests_are_404_and_never_break_the_handler(server, target, monkeypatch):
    failures = []
    monkeypatch.setattr(server._httpd, "handle_error", lambda request, address: failures.append(address))
    assert _raw_status(server, target) == 404
    assert failures == []
    assert _raw_status(server, b"/index.html") == 200  # still serving


def test_the_server_keeps_the_last_published_models_of_all_sessions(server):
    sessions = [server.for_session(new_token()) for _ in range(2)]
    paths = [
        _model_path(sessions[index % 2].publish(f"m{index}.onnx", f"model {index}".encode()))
        for index in range(KEPT_MODELS + 1)
    ]
    assert _status(server, paths[0]) == 404  # evicted: the oldest
    assert all(_status(server, path) == 200 for path in paths[1:])
    assert _model_path(sessions[1].publish("m1.onnx", b"model 1")) == paths[1]  # published again: now the newest
    _model_path(sessions[0].publish("new.onnx", b"new"))
    assert _status(server, paths[1]) == 200 and _status(server, paths[2]) == 404


def test_the_layers_page_publishes_under_its_own_session_token(app):
    app.session_state["layers_tab"] = "Graph"  # only the open tab is computed: the graph's
    app.switch_page("pages/layers.py").run()
    assert not app.exception and not app.error
    token = app.session_state[VIEWER_TOKEN]
    frame = app.get("iframe")[0]
    url = next(value for value in _strings(frame.proto) if value.startswith("http://"))
    parts = urllib.parse.urlsplit(url)
    path = _model_path(url)
    assert path.startswith(f"/model/{token}/")
    base = f"http://{parts.netloc}"
    with urllib.request.urlopen(base + urllib.parse.quote(path), timeout=30) as response:
        assert response.read()[:2]  # the ONNX bytes
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen(base + urllib.parse.quote(path.replace(token, new_token())), timeout=30)


def _strings(proto) -> list[str]:
    """Every string field of a protobuf message (the iframe's URL among them)."""
    return [value for _, value in proto.ListFields() if isinstance(value, str)]


def test_a_token_is_not_shared_between_sessions(private_dirs):
    first, second = first_run(), first_run()
    for at in (first, second):
        at.session_state["layers_tab"] = "Graph"
        at.switch_page("pages/layers.py").run()
    assert first.session_state[VIEWER_TOKEN] != second.session_state[VIEWER_TOKEN]
