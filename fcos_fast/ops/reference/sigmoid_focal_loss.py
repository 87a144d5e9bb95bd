"""Reference sigmoid focal loss: the loss and its gradient as readable PyTorch formulas.

With ``t`` the one-hot target of a row and ``w = x`` where ``t = 0``, ``w = -x`` where
``t = 1``, torchvision's ``BCE(x, t)`` is ``softplus(w)`` and its ``1 - p_t`` is
``sigmoid(w)`` (Lin et al., 2017, eq. 5), so the loss is
``alpha_t * softplus(w) * sigmoid(w) ** gamma`` and its derivative with respect to ``w``
is ``alpha_t * sigmoid(w) ** gamma * (sigmoid(w) + gamma * softplus(w) * sigmoid(-w))``
(``sigmoid' = sigmoid(w) * sigmoid(-w)``; no ``sigmoid(w) ** (gamma - 1)``, which is
infinite at saturation for ``gamma < 1``). The gradient is that formula, not autograd's
product rule, which gives ``inf * 0 = NaN`` at infinite logits where the limit is finite.
"""

from __future__ import annotations

import torch


def focal_terms(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None,
                alpha: float, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, d loss / d logits)`` per element of ``[N, C]`` logits, in their dtype."""
    positive = labels[:, None] == torch.arange(logits.shape[1], device=logits.device)
    w = torch.where(positive, -logits, logits)
    e = torch.exp(-w.abs())
    softplus = w.clamp(min=0) + torch.log1p(e)  # log(1 + exp(w)), exact for any w
    ahead = w >= 0
    s = torch.where(ahead, 1.0, e) / (1 + e)  # sigmoid(w) = 1 - p_t
    q = torch.where(ahead, e, 1.0) / (1 + e)  # sigmoid(-w) = p_t
    modulation = s.pow(gamma)  # pow(0, 0) = 1
    # softplus * q -> 0 where q underflows (w -> inf), instead of inf * 0.
    grad_w = s + gamma * torch.where(q == 0, 0.0, softplus * q)
    loss, grad_w = softplus * modulation, modulation * grad_w
    if alpha >= 0:
        # 1 - alpha in double, then rounded once to the logits' dtype, as torchvision's.
        alpha_t = torch.where(positive, logits.new_full((), alpha),
                              logits.new_full((), 1 - alpha))
        loss, grad_w = alpha_t * loss, alpha_t * grad_w
    if weight is not None:
        loss, grad_w = loss * weight[:, None], grad_w * weight[:, None]
    return loss, torch.where(positive, -grad_w, grad_w)


class _SigmoidFocalLoss(torch.autograd.Function):
    """``(loss, gradient of the reduced loss)``; backward scales the gradient."""

    @staticmethod
    def forward(ctx, logits, labels, weight, alpha, gamma, reduction):
        compute = torch.promote_types(logits.dtype, torch.float32)
        loss, grad = focal_terms(logits.to(compute), labels,
                                 None if weight is None else weight.to(compute), alpha, gamma)
        if reduction == "mean":
            loss, grad = loss.mean(), grad / loss.numel()  # mean of nothing: NaN, as torch's
        elif reduction == "sum":
            loss = loss.sum()
        ctx.mark_non_differentiable(grad)
        ctx.save_for_backward(grad)
        ctx.dtype = logits.dtype
        return loss, grad

    @staticmethod
    def backward(ctx, grad_loss, _grad_of_grad):
        if torch.is_grad_enabled():  # the gradient formula is not differentiated again
            from fcos_fast.ops.sigmoid_focal_loss import DOUBLE_BACKWARD_ERROR  # noqa: PLC0415

            raise RuntimeError(DOUBLE_BACKWARD_ERROR)
        (grad,) = ctx.saved_tensors
        return (grad * grad_loss).to(ctx.dtype), None, None, None, None, None


def sigmoid_focal_loss(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None,
                       alpha: float, gamma: float, reduction: str, with_grad: bool
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, grad)`` for ``[N, C]`` logits and int64 labels ``[N]`` in ``[-1, C)``;
    ``grad`` (the gradient of the reduced loss with respect to ``logits``, in their dtype)
    when ``with_grad``, else empty. The loss is in ``logits``' dtype promoted to float32."""
    loss, grad = _SigmoidFocalLoss.apply(logits, labels, weight, alpha, gamma, reduction)
    return loss, (grad.to(logits.dtype) if with_grad else logits.new_empty((0,)))
