"""The ``triton`` backend of ``fcos_fast.ops``: one file per hot path.

Installed as ``fcos_fast.kernels``. Each module holds its ``@triton.jit`` kernels, their
launcher registered as ``torch.ops.fcos_fast.<op>_triton`` (``torch.library.triton_op``,
so that ``torch.compile`` sees the kernels) and a plain function named like the op,
which ``fcos_fast.ops`` dispatches to with validated, contiguous float32/float64 inputs.
On CPU tensors the kernels run only under ``TRITON_INTERPRET=1`` (the tests' way to
check them without a GPU). Each kernel's launch configuration is one function of the
input sizes (``*_launch_config``), which ``ahead_of_time`` also calls to compile every
configuration for sm_80 and sm_90 with no GPU.
"""
