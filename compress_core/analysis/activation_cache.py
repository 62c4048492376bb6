"""Run a torch model from the first use of one weight, re-using the activations computed before it.

A sensitivity sweep changes one layer's weight at a time. Everything the model computes before that
weight is first read is unchanged, so it is computed once. ``StagedModel`` traces the model with
``torch.fx`` into an ordered list of stages (the graph's nodes: module calls, functions, methods),
checks that running the stages in order reproduces the model's output, and then

* ``advance(cut)`` moves a cached state (the values alive at a stage boundary, per batch) forward,
  running only the stages between the previous boundary and ``cut`` with the current weights;
* ``run_from(state)`` runs the remaining stages for every batch and returns the model's output.

A model that ``torch.fx`` cannot trace (data-dependent control flow, TorchScript), or whose trace
does not reproduce its output, gets ``None`` from ``StagedModel.build``: callers then run full passes.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from compress_core.models.handle import first_tensor

INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}
MATCH_RTOL = 1e-4
MATCH_ATOL = 1e-5


@dataclass
class StageState:
    """The values alive just before stage ``cut``, one environment per batch. A value is whatever its
    node computed (a tensor, a size, a tuple of tensors...), as in ``torch.fx.Interpreter``."""

    cut: int
    batches: list[dict[fx.Node, Any]]


class StagedModel:
    """A traced model whose forward can start at any stage boundary (see the module docstring)."""

    def __init__(self, graph_module: fx.GraphModule) -> None:
        self.graph_module = graph_module
        self.nodes = list(graph_module.graph.nodes)
        self.modules = dict(graph_module.named_modules())
        index = {node: i for i, node in enumerate(self.nodes)}
        self._last_use = {node: max((index[user] for user in node.users), default=index[node]) for node in self.nodes}
        self._index = index
        self.mutates = any(self._is_inplace(node) for node in self.nodes)

    @classmethod
    def build(cls, model: nn.Module, example: torch.Tensor) -> StagedModel | None:
        """Trace ``model`` (its parameters are shared, not copied); None unless the trace has a single
        input and reproduces the model's output on ``example``."""
        try:
            graph_module = fx.symbolic_trace(model)
        except Exception:  # noqa: BLE001 - any tracing failure means "not a staged model"
            return None
        staged = cls(graph_module)
        if sum(node.op == "placeholder" for node in staged.nodes) != 1:
            return None
        with torch.inference_mode():
            expected = first_tensor(model(example))
            try:
                got = staged.run_from(staged.start([example]))[0]
            except Exception:  # noqa: BLE001 - a trace that cannot run is not used
                return None
        if not isinstance(expected, torch.Tensor) or got.shape != expected.shape:
            return None
        tolerance = MATCH_ATOL * max(float(expected.abs().max()), 1.0)
        return staged if torch.allclose(got, expected, rtol=MATCH_RTOL, atol=tolerance) else None

    def cut_for(self, weight: torch.Tensor) -> int:
        """Index of the first stage that reads ``weight`` (by identity, so tied weights count); 1, a
        full pass, when no stage does."""
        for i, node in enumerate(self.nodes):
            if node.op == "call_module" and any(p is weight for p in self.modules[node.target].parameters()):
                return i
            if node.op == "get_attr" and self._attribute(node.target) is weight:
                return i
        return 1

    def start(self, batches: list[torch.Tensor]) -> StageState:
        """The state before the first stage: each batch bound to the model's input."""
        placeholder = self.nodes[0]
        return StageState(cut=1, batches=[{placeholder: batch} for batch in batches])

    def advance(self, state: StageState, cut: int) -> StageState:
        """``state`` moved forward to boundary ``cut`` (>= ``state.cut``), keeping only live values."""
        batches = []
        for env in state.batches:
            env = dict(env)
            for node in self.nodes[state.cut : cut]:
                env[node] = self._execute(node, env)
            batches.append({node: value for node, value in env.items() if self._last_use[node] >= cut})
        return StageState(cut=cut, batches=batches)

    def run_from(self, state: StageState) -> list[torch.Tensor]:
        """The model's output for every batch, running the stages from ``state.cut`` to the end."""
        outputs = []
        for env in state.batches:
            env = {node: _clone(value) for node, value in env.items()} if self.mutates else dict(env)
            for node in self.nodes[state.cut :]:
                if node.op == "output":
                    outputs.append(first_tensor(fx.node.map_arg(node.args[0], env.__getitem__)))
                    break
                env[node] = self._execute(node, env)
        return outputs

    def _execute(self, node: fx.Node, env: dict[fx.Node, Any]) -> object:
        args = fx.node.map_arg(node.args, env.__getitem__)
        kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
        target = node.target
        if node.op == "call_function":
            assert callable(target), f"fx call_function node {node.name} has target {target!r}"
            return target(*args, **kwargs)
        assert isinstance(target, str), f"fx {node.op} node {node.name} has target {target!r}, not a name"
        if node.op == "call_module":
            return self.modules[target](*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], target)(*args[1:], **kwargs)
        if node.op == "get_attr":
            return self._attribute(target)
        raise AssertionError(f"unexpected fx node {node.op} after the input")

    def _attribute(self, target: str) -> object:
        value: object = self.graph_module
        for part in target.split("."):
            value = getattr(value, part)
        return value

    def _is_inplace(self, node: fx.Node) -> bool:
        if node.kwargs.get("inplace"):
            return True
        if node.op == "call_module":
            return bool(getattr(self.modules[node.target], "inplace", False))
        if node.op == "call_method":
            return str(node.target).endswith("_")
        return node.op == "call_function" and node.target in INPLACE_FUNCTIONS


def _clone(value: object) -> object:
    return value.clone() if isinstance(value, torch.Tensor) else value
