"""Find the layer behind an int8 model's drop: per-layer error and time of the real int8 ONNX model.

One module per job:

- ``graph``: pair each layer's tensors in the fp32 and the int8 (QDQ) model, and cut one layer out
  of the int8 model as a small model of its own;
- ``errors``: run both models on the evaluation data, with the paired tensors exposed, and measure
  each layer's output error, its own error, its weight-only and its activation-only error;
- ``speed``: per-layer fp32 and int8 kernel time from ORT's profiler, the Q/DQ and layout nodes,
  and a one-line verdict for each layer;
- ``overlay``: the per-node data file Model Explorer colours the graph with (``node_data.json``);
- ``report``: ``layers.csv`` and ``report.md``, and ``debug_model``, which makes all of them;
- ``fix``: one change to the plan for one layer (keep float, raise bits, switch granularity) and
  the before/after of re-exporting with it.
"""
