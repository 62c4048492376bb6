"""Compression Explorer: the Streamlit app's router.

``streamlit run app.py`` (or ``compress-explorer``). The model picker lives here, in the sidebar, so
it is on every page and its state survives page switches; the pages in ``pages/`` edit plain data
in ``st.session_state`` and call ``compress_core`` through ``explorer_ui``.
"""

import streamlit as st

from explorer_ui import state

st.set_page_config(page_title="Compression Explorer", layout="wide")
state.init(st.session_state)

with st.sidebar:
    st.selectbox(
        "Model",
        options=list(state.sources(st.session_state)),
        key=state.CHOICE,
        on_change=state.on_model_choice,
        help="A built-in sample, or a model uploaded on the Model page in this session.",
    )

navigation = st.navigation(
    [
        st.Page("pages/model.py", title="Model", default=True),
        st.Page("pages/layers.py", title="Layers"),
        st.Page("pages/tune.py", title="Tune"),
        st.Page("pages/sensitivity.py", title="Sensitivity"),
        st.Page("pages/export.py", title="Export & latency"),
        st.Page("pages/debug.py", title="Debug int8"),
        st.Page("pages/learn.py", title="Learn"),
    ]
)
state.show_error(st.session_state)
with st.spinner(f"Loading {st.session_state[state.CURRENT]} ..."):
    state.current_handle(st.session_state)
navigation.run()
