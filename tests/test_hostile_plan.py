"""Hostile recipes and patterns: each is one clear line (CLI: ``error: ...``, exit 2), never a hang or a traceback."""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from compress_core import CompressError
from compress_core.cli import main
from compress_core.plan import Plan
from compress_core.plan.layer_config import LAYER_KEYS, PRUNE_KEYS, LayerConfig, PruneConfig
from compress_core.plan.patterns import compile_pattern
from compress_core.plan.recipe import MAX_RECIPE_BYTES, RECIPE_KEYS

BOMB = "(a+)+$"  # catastrophic backtracking in Python's re: 2**30 paths for 30 a's and a '!'
VICTIM = "a" * 30 + "!"
FAST = 2.0  # seconds; RE2 needs microseconds, Python's re about a minute and a half


def _cli_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI in-process, check it failed with exit 2 and one line, and return that line."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def _recipe(tmp_path, text: str | bytes, name: str = "recipe.yaml") -> str:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


@pytest.fixture(scope="module")
def victim_model(tmp_path_factory) -> str:
    """A one-layer ONNX model whose only layer (a MatMul) is named thirty a's and a '!'."""
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "weight")
    node = helper.make_node("MatMul", ["input", "weight"], ["output"], name=VICTIM)
    graph = helper.make_graph(
        [node],
        "victim",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path_factory.mktemp("victim") / "victim.onnx"
    onnx.save(model, path)
    return str(path)


# ---------------------------------------------------------------- regular expressions


def test_the_backtracking_bomb_is_answered_at_once():
    started = time.perf_counter()
    assert compile_pattern(BOMB, "bomb").fullmatch(VICTIM) is None
    assert compile_pattern("(a+)+!", "bomb").fullmatch(VICTIM) is not None
    assert time.perf_counter() - started < FAST


def test_the_bomb_against_a_layer_named_for_it_via_the_cli(tmp_path, capsys, victim_model):
    started = time.perf_counter()
    line = _cli_error(
        capsys,
        ["evaluate", victim_model, "--recipe", _recipe(tmp_path, f'version: 1\nlayers: {{"re:{BOMB}": {{bits: 4}}}}')],
    )
    assert time.perf_counter() - started < 30 * FAST  # loading and measuring included; the match itself is instant
    assert line == f"error: layer entry 're:{BOMB}' matches no layer of the model; layers: {VICTIM}"
    assert (
        main(["evaluate", victim_model, "--recipe", _recipe(tmp_path, 'version: 1\nlayers: {"re:(a+)+!": {bits: 4}}')])
        == 0
    )


@pytest.mark.parametrize(
    "pattern,reason",
    [
        (r"(conv)\1", r"invalid escape sequence: \1"),
        ("conv(?=1)", "invalid perl operator: (?="),
        ("(?<!fc)1", "invalid perl operator: (?<!"),
        ("conv[", "missing ]: ["),
    ],
)
def test_patterns_re2_cannot_run_are_refused_by_name(pattern, reason):
    with pytest.raises(CompressError) as error:
        compile_pattern(pattern, f"pattern '{pattern}'")
    assert str(error.value).startswith(
        f"pattern '{pattern}': not a valid regular expression ({reason}); RE2 syntax is required"
    )


def test_a_backreference_in_a_recipe_via_the_cli(tmp_path, capsys):
    line = _cli_error(
        capsys,
        ["evaluate", "digits_cnn", "--recipe", _recipe(tmp_path, 'version: 1\nlayers: {"re:(conv)\\\\1": {bits: 4}}')],
    )
    assert line.startswith(r"error: ")
    assert (
        r"layer entry 're:(conv)\1': not a valid regular expression (invalid escape sequence: \1); RE2 syntax is required"
        in line
    )


def test_the_tune_pages_regex_uses_re2_too(victim_model):
    from compress_core import layer_inventory, load_model
    from explorer_ui.tuning import matching_layers

    layers = layer_inventory(load_model(victim_model))
    started = time.perf_counter()
    with pytest.raises(CompressError, match=r"^pattern '\(a\+\)\+\$' matches no layer"):
        matching_layers(layers, BOMB)
    assert time.perf_counter() - started < FAST
    assert matching_layers(layers, "(a+)+!") == [VICTIM]
    with pytest.raises(
        CompressError, match=r"^pattern '\(a\)\\1': not a valid regular expression .*RE2 syntax is required"
    ):
        matching_layers(layers, r"(a)\1")
    with pytest.raises(
        CompressError, match=r"^pattern 'fc\\n\(': not a valid regular expression \(missing \): fc\\n\(\)"
    ):
        matching_layers(layers, "fc\n(")


# ---------------------------------------------------------------- recipe values and files via the CLI


@pytest.mark.parametrize(
    "recipe,expected",
    [
        (
            "version: 1\nlayers: {conv1: {bits: 8.0}}",
            "layer 'conv1': bits 8.0 is not allowed; use an integer: null (float), 2..8 or 16",
        ),
        (
            "version: 1\nlayers: {conv1: {prune: {ratio: 0.3, kind: '2:4'}}}",
            "layer 'conv1': prune ratio 0.3 conflicts with kind '2:4', which prunes 0.5 (1 - 2/4); leave the ratio out or make it match",
        ),
        (
            "version: 1\nlayers: {conv1: {prune: {kind: 2:4}}}",
            (
                "layer 'conv1': prune kind 124 is not allowed; use one of unstructured, structured or N:M like '2:4' "
                "(YAML reads an unquoted 2:4 as the number 124: write kind: '2:4')"
            ),
        ),
        (
            "version: 1\nlayers: {fc1: {bits: 8, smooth: .nan}}",
            "layer 'fc1': smooth nan is not allowed; use a migration strength in (0, 1], such as 0.8",
        ),
        (
            "version: 1\nlayers: {fc1: {bits: 8, smooth: 1.0e+400}}",
            "layer 'fc1': smooth inf is not allowed; use a migration strength in (0, 1], such as 0.8",
        ),
    ],
)
def test_bad_values_via_the_cli(tmp_path, capsys, recipe, expected):
    path = _recipe(tmp_path, recipe)
    assert _cli_error(capsys, ["evaluate", "digits_cnn", "--recipe", path]) == f"error: {path}: {expected}"


def test_a_recipe_that_is_not_utf8_via_the_cli(tmp_path, capsys):
    path = _recipe(tmp_path, "version: 1\nlayers: {conv1: {bits: 4}}  # caf\xe9\n".encode("latin-1"))
    expected = f"error: {path}: not UTF-8 text (byte 0xe9 at offset 44); save the recipe as UTF-8"
    assert _cli_error(capsys, ["evaluate", "digits_cnn", "--recipe", path]) == expected


def test_an_oversized_recipe_is_refused_unread(tmp_path, capsys):
    path = _recipe(tmp_path, "version: 1\n" + "#" * MAX_RECIPE_BYTES)
    line = _cli_error(capsys, ["evaluate", "digits_cnn", "--recipe", path])
    assert line == f"error: {path}: larger than {MAX_RECIPE_BYTES:,} bytes, too large for a recipe"


# ---------------------------------------------------------------- odd YAML


def test_an_alias_bomb_is_refused_with_a_short_message():
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]  # 10**9 x's if expanded
    text = "version: 1\nlayers:\n  conv1:\n    bits:\n      " + "\n      ".join(f"- {level}" for level in levels) + "\n"
    started = time.perf_counter()
    with pytest.raises(CompressError) as error:
        Plan.from_text(text)
    assert time.perf_counter() - started < FAST
    message = str(error.value)
    assert message.startswith("recipe: layer 'conv1': bits [") and "is not allowed; use an integer" in message
    assert len(message) < 300


