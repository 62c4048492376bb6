"""The app's session state: plain data under a few keys, and the callbacks that change the model.

``st.session_state`` holds plain data: the current model's label, the sources of uploaded models,
and per model its plan (recipe dict), a short apply history, its sensitivity table, export folder and
latency rows; plus the selected layer. The one exception is a running sensitivity sweep (its
``BackgroundJob``, with the label of the model it measures) until it ends. The loaded models
themselves live in ``cache`` (shared, never mutated). Functions take the state mapping as an
argument; the widget callbacks read ``st.session_state``.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

import streamlit as st

from compress_core import CompressError, LayerInfo, ModelHandle
from compress_core.plan import Plan

from . import cache, tuning
from .jobs import describe
from .sources import DEFAULT_SAMPLE, ModelSource, sample_sources, upload_source

CURRENT = "current_model"  # label of the loaded model
CHOICE = "model_choice"  # the sidebar's select box
PENDING_CHOICE = "pending_model_choice"  # what the select box shows from the next run on
UPLOADED = "uploaded_sources"  # label -> ModelSource.to_dict() of models uploaded in this session
PLANS = "plans"  # label -> Plan.to_dict()
HISTORY = "history"  # label -> list of {"label", "plan", "metrics"}, newest last
LAYER = "selected_layer"
SENSITIVITY = "sensitivity"  # label -> SensitivityResult.to_dict()
SENSITIVITY_JOB = "sensitivity_job"  # {"label", "job": BackgroundJob} of the running sweep, while it runs
EXPORTS = "exports"  # label -> the built export folder: {"folder", "files", "metrics"}
LATENCY = "latency"  # label -> the latency benchmark of that export: {"rows", "plan", "stopped", "seconds", "budget_s"}
ERROR = "load_error"  # a one-line error message to show once
EDITOR_VERSION = "plan_editor_version"  # bumped to give the plan editor fresh rows
UPLOAD_MODEL = "upload_model"  # the Model page's model file uploader
UPLOAD_DATA = "upload_data"  # the Model page's evaluation data uploader
HISTORY_LENGTH = 5
ROUTER = "app.py"
LOG = logging.getLogger(__name__)

State = MutableMapping[Any, Any]  # st.session_state is a MutableMapping[str | int, Any]; our keys are str


def init(state: State) -> None:
    """Fill in the defaults (the app opens on ``digits_cnn``) and sync the model select box.

    Call before the select box is drawn: only then may its value be set.
    """
    state.setdefault(CURRENT, DEFAULT_SAMPLE)
    state.setdefault(CHOICE, state[CURRENT])
    if PENDING_CHOICE in state:
        state[CHOICE] = state.pop(PENDING_CHOICE)
    state.setdefault(UPLOADED, {})
    state.setdefault(PLANS, {})
    state.setdefault(HISTORY, {})
    state.setdefault(SENSITIVITY, {})
    state.setdefault(EXPORTS, {})
    state.setdefault(LATENCY, {})


def page_model(state: State) -> tuple[ModelSource, ModelHandle]:
    """The current model's source and handle, for a page; a page run without the router goes to it.

    Streamlit treats ``pages/`` as an old-style pages folder until ``st.navigation`` has run once,
    so the first request to a fresh server for a page URL runs that page file alone, without
    ``app.py``: such a run is sent to the router (the Model page).
    """
    if CURRENT not in state:
        st.switch_page(ROUTER)
    return current_source(state), current_handle(state)


def sources(state: State) -> dict[str, ModelSource]:
    """Every model the user can pick: the samples, then this session's uploads."""
    uploaded = {label: ModelSource.from_dict(data) for label, data in state[UPLOADED].items()}
    return {**sample_sources(), **uploaded}


def current_source(state: State) -> ModelSource:
    """The source of the current model."""
    return sources(state)[state[CURRENT]]


def current_handle(state: State) -> ModelHandle:
    """The current model (cached; loading it succeeded when it became current)."""
    return cache.load_handle(current_source(state))


def switch_model(state: State, source: ModelSource) -> bool:
    """Load ``source`` and make it current; when loading fails (a ``CompressError``, or any other
    exception a hostile file provokes in a library) keep the previous model and remember one line
    for ``ERROR``. Returns whether the switch happened."""
    try:
        cache.load_handle(source)
    except CompressError as exc:
        return _keep_current(state, str(exc))
    except Exception as exc:  # noqa: BLE001 - a hostile file may break any library's parser
        LOG.error("loading %s failed", source.label, exc_info=exc)
        return _keep_current(state, f"{source.label}: could not be loaded ({describe(exc)})")
    if source.label not in sample_sources():
        state[UPLOADED][source.label] = source.to_dict()
    state[CURRENT] = state[PENDING_CHOICE] = source.label
    state.pop(LAYER, None)
    return True


