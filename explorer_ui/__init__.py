"""App-side helpers of the Streamlit app: session state, cached engine calls, figures, netron, uploads.

Pages stay thin: they read and write plain data through ``state``, call ``compress_core`` through
``cache`` (cached calls) and the page helpers ``layer_data``, ``tuning``, ``sensitivity_view`` and
``exporting``, and draw what ``figures`` builds. Only ``state`` and ``cache`` import Streamlit;
``sources`` (uploads), ``jobs`` (background work), ``netron_server`` and the rest are plain Python.
"""
