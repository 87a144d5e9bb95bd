"""The reference backend: every op in plain, vectorised PyTorch.

This is the readable specification the native and Triton backends are tested against
(and which is itself tested against torchvision). Inputs arrive validated, contiguous
and in float32 or float64 from the public functions in ``fcos_fast.ops``.
"""
