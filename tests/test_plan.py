"""Plans and recipe files: precedence, validation, round trips."""

from __future__ import annotations

import pytest

from compress_core import CompressError
from compress_core.plan import Plan
from compress_core.plan.layer_config import LayerConfig, PruneConfig

LAYERS = ["conv1", "conv2", "fc1", "fc2", "head"]
RECIPE = """
version: 1
default: {bits: 8}
layers:
  conv1: {bits: 4, scheme: asymmetric}
  "re:.*fc.*": {prune: {ratio: 0.5, kind: structured}}
  fc2: {rank: 0.5}
  head: null
"""


def test_precedence_exact_then_first_regex_then_default():
    plan = Plan.from_text(RECIPE)
    resolved = plan.resolve(LAYERS)
    assert resolved["conv1"] == LayerConfig(bits=4, scheme="asymmetric")
    assert resolved["conv2"] == LayerConfig(bits=8)
    assert resolved["fc1"] == LayerConfig(prune=PruneConfig(0.5, "structured"))
    assert resolved["fc2"] == LayerConfig(rank=0.5)
    assert "head" not in resolved


def test_first_matching_regex_wins():
    plan = Plan(layers={"re:fc.*": LayerConfig(bits=6), "re:fc1": LayerConfig(bits=2)})
    assert plan.resolve(LAYERS)["fc1"].bits == 6


def test_aliases_let_a_recipe_name_the_modules_an_onnx_files_nodes_came_from():
    aliases = {"/conv1/Conv": "conv1", "/fc/MatMul": "fc", "/fc/MatMul_1": "fc", "/head/Gemm": "head"}
    plan = Plan(
        layers={
            "conv1": LayerConfig(bits=4),
            "fc": LayerConfig(bits=6),
            "/fc/MatMul_1": LayerConfig(bits=2),  # a layer's own name wins over its alias
            "head": None,
            "re:.*Gemm": LayerConfig(bits=3),
        }
    ).with_aliases(aliases)
    resolved = plan.resolve(list(aliases))
    assert {name: config.bits for name, config in resolved.items()} == {
        "/conv1/Conv": 4,
        "/fc/MatMul": 6,
        "/fc/MatMul_1": 2,
    }  # head: null beats the regex, as an exact entry does
    regexes = Plan(
        layers={"fc": LayerConfig(bits=6), "re:f.*": LayerConfig(bits=5), "re:.*": LayerConfig(bits=4)}
    ).with_aliases(aliases)
    # A regex over the aliases becomes exact entries after the exact ones, in order; one that also matches
    # a layer's own name (re:.*) stays a regex.
    assert {name: config.bits for name, config in regexes.resolve(list(aliases)).items()} == {
        "/conv1/Conv": 4,
        "/fc/MatMul": 6,
        "/fc/MatMul_1": 6,
        "/head/Gemm": 4,
    }
    assert "re:f.*" not in regexes.layers and "re:.*" in regexes.layers
    # the torch model's precedence holds on its export: the first regex that matches either name decides
    scoped = {"/a/dense/MatMul": "a.dense", "/b/proj/MatMul": "b.proj"}
    ordered = Plan(layers={"re:.*": LayerConfig(bits=4), "re:.*dense": LayerConfig(bits=8)}).with_aliases(scoped)
    assert ordered.config_for("/a/dense/MatMul").bits == 4
    by_alias = Plan(layers={"re:b\\..*": LayerConfig(bits=5)}).with_aliases(scoped)  # decides through the alias alone
    assert {name: config.bits for name, config in by_alias.resolve(list(scoped)).items()} == {"/b/proj/MatMul": 5}
    unknown = Plan(layers={"conv9": LayerConfig(bits=4)}).with_aliases(aliases)
    with pytest.raises(CompressError, match="layer 'conv9' is not a compressible layer"):
        unknown.resolve(list(aliases))


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_save_and_load_round_trip(tmp_path, suffix):
    plan = Plan.from_text(RECIPE)
    plan.layers["conv2"] = LayerConfig(bits=3, scheme="kmeans", granularity="tensor", prune=PruneConfig(kind="2:4"))
    plan.layers["fc2"] = LayerConfig(bits=8, smooth=0.8)
    path = plan.save(tmp_path / f"recipe{suffix}")
    assert Plan.load(path) == plan
    assert Plan.load(path).layers["fc2"].smooth == 0.8
    assert Plan.load(path).layers["conv2"].prune.ratio == 0.5


