"""Recovery: fine-tune a compressed torch model with the original model as its teacher.

The loss is knowledge distillation (Hinton et al. 2015): for classification, the KL divergence
between the teacher's and the student's probabilities softened at temperature ``T``, times ``T**2``
(so its gradients keep their size as ``T`` changes), weighted by ``alpha``, plus ``1 - alpha``
times the cross-entropy with the labels where the data has labels. For embedding models (``task ==
"embedding"``, e.g. ``minilm``) the loss is the mean cosine distance ``1 - cos`` between the
student's and the teacher's embeddings; ``temperature`` and ``alpha`` do not apply.

The compression is respected throughout: pruned weights have their gradients zeroed and their
masks re-applied after every optimizer step, so they stay exactly zero; quantized weights are
trained with fake quantization and a straight-through estimator (``compress_core.ops.fake_quant``) and
snapped onto their grid at the end, and the record's ``QuantizedWeight`` entries are replaced by
the final grids; low-rank factors and every other parameter train as they are. BatchNorm
statistics are re-estimated on the training data (the student trains in ``train()`` mode), except
in a ``torch.export`` program, which cannot switch modes and trains in the mode it was exported in.
A program exported with a static batch trains in batches of that size (``ModelHandle.batch_size_for``;
the last one padded, its copies left out of the loss).

Digits samples train on their training split (the handle's data is the test split, which stays
untouched for evaluation); any other model trains on its own evaluation data unless ``data`` is
given, and a note says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compress_core.errors import CompressError
from compress_core.models import samples
from compress_core.models.evaldata import check_inputs
from compress_core.models.handle import CompressionRecord, EvalData, Inputs, ModelHandle
from compress_core.ops.fake_quant import snap_to_grids, straight_through
from compress_core.ops.quantize import QuantizedWeight
from compress_core.transform.torch_backend import copy_module
from sample_models import digits_split

ProgressCallback = Callable[[int, int, float], None]
LossFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]

DEFAULT_EPOCHS = 10
DEFAULT_LR = 1e-3
DEFAULT_TEMPERATURE = 4.0
DEFAULT_ALPHA = 0.5
DEFAULT_BATCH_SIZE = 64
EXPORTED_KIND = "exported"  # ModelHandle.kind of a torch.export (.pt2) program


def finetune(
    original: ModelHandle,
    compressed: ModelHandle,
    *,
    epochs: int = DEFAULT_EPOCHS,
    lr: float = DEFAULT_LR,
    temperature: float = DEFAULT_TEMPERATURE,
    alpha: float = DEFAULT_ALPHA,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
    data: EvalData | None = None,
    seed: int = 0,
) -> tuple[ModelHandle, list[float]]:
    """Fine-tune a copy of ``compressed`` towards ``original``; return the new handle and the loss per epoch.

    ``progress(epoch, epochs, loss)`` is called after each epoch (epochs count from 1).
    ``cancel()`` is asked before each batch; when it returns True training stops, and the model
    trained so far is returned (still masked and on its grids) with the epochs completed so far.
    ``data`` replaces the training data (see the module doc). ``seed`` fixes the batch order and
    dropout, without touching the global random state. Neither input handle is modified.
    Raises ``CompressError`` for an ONNX-backed ``compressed`` handle or a bad setting.
    """
    _check_settings(epochs=epochs, lr=lr, temperature=temperature, alpha=alpha, batch_size=batch_size)
    if compressed.backend != "torch":
        raise CompressError(
            f"'{compressed.name}' is an ONNX model; fine-tuning needs a torch model (load the .pt, .pt2 or TorchScript file instead)"
        )
    if original.task == "ids":
        raise CompressError(
            f"'{original.name}' outputs class ids (integers), which carry no gradient to distil; "
            "fine-tune a model whose output is the logits"
        )
    train, origin_note = _training_data(original, data)
    check_inputs("training data", compressed.input_specs, train.inputs)
    record = compressed.compression or CompressionRecord(plan=None)
    batch_size = compressed.batch_size_for(batch_size)
    student = copy_module(compressed.model)
    parameters = dict(student.named_parameters())
    for name in (*record.masks, *record.quantized):
        if name not in parameters:
            raise CompressError(f"weight '{name}' of the compression record is not a parameter of the compressed model")

    inputs = train.inputs
    targets = torch.from_numpy(original.run(train.inputs).astype(np.float32))
    labels = (
        None if train.labels is None or original.task != "classification" else torch.from_numpy(np.array(train.labels))
    )
    loss_function = _loss_function(original.task, temperature, alpha)
    optimizer = torch.optim.Adam([p for p in parameters.values() if p.requires_grad], lr=lr)
    history: list[float] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _set_training(student, compressed, True)
        for epoch in range(epochs):
            loss = _run_epoch(
                student,
                parameters,
                record,
                optimizer,
                loss_function,
                inputs,
                targets,
                labels,
                batch_size,
                lambda batch: compressed.call(student, compressed.padded(batch)),
                cancel,
            )
            if loss is None:
                break
            history.append(loss)
            if progress is not None:
                progress(epoch + 1, epochs, loss)
        _set_training(student, compressed, False)
    stopped = "" if len(history) == epochs else f" (cancelled after {len(history)} of {epochs} epochs)"
    note = f"fine-tuned for {len(history)} epoch{'s' if len(history) != 1 else ''} by distillation from the original{stopped}; {origin_note}"
    if compressed.kind == EXPORTED_KIND:
        note += f"; a torch.export program trains in the mode it was exported in, in batches of {batch_size}"
    tuned_record = _tuned_record(record, snap_to_grids(parameters, record.quantized), note)
    return compressed.replace(model=student, compression=tuned_record), history


def _set_training(student: nn.Module, handle: ModelHandle, training: bool) -> None:
    """Train or eval mode; a torch.export program refuses to switch, and keeps the mode it was exported in."""
    if handle.kind != EXPORTED_KIND:
        student.train(training)


def _tuned_record(record: CompressionRecord, quantized: dict[str, QuantizedWeight], note: str) -> CompressionRecord:
    """A copy of ``record`` with the final grids and the fine-tuning notes."""
    notes = [*record.notes, note]
    if record.layer_sqnr:
        notes.append("layer SQNR values describe the weights before fine-tuning")
    return dataclasses.replace(
        record,
        masks={name: mask.clone() for name, mask in record.masks.items()},
        quantized=quantized,
        layer_sqnr=dict(record.layer_sqnr),
        nm_patterns=dict(record.nm_patterns),
        notes=notes,
    )


def training_data(handle: ModelHandle) -> EvalData:
    """The data to fine-tune on: a digits sample's training split, else the handle's own data.

    Compressed handles are named ``"<name> (compressed)"``; the sample name before the suffix counts.
    """
    base_name = handle.name.split(" (", 1)[0]
    if handle.kind == "sample" and base_name in samples.digits_names():
        x_train, y_train, _, _ = digits_split(base_name)
        return EvalData(inputs=Inputs.single(x_train), labels=y_train, origin="training split of scikit-learn digits")
    return handle.data


def _training_data(original: ModelHandle, data: EvalData | None) -> tuple[EvalData, str]:
    """The training data and a note on where it came from (with a warning when it is the evaluation data)."""
    if data is not None:
        return data, f"trained on {data.origin}"
    train = training_data(original)
    if train is original.data:
        return (
            train,
            f"trained on the evaluation data itself ({train.origin}), so metrics after fine-tuning are optimistic",
        )
    return train, f"trained on the {train.origin}"


def _check_settings(*, epochs: int, lr: float, temperature: float, alpha: float, batch_size: int) -> None:
    """One-line errors for settings out of range."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise CompressError(f"epochs {epochs!r} is not allowed; use an integer >= 1")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise CompressError(f"batch size {batch_size!r} is not allowed; use an integer >= 1")
    if not lr > 0:
        raise CompressError(f"learning rate {lr!r} is not allowed; use a number > 0")
    if not temperature > 0:
        raise CompressError(f"temperature {temperature!r} is not allowed; use a number > 0")
    if not 0 <= alpha <= 1:
        raise CompressError(
            f"alpha {alpha!r} is not allowed; use a number in [0, 1] (the weight of the distillation term)"
        )


