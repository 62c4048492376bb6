"""The Tune page's Recover panel, and the current compressed model that other pages use.

Recovery fine-tunes the model of the last applied plan (``cache.compressed``, built by Apply) with
the original as its teacher (``compress_core.analysis.recover.finetune``), in a ``BackgroundJob`` so
the page keeps a progress bar and a Stop button. The fine-tuned model is kept in
``st.session_state`` under ``RECOVERED`` as a ``CompressedModel`` (``CompressedModel.fine_tuned``:
the one non-plain value besides running jobs), tied to the history entry it was trained from:
applying another plan makes it stale, and ``compressed_model`` falls back to the plan's model.
"""

from __future__ import annotations

import threading
from typing import Any

import streamlit as st

from compress_core import CompressError, ModelHandle
from compress_core.analysis.recover import DEFAULT_EPOCHS, DEFAULT_LR, DEFAULT_TEMPERATURE, finetune
from compress_core.pipeline import CompressedModel
from compress_core.plan import Plan

from . import cache, figures, state, tuning
from .budget import Deadline
from .jobs import BackgroundJob, Report

DEFAULT_BUDGET_S = 120

RECOVER_JOB = "recover_job"  # {"label", "entry", "job": BackgroundJob} while a fine-tuning runs
RECOVERED = "recovered"  # label -> {"entry", "settings", "losses", "after", "model": CompressedModel}
LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)


def _fresh_recovery(session: state.State) -> dict[str, Any] | None:
    """The current model's fine-tuning result, if it was trained from the last applied plan."""
    entries = state.history(session)
    recovered = session.get(RECOVERED, {}).get(session[state.CURRENT])
    if not entries or recovered is None or recovered["entry"] != entries[-1]["label"]:
        return None
    return recovered


def fine_tuned_for(session: state.State, plan: Plan) -> CompressedModel | None:
    """The fine-tuned model when the Recover panel trained one from exactly ``plan``, else None."""
    recovered = _fresh_recovery(session)
    if recovered is None or Plan.from_dict(state.history(session)[-1]["plan"], "plan") != plan:
        return None
    return recovered["model"]


def compressed_model(session: state.State) -> tuple[ModelHandle, str] | None:
    """The current compressed model and a phrase naming it; None before any plan is applied.

    It is the fine-tuned model when the Recover panel trained one from the last applied plan, else
    that plan applied to the current model (cached).
    """
    entries = state.history(session)
    if not entries:
        return None
    recovered = _fresh_recovery(session)
    if recovered is not None:
        epochs = len(recovered["losses"])
        return recovered[
            "model"
        ].compressed.handle, f"plan {entries[-1]['label']}, fine-tuned for {epochs} epoch{'s' if epochs != 1 else ''}"
    return applied_model(session, entries[-1]["plan"]), f"plan {entries[-1]['label']}"


def applied(session: state.State, plan: dict[str, Any]) -> CompressedModel:
    """A plan (``Plan.to_dict()``) applied to the current model: ``cache.compressed``, shared with Apply and Export."""
    source, handle = state.current_source(session), state.current_handle(session)
    return cache.compressed(source.key, Plan.from_dict(plan, "plan"), handle)


def applied_model(session: state.State, plan: dict[str, Any]) -> ModelHandle:
    """The compressed handle of ``applied``."""
    return applied(session, plan).compressed.handle


def start(model: CompressedModel, settings: dict[str, Any], budget_s: float | None = None) -> BackgroundJob:
    """Fine-tune ``model``'s compressed model towards its original in the background, then measure it.

    Training stops after ``budget_s`` seconds (or at Stop) and keeps the model trained so far. The
    job's result has the ``settings``, the ``losses`` per epoch, the ``after`` metrics
    (``CompressedModel.evaluate``'s compressed metrics), whether the budget ran out
    (``budget_spent``) and the fine-tuned ``model`` (``CompressedModel.fine_tuned``: its export
    reuses what it measured).
    """

    def work(report: Report, cancel: threading.Event) -> dict[str, Any]:
        deadline = Deadline(budget_s, cancel)

        def progress(epoch: int, epochs: int, loss: float) -> None:
            report(epoch / epochs, deadline.progress_text(epoch / epochs, f"epoch {epoch}/{epochs}, loss {loss:.4f}"))

        tuned, losses = finetune(
            model.original.handle, model.compressed.handle, progress=progress, cancel=deadline.stop, **settings
        )
        report(1.0, "measuring the fine-tuned model")
        tuned_model = model.fine_tuned(tuned)
        return {
            "settings": settings,
            "losses": losses,
            "after": tuned_model.evaluate()["compressed"],
            "budget_spent": deadline.expired,
            "model": tuned_model,
        }

    return BackgroundJob(work)


