"""Run by test_triton_kernels.py in a subprocess (a wrong address can crash it): the Triton
GIoU kernels, interpreted, on the last program of 2^29 + 1024 pairs, whose rows are past
2^29, where the offset 4 * row no longer fits int32.

The tensors are allocated, not filled: only the pages of the last rows are ever touched,
so the 8.6 GB each is address space, not memory. The program id is shifted in the
interpreter so that one program runs as the last one of the full grid would.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import triton.runtime.interpreter as interpreter  # noqa: E402

from fcos_fast import ops  # noqa: E402
from fcos_fast.kernels import giou_loss  # noqa: E402
from fcos_fast.kernels._common import scalar_tensor  # noqa: E402


def main() -> None:
    n = 2**29 + 1024
    block, warps = giou_loss._pairs_config(n, torch.float32)
    last_program = (n - 1) // block
    first = last_program * block
    assert 4 * first >= 2**31
    pred, target = torch.empty(n, 4), torch.empty(n, 4)
    losses, grad_pred, grad_target = torch.empty(n), torch.empty(n, 4), torch.empty(n, 4)
    g = torch.Generator().manual_seed(0)
    t = torch.rand(n - first, 4, generator=g) * 100
    t[:, 2:] += t[:, :2] + 1
    p = t + torch.rand(n - first, 4, generator=g) * 5
    pred[first:], target[first:] = p, t
    upstream = torch.rand(n - first, generator=g)
    grads = torch.empty(n)
    grads[first:] = upstream

    program_id = interpreter.InterpreterBuilder.create_get_program_id

    def last_program_id(self, axis):
        handle = program_id(self, axis)
        if axis == 0:
            handle.data = handle.data + last_program  # int32, as the real one
        return handle

    interpreter.InterpreterBuilder.create_get_program_id = last_program_id
    eps = scalar_tensor(1e-7, pred)
    giou_loss._giou_loss_forward_kernel[(1,)](pred, target, eps, losses, n, PARTIAL_SUMS=False,
                                             BLOCK=block, num_warps=warps)
    giou_loss._giou_loss_backward_kernel[(1,)](grads, pred, target, eps, grad_pred, grad_target,
                                              n, SCALAR_GRAD=False, BLOCK=block,
                                              num_warps=warps)
    interpreter.InterpreterBuilder.create_get_program_id = program_id

    p, t = p.requires_grad_(), t.requires_grad_()
    expected = ops.giou_loss(p, t, backend="reference")
    (expected * upstream).sum().backward()
    assert torch.equal(losses[first:], expected.detach())
    assert torch.equal(grad_pred[first:], p.grad) and torch.equal(grad_target[first:], t.grad)
    print("past 2^29 pairs: equal to the reference")


if __name__ == "__main__":
    main()