@pytest.mark.parametrize(
    "text,expected",
    [
        ("[" * 5000 + "]" * 5000, "recipe: nested too deeply to be a recipe"),
        ("version: 1\nlayers: {conv1: {bits: " + "9" * 5000 + "}}", "recipe: a value cannot be read"),
        ("version: 1\nlayers: {[a, b]: {bits: 4}}", "recipe: not valid YAML or JSON (while constructing a mapping)"),
        ("version: 1\nlayers: {1.5: {bits: 4}}", "recipe: layer entry 1.5 (float) is not allowed"),
        ("version: 1\nlayers: {true: {bits: 4}}", "recipe: layer entry True (bool) is not allowed"),
        ("version: 1\nlayers: {null: {bits: 4}}", "recipe: layer entry None (NoneType) is not allowed"),
        (
            "version: 1\nlayers: {0: {bits: 4}, '0': {bits: 8}}",
            "recipe: layer '0' is given twice (as text and as a number)",
        ),
        ("version: 1\n7: 8", "recipe: unknown key(s) 7; allowed: default, layers, version"),
        ("version: true", "recipe: version True is not supported"),
        (
            "version: 1\nlayers: [conv1]",
            "recipe: 'layers' must be a mapping from layer name to settings, got ['conv1']",
        ),
        ("version: 1\nlayers: {conv1: {bits: '8'}}", "recipe: layer 'conv1': bits '8' is not allowed; use an integer"),
        (
            "version: 1\nlayers: {conv1: {bits: 4, scheme: [symmetric]}}",
            "recipe: layer 'conv1': scheme ['symmetric'] is not allowed",
        ),
        (
            "version: 1\nlayers: {conv1: {bits: 4, granularity: 0}}",
            "recipe: layer 'conv1': granularity 0 is not allowed",
        ),
        (
            "version: 1\nlayers: {conv1: {prune: {ratio: '0.5'}}}",
            "recipe: layer 'conv1': prune ratio '0.5' is not allowed; use a number in [0, 1)",
        ),
        (
            "version: 1\nlayers: {conv1: {prune: {ratio: .nan}}}",
            "recipe: layer 'conv1': prune ratio nan is not allowed",
        ),
        (
            "version: 1\nlayers: {conv1: {prune: {kind: [2, 4]}}}",
            "recipe: layer 'conv1': prune kind [2, 4] is not allowed",
        ),
        (
            "version: 1\nlayers: {conv1: {prune: {7: 1}}}",
            "recipe: layer 'conv1': prune: unknown key(s) 7; allowed: kind, ratio",
        ),
        (
            "version: 1\nlayers: {conv1: {rank: '0.5'}}",
            "recipe: layer 'conv1': rank '0.5' is not allowed; use an integer >= 1 or a fraction in (0, 1]",
        ),
        (
            "version: 1\nlayers: {conv1: {rank: 4.0}}",
            "recipe: layer 'conv1': rank 4.0 is not allowed; a fraction of full rank must be in (0, 1] (a rank is an integer: write 4, not 4.0)",
        ),
        ("version: 1\nlayers: {conv1: {rank: .inf}}", "recipe: layer 'conv1': rank inf is not allowed"),
        (
            "version: 1\nlayers: {conv1: !!binary aGk=}",
            "recipe: layer 'conv1': expected a mapping like {bits: 8} or null, got b'hi'",
        ),
    ],
)
def test_odd_yaml_is_one_compress_error(text, expected):
    with pytest.raises(CompressError) as error:
        Plan.from_text(text)
    assert str(error.value).startswith(expected)
    assert "\n" not in str(error.value)