# The axis holding the classes of each task's logits; ``distillation_loss`` softmaxes over it.
CLASS_AXES = {"classification": 1, "dense": 1, "sequence": 2}


def _loss_function(task: str, temperature: float, alpha: float) -> LossFunction:
    """``loss(student_outputs, teacher_outputs, labels_or_None)`` for the task."""
    if task == "embedding":
        return lambda student, teacher, labels: cosine_distance(student, teacher)
    class_axis = CLASS_AXES.get(task, 1)

    def classification(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        soft = distillation_loss(student, teacher, temperature, class_axis)
        return soft if labels is None else alpha * soft + (1 - alpha) * F.cross_entropy(student, labels)

    return classification


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, class_axis: int = 1
) -> torch.Tensor:
    """``T**2 * KL(teacher || student)`` of the probabilities over ``class_axis`` softened at
    temperature ``T``, averaged over every position that has a distribution (each sample of
    ``[N, C]``, each step of a sequence ``[N, T, C]`` with ``class_axis=2``, each pixel of a map)."""

    def rows(logits: torch.Tensor) -> torch.Tensor:
        return logits.movedim(class_axis, -1).reshape(-1, logits.shape[class_axis])

    student = F.log_softmax(rows(student_logits) / temperature, dim=1)
    teacher = F.log_softmax(rows(teacher_logits) / temperature, dim=1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature**2


def cosine_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - cos`` between the flattened outputs of student and teacher."""
    return (1 - F.cosine_similarity(student.flatten(1), teacher.flatten(1), dim=1)).mean()


def _run_epoch(
    student: nn.Module,
    parameters: Mapping[str, nn.Parameter],
    record: CompressionRecord,
    optimizer: torch.optim.Optimizer,
    loss_function: LossFunction,
    inputs: Inputs,
    targets: torch.Tensor,
    labels: torch.Tensor | None,
    batch_size: int,
    forward: Callable[[Inputs], torch.Tensor],
    cancel: Callable[[], bool] | None,
) -> float | None:
    """One pass over the data in shuffled batches; the mean loss, or None when cancelled.

    ``forward`` runs the student on a batch, padded to a fixed-batch program's size (the padding's
    outputs follow the real ones and are dropped).
    """
    total = 0.0
    for batch in torch.randperm(len(inputs)).split(batch_size):
        if cancel is not None and cancel():
            return None
        optimizer.zero_grad()
        with straight_through(parameters, record.quantized):
            outputs = forward(inputs[batch.numpy()])[: len(batch)]
            loss = loss_function(outputs, targets[batch], None if labels is None else labels[batch])
            loss.backward()
        _hold_masks(parameters, record.masks, gradients=True)
        optimizer.step()
        _hold_masks(parameters, record.masks, gradients=False)
        total += loss.item() * len(batch)
    return total / len(inputs)


def _hold_masks(parameters: Mapping[str, nn.Parameter], masks: Mapping[str, torch.Tensor], *, gradients: bool) -> None:
    """Zero the pruned entries of the gradients (before a step) or of the weights (after it)."""
    with torch.no_grad():
        for name, mask in masks.items():
            target = parameters[name].grad if gradients else parameters[name]
            if target is not None:
                target.mul_(mask)