@pytest.mark.parametrize(
    "text,message",
    [
        ("version: 2\nlayers: {}", r"version 2 is not supported"),
        ("version: 1\nextra: 3", r"unknown key\(s\) extra"),
        (
            "version: 1\nlayers: {conv1: {bits: 9}}",
            r"layer 'conv1': bits 9 is not allowed; use null \(float\), 2..8 or 16",
        ),
        ("version: 1\nlayers: {conv1: {bits: 1}}", r"bits 1 is not allowed"),
        ("version: 1\nlayers: {conv1: {bitz: 4}}", r"layer 'conv1': unknown key\(s\) bitz"),
        (
            "version: 1\nlayers: {conv1: {prune: {ratio: 1.0}}}",
            r"prune ratio 1.0 is not allowed; use a number in \[0, 1\)",
        ),
        ("version: 1\nlayers: {conv1: {prune: {ratio: 0.5, kind: random}}}", r"prune kind 'random' is not allowed"),
        ("version: 1\nlayers: {conv1: {prune: {kind: '4:2'}}}", r"N:M needs 0 < N < M"),
        ("version: 1\nlayers: {conv1: {rank: 0}}", r"rank 0 is not allowed; an integer rank must be >= 1"),
        (
            "version: 1\nlayers: {conv1: {rank: 1.5}}",
            r"rank 1.5 is not allowed; a fraction of full rank must be in \(0, 1\]",
        ),
        ("version: 1\nlayers: {conv1: {bits: 4, scheme: fancy}}", r"scheme 'fancy' is not allowed"),
        ("version: 1\nlayers: {fc1: {bits: 8, smooth: 0}}", r"layer 'fc1': smooth 0 is not allowed; use .* \(0, 1\]"),
        ("version: 1\nlayers: {fc1: {bits: 8, smooth: 1.5}}", r"smooth 1.5 is not allowed"),
        ("version: 1\nlayers: {fc1: {bits: 8, smooth: high}}", r"smooth 'high' is not allowed"),
        ("version: 1\nlayers: {fc1: {smooth: 0.5}}", r"layer 'fc1': smooth needs bits"),
        (
            "version: 1\nlayers: {'re:(': {bits: 4}}",
            r"layer entry 're:\(': not a valid regular expression \(missing \): \(\); RE2 syntax is required",
        ),
        ("[1, 2", r"not valid YAML or JSON"),
    ],
)
def test_bad_recipes(text, message):
    with pytest.raises(CompressError, match=message):
        Plan.from_text(text)


def test_names_the_model_lacks():
    with pytest.raises(
        CompressError, match=r"layer 'conv9' is not a compressible layer of the model; layers: conv1, conv2"
    ):
        Plan(layers={"conv9": LayerConfig(bits=8)}).resolve(LAYERS)
    with pytest.raises(CompressError, match=r"layer entry 're:attn.*' matches no layer"):
        Plan(layers={"re:attn.*": LayerConfig(bits=8)}).resolve(LAYERS)


def test_direct_construction_is_validated():
    with pytest.raises(CompressError, match="bits 12 is not allowed"):
        LayerConfig(bits=12)
    with pytest.raises(CompressError, match="prune ratio -0.1"):
        PruneConfig(ratio=-0.1)


def test_the_plan_takes_exactly_the_settings_the_quantizer_takes():
    # One definition: a recipe the plan accepts never fails in quantize_weight, and the reverse.
    import torch

    from compress_core.ops.quantize import ALLOWED_BITS, GRANULARITIES, SCHEMES, quantize_weight

    weight = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    for bits in ALLOWED_BITS:
        for scheme in SCHEMES:
            for granularity in GRANULARITIES:
                try:
                    quantize_weight(weight, bits, scheme, granularity)
                except ValueError:
                    with pytest.raises(
                        CompressError, match=f"bits {bits} is not allowed with scheme {scheme}; use 2..8"
                    ):
                        LayerConfig(bits=bits, scheme=scheme, granularity=granularity)
                else:
                    LayerConfig(bits=bits, scheme=scheme, granularity=granularity)
    with pytest.raises(CompressError, match="layer 'conv1': bits 16 is not allowed with scheme kmeans"):
        Plan.from_text("version: 1\nlayers: {conv1: {bits: 16, scheme: kmeans}}")