def test_names_that_would_break_a_line_are_shown_escaped():
    with pytest.raises(CompressError) as error:
        Plan.from_text('version: 1\n"x\\ny": 3')
    assert str(error.value) == "recipe: unknown key(s) 'x\\ny'; allowed: default, layers, version"
    with pytest.raises(CompressError) as error:
        Plan.from_text('version: 1\nlayers: {"conv\\n1": {bits: 9}}')
    assert str(error.value).startswith("recipe: layer 'conv\\n1': bits 9 is not allowed")


def test_a_plan_built_in_code_is_checked_too():
    with pytest.raises(CompressError, match=r"^layer entry 3 is not allowed"):
        Plan(layers={3: LayerConfig(bits=4)})  # type: ignore[dict-item]
    with pytest.raises(CompressError, match=r"^prune kind None is not allowed"):
        PruneConfig(kind=None)  # type: ignore[arg-type]


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6), st.binary(max_size=4))
PLAN_KEYS = sorted(RECIPE_KEYS | LAYER_KEYS | PRUNE_KEYS)  # every key a recipe may hold
KEYS = st.one_of(
    st.sampled_from([*PLAN_KEYS, "conv1"]),
    st.integers(),
    st.text(max_size=4),
)
DATA = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=4)),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(layer=DATA, default=DATA)
def test_any_parsed_data_is_a_plan_or_one_compress_error(layer, default):
    data = {"version": 1, "default": default, "layers": {"conv1": layer}}
    try:
        Plan.from_dict(data)
    except CompressError as error:
        assert "\n" not in str(error) and len(str(error)) < 400
