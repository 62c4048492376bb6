"""App-side helpers of the Streamlit app: session state, cached engine calls, figures, netron, uploads.

Pages stay thin: they read and write plain data through ``state``, call ``compress_core`` through
``cache`` and draw what ``figures`` builds. Only ``state``'s callers and ``cache`` import Streamlit;
``sources``, ``layer_data``, ``plan_table``, ``figures`` and ``netron_server`` are plain Python.
"""
