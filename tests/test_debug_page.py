"""The Debug int8 page driven by ``AppTest``: from an empty plan to a ranked table, a fix with its
before and after, and the fix kept in the plan."""

from __future__ import annotations

import pytest
from apptest_helpers import button, first_run

from explorer_ui import state
from explorer_ui.debug_view import DEBUG, DEBUG_FIX


@pytest.fixture
def app(private_dirs):
    return first_run()


def test_debug_page_ranks_fixes_and_keeps_the_fix(app):
    app.switch_page("pages/debug.py").run()
    assert not app.exception
    assert "quantizes no layer" in app.info[0].value
    button(app, "Set every layer to 8 bits").click().run()
    button(app, "Debug the int8 model").click().run()
    assert not app.exception and not app.error
    entry = app.session_state[DEBUG]["digits_cnn"]
    assert sorted(row["layer"] for row in entry["rows"]) == ["conv1", "conv2", "conv3", "fc1", "head"]
    assert [row["rank"] for row in entry["rows"]] == [1, 2, 3, 4, 5]
    assert len(app.dataframe[0].value) == 5
    assert entry["viewer"].startswith("/?data=")  # the graphs were published to Model Explorer

    app.selectbox(key="debug_fix_layer").set_value("fc1")
    app.radio(key="debug_fix_action").set_value("float")
    button(app, "Apply the fix and re-export").click().run()
    result = app.session_state[DEBUG_FIX]["digits_cnn"]
    assert result["fix"] == "keep fc1 float"
    assert result["after"]["bytes"] > result["before"]["bytes"]  # a float layer stores 4 bytes per weight
    assert list(app.dataframe[1].value.iloc[:, 0]) == ["before", "after"]

    button(app, "Keep this fix in the plan").click().run()
    assert app.session_state[state.PLANS]["digits_cnn"]["layers"]["fc1"] is None
    assert any("plan has changed" in warning.value for warning in app.warning)
