"""Pure tensor math: quantization, pruning masks, low-rank factorisation, SQNR, fake quantization.

Every function here works on plain ``torch`` tensors: no model walking, no I/O, no global state.
Inputs are never modified; results are new float32 tensors (``QuantizedWeight.values`` keeps the
input's floating dtype). Bad arguments raise ``ValueError`` with a message that names the value and
what is allowed (``ops.checks``).
"""