def measure_as(state: State, source: ModelSource, task: str, output: int, blank_text: str) -> bool:
    """Switch to ``source`` measured as ``task`` with ranked ``output`` and CTC blank (``blank_text``:
    an integer, or empty for none); errors go to ``ERROR`` and the current model stays."""
    blank_text = blank_text.strip()
    if blank_text and not blank_text.lstrip("-").isdigit():
        return _keep_current(state, f"CTC blank '{blank_text}' is not an integer class id (or leave it empty)")
    return switch_model(state, source.with_quality(task, output, int(blank_text) if blank_text else None))


def _keep_current(state: State, message: str) -> bool:
    """A failed switch: remember ``message`` for ``ERROR`` and keep showing the current model."""
    state[ERROR] = message
    state[PENDING_CHOICE] = state[CURRENT]
    return False


def on_model_choice() -> None:
    """Callback of the sidebar's model select box."""
    state = st.session_state
    switch_model(state, sources(state)[state[CHOICE]])


def load_upload(
    state: State, model_file: Any, data_file: Any, shape_text: str, architecture: str | None, trust_code: bool
) -> bool:
    """Save an uploaded model (and optional ``.npz`` data) and switch to it; errors go to ``ERROR``
    and the previous model stays current.

    ``model_file`` and ``data_file`` are Streamlit ``UploadedFile`` objects (or None);
    ``trust_code`` lets the file run code when loaded (TorchScript, ``.pt2``, a full pickle).
    """
    if model_file is None:
        state[ERROR] = "choose a model file to upload first"
        return False
    try:
        source = upload_source(
            model_file.name,
            model_file.getvalue(),
            shape_text=shape_text,
            data_name=None if data_file is None else data_file.name,
            data_bytes=None if data_file is None else data_file.getvalue(),
            architecture=architecture,
            trust_code=trust_code,
        )
    except (CompressError, OSError) as exc:  # OSError: the upload could not be saved (disk full)
        state[ERROR] = describe(exc)
        return False
    return switch_model(state, source)


def remember(widget_key: str, plain_key: str) -> None:
    """Callback: copy a page widget's value to a plain key, which outlives the page's widgets."""
    st.session_state[plain_key] = st.session_state[widget_key]


def keep_settings(state: State, prefix: str, *skip: str) -> None:
    """Keep the session values of a page's settings (keys starting with ``prefix``, but not ``skip``)
    through a run in which their widgets are not drawn (a lazy tab that is closed): Streamlit drops a
    widget's value when the widget is missing from a run, unless the value is set again."""
    for key in [key for key in state if str(key).startswith(prefix) and key not in skip]:
        state[key] = state[key]


def pick_layer(state: State, layers: list[LayerInfo], default: str, widget_key: str) -> LayerInfo:
    """The layer selectbox shared by pages: it opens on the layer chosen on any page (else ``default``)
    and remembers the choice for the other pages."""
    names = [layer.name for layer in layers]
    remembered = state.get(LAYER)
    chosen = remembered if isinstance(remembered, str) and remembered in names else default
    name = st.selectbox(
        "Layer", names, index=names.index(chosen), key=widget_key, on_change=remember, args=(widget_key, LAYER)
    )
    return next(item for item in layers if item.name == name)


def show_error(state: State) -> None:
    """Show (once) the message of the last failed load."""
    message = state.pop(ERROR, None)
    if message:
        st.error(message)


def plan(state: State) -> Plan:
    """The current model's plan (empty at first)."""
    return Plan.from_dict(state[PLANS].get(state[CURRENT], Plan().to_dict()), "plan")


def set_plan(state: State, new_plan: Plan) -> None:
    """Store the current model's plan as plain data."""
    state[PLANS][state[CURRENT]] = new_plan.to_dict()


def replace_plan(state: State, new_plan: Plan) -> None:
    """Store a plan made outside the table editor (bulk edit, recipe, reset) and refresh the editor."""
    set_plan(state, new_plan)
    state[EDITOR_VERSION] = state.get(EDITOR_VERSION, 0) + 1


def editor_key(state: State) -> str:
    """The plan editor's widget key: a new one after every ``replace_plan``."""
    return f"plan_editor_{state.get(EDITOR_VERSION, 0)}"


def on_plan_edit(key: str, rows: list[dict[str, Any]]) -> None:
    """Callback of the plan editor: its edits become the plan; a bad value is an error, the plan kept."""
    session = st.session_state
    try:
        set_plan(session, tuning.rows_plan(tuning.edit_rows(rows, session[key]["edited_rows"])))
    except CompressError as exc:
        session[ERROR] = str(exc)
        replace_plan(session, plan(session))


def history(state: State) -> list[dict[str, Any]]:
    """The current model's last applied plans with their metrics, oldest first."""
    return state[HISTORY].get(state[CURRENT], [])


def add_history(state: State, entry: dict[str, Any]) -> None:
    """Append one applied plan's result, keeping the last ``HISTORY_LENGTH``."""
    entries = state[HISTORY].setdefault(state[CURRENT], [])
    entries.append(entry)
    del entries[:-HISTORY_LENGTH]