@st.fragment(run_every=0.5)
def _progress() -> None:
    """Redraws the running fine-tuning's progress; stores its result and reruns the page when it ends."""
    session = st.session_state
    running = session[RECOVER_JOB]
    job = running["job"]
    st.progress(job.fraction, text=f"Recovering {running['label']} ({running['entry']}): {job.text}")
    if st.button(
        "Stop", key="recover_stop", help="Stops before the next batch; the model trained so far is kept and measured."
    ):
        job.cancel.set()
    if job.done:
        del session[RECOVER_JOB]
        if job.error:
            session[state.ERROR] = job.error
        else:
            session.setdefault(RECOVERED, {})[running["label"]] = {**job.result, "entry": running["entry"]}
        st.rerun()


def render_recover_panel() -> None:
    """The Recover panel: settings, a Recover button with progress and Stop, and before / after metrics.

    Draws nothing until a plan has been applied; the fine-tuned model then becomes the current
    compressed model (``compressed_model``).
    """
    session = st.session_state
    entries = state.history(session)
    if not entries:
        return
    source, handle = state.current_source(session), state.current_handle(session)
    entry = entries[-1]
    st.subheader("Recover")
    st.caption(
        f"Fine-tunes the model of plan {entry['label']} with the original as its teacher (knowledge distillation): "
        "pruned weights stay zero and quantized weights stay on their grids, so the size does not change."
    )
    if handle.backend != "torch":
        st.info(
            f"'{handle.name}' is an ONNX model: fine-tuning needs a torch model (load its .pt, .pt2 or TorchScript file)."
        )
        return
    epochs_column, lr_column, temperature_column = st.columns(3)
    epochs = epochs_column.number_input("Epochs", 1, 100, DEFAULT_EPOCHS, key="recover_epochs")
    lr = lr_column.select_slider(
        "Learning rate", LEARNING_RATES, value=DEFAULT_LR, format_func="{:g}".format, key="recover_lr"
    )
    temperature = temperature_column.slider(
        "Temperature",
        1.0,
        10.0,
        DEFAULT_TEMPERATURE,
        0.5,
        key="recover_temperature",
        disabled=handle.task != "classification",
        help="Softens the teacher's and the student's probabilities; classification models only.",
    )
    budget = st.number_input(
        "Time budget (s)",
        min_value=5,
        value=DEFAULT_BUDGET_S,
        step=30,
        key="recover_budget",
        help=f"Training stops when this time is spent (default {DEFAULT_BUDGET_S} s); the model trained so far is "
        "kept and measured.",
    )
    running = session.get(RECOVER_JOB)
    if running is None and st.button("Recover", type="primary"):
        try:
            model = applied(session, entry["plan"])
            settings = {"epochs": int(epochs), "lr": float(lr), "temperature": float(temperature)}
            running = session[RECOVER_JOB] = {
                "label": session[state.CURRENT],
                "entry": entry["label"],
                "job": start(model, settings, float(budget)),
            }
        except CompressError as exc:
            st.error(str(exc))
    if running is not None:
        _progress()
    state.show_error(session)

    recovered = _fresh_recovery(session)
    if recovered is None:
        return
    before, after = entry["metrics"], recovered["after"]
    title, value, change = tuning.quality_figure(handle, after, before)
    st.metric(f"{title} after recovery", value, delta=f"{change} vs before")
    columns = {
        "original": cache.baseline_metrics(source.key, handle),
        f"before ({entry['label']})": before,
        "after recovery": after,
    }
    st.dataframe(tuning.summary_table(columns, handle), hide_index=True)
    losses = recovered["losses"]
    if len(losses) > 1:
        st.plotly_chart(
            figures.curves(
                range(1, len(losses) + 1), {"training loss": losses}, "Distillation loss per epoch", "epoch", "loss"
            )
        )
    if recovered.get("budget_spent"):
        st.caption(
            f"Training stopped at its time budget after {len(losses)} epoch(s); this is the model trained so far."
        )
    for note in after["notes"]:
        if note not in before["notes"]:
            st.caption(note)
