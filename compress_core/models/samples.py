"""The built-in sample models as handles: digits models trained in ``sample_models``, and ``minilm``."""

from __future__ import annotations

import functools

import sample_models
from compress_core.errors import CompressError
from compress_core.models.handle import EvalData, Inputs, InputSpec, ModelHandle
from sample_models.minilm import INSTALL_HINT, load_minilm

MINILM = "minilm"
MINILM_INPUT = "input_ids"


def digits_names() -> tuple[str, ...]:
    """The digits samples, whose architectures also accept a user's state_dict."""
    return tuple(sample_models.SAMPLE_NAMES)


def sample_names() -> tuple[str, ...]:
    """Every sample name ``load_model`` accepts, ``minilm`` last (it needs an optional extra)."""
    return (*digits_names(), MINILM)


def input_spec(name: str) -> InputSpec:
    """The input spec of a digits sample's architecture."""
    return InputSpec(tuple(sample_models.input_shape(name)), "float32")


def build_architecture(name: str):
    """An untrained digits architecture, for loading a user's state_dict into it."""
    if name not in digits_names():
        raise CompressError(f"unknown architecture '{name}'; built-in architectures: {', '.join(digits_names())}")
    return sample_models.build_model(name)


def load(name: str) -> ModelHandle:
    """A sample by name, with its evaluation data: the digits test split, or minilm's sentences."""
    if name == MINILM:
        return _load_minilm()
    module = sample_models.load_sample(name)
    _, _, x_test, y_test = sample_models.digits_split(name)
    data = EvalData(inputs=Inputs.single(x_test), labels=y_test, origin="test split of scikit-learn digits")
    return ModelHandle(
        name=name, backend="torch", model=module, input_specs=(input_spec(name),), data=data, kind="sample"
    )


@functools.lru_cache(maxsize=1)
def _minilm_parts():
    return load_minilm()


def _load_minilm() -> ModelHandle:
    try:
        module, token_ids = _minilm_parts()
    except ImportError as exc:
        raise CompressError(f"the sample 'minilm' is not installed; install it with: {INSTALL_HINT}") from exc
    data = EvalData(inputs=Inputs.single(token_ids, MINILM_INPUT), labels=None, origin="built-in sentences")
    spec = InputSpec(tuple(token_ids.shape[1:]), "int64", MINILM_INPUT)
    return ModelHandle(
        name=MINILM, backend="torch", model=module, input_specs=(spec,), data=data, kind="sample", task="embedding"
    )
