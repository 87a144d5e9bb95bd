"""torchvision's, fvcore's and detectron2's own op tests, re-run against ``fcos_fast.ops``.

Sources (the cases, constants and assertions are theirs; the code is rewritten to run
every backend of ours on every device):

* pytorch/vision ``test/test_ops.py``, classes ``TestNMS``,
  ``TestGeneralizedBoxIouLoss`` (with ``get_boxes``, ``assert_iou_loss``,
  ``assert_empty_loss``) and ``TestFocalLoss``, as stored at commit
  00673be3960268a837860cd6a05373d9861221d3
  (current main; these tests match the installed torchvision 0.29.1, whose
  ``batched_nms`` thresholds and empty-boxes shortcut they exercise). torchvision is
  BSD 3-Clause licensed, Copyright (c) Soumith Chintala 2016, all rights reserved;
  redistributions of derived source must keep that notice, this list of conditions and
  the disclaimer of the BSD license (see torchvision's LICENSE file).
* facebookresearch/fvcore ``tests/test_giou_loss.py`` (commit
  242366fe5c3a649c089c5e266afaa31896cf325a), the tests torchvision's GIoU-loss tests
  come from. Apache License 2.0, Copyright (c) Facebook, Inc. and its affiliates.
* facebookresearch/detectron2 ``tests/layers/test_nms.py`` (commit
  17072dffd61161ee0ac4b5f5056ef4041fc2971d). Apache License 2.0, Copyright (c)
  Facebook, Inc. and its affiliates.

``torchvision.ops.nms`` / ``batched_nms`` / ``generalized_box_iou_loss`` /
``sigmoid_focal_loss`` are replaced by ``ops.nms`` / ``ops.batched_nms`` /
``ops.giou_loss`` / ``ops.sigmoid_focal_loss`` with each backend (the focal loss takes
class indices: torchvision's targets are made from them, see its section). Interpreted
Triton (CPU) runs the same constructions at a smaller size or fewer seeds. Tests of
paths outside our contract are kept and skipped with the reason; TorchScript is not
supported by fcos_fast (the ops are ``torch.library`` ops for eager and
``torch.compile``), so scripted variants are not run.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torchvision

from fcos_fast import ops
from tests.ops._cases import backend_matrix, interpreted

BACKENDS = backend_matrix()
# torchvision's opcheck list (test_ops.py's OPTESTS), for the compiled ops.
OPTESTS = ("test_schema", "test_autograd_registration", "test_faketensor",
           "test_aot_dispatch_dynamic")


def _cuda_backends():
    on_cuda = [p for p in BACKENDS if p.values[1] == "cuda"]
    return on_cuda or [pytest.param("native", "cuda", id="cuda",
                                    marks=pytest.mark.skip(reason="needs a CUDA GPU"))]


# ================================================================ torchvision TestNMS

def _reference_nms(boxes, scores, iou_threshold):
    """torchvision's test reference: pick the best, drop what overlaps it by > threshold."""
    picked = []
    _, indexes = scores.sort(descending=True)
    while len(indexes) > 0:
        current = indexes[0]
        picked.append(current.item())
        if len(indexes) == 1:
            break
        current_box = boxes[current, :]
        indexes = indexes[1:]
        rest_boxes = boxes[indexes, :]
        iou = torchvision.ops.box_iou(rest_boxes, current_box.unsqueeze(0)).squeeze(1)
        indexes = indexes[iou <= iou_threshold]
    return torch.as_tensor(picked)


def _create_tensors_with_iou(n, iou_thresh):
    """Random boxes whose last box has IoU just above ``iou_thresh`` with the first.

    With b0 = [x0, y0, x1, y1] and b1 = [x0, y0, x1 + d, y1], IoU(b0, b1) == t needs
    d = (x1 - x0) * (1 - t) / t; the threshold is nudged up so that b1 is (barely)
    suppressed.
    """
    boxes = torch.rand(n, 4) * 100
    boxes[:, 2:] += boxes[:, :2]
    boxes[-1, :] = boxes[0, :]
    x0, y0, x1, y1 = boxes[-1].tolist()
    iou_thresh += 1e-5
    boxes[-1, 2] += (x1 - x0) * (1 - iou_thresh) / iou_thresh
    scores = torch.rand(n)
    return boxes, scores


@functools.lru_cache(maxsize=None)
def _nms_ref_case(n, iou, seed):
    """Inputs and torchvision's reference answer, computed once for every backend (the
    reference is a Python loop: seconds per case)."""
    torch.random.manual_seed(seed)
    boxes, scores = _create_tensors_with_iou(n, iou)
    return boxes, scores, _reference_nms(boxes, scores, iou)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("iou", (0.2, 0.5, 0.8))
def test_nms_ref(backend, device, iou):
    """TestNMS.test_nms_ref: 10 seeds of 1000 boxes (interpreted Triton: 2 seeds of 64)."""
    n = 64 if interpreted(backend, device) else 1000
    for seed in range(2) if interpreted(backend, device) else range(10):
        boxes, scores, keep_ref = _nms_ref_case(n, iou, seed)
        keep = ops.nms(boxes.to(device), scores.to(device), iou, backend=backend)
        torch.testing.assert_close(
            keep.cpu(), keep_ref,
            msg=f"NMS incompatible between {backend} and reference implementation for "
                f"IoU={iou}, seed {seed}")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_nms_input_errors(backend, device):
    """TestNMS.test_nms_input_errors: torchvision raises RuntimeError for each of these."""
    def rand(*shape):
        return torch.rand(*shape, device=device)

    with pytest.raises(RuntimeError):
        ops.nms(rand(4), rand(3), 0.5, backend=backend)
    with pytest.raises(RuntimeError):
        ops.nms(rand(3, 5), rand(3), 0.5, backend=backend)
    with pytest.raises(RuntimeError):
        ops.nms(rand(3, 4), rand(3, 2), 0.5, backend=backend)
    with pytest.raises(RuntimeError):
        ops.nms(rand(3, 4), rand(4), 0.5, backend=backend)


@pytest.mark.parametrize("backend", [None, *ops.BACKEND_NAMES])
def test_qnms(backend):
    """TestNMS.test_qnms runs torchvision's quantized NMS (qnms) on quint8 boxes and
    scores. Quantized tensors are outside the fcos_fast contract: every backend refuses
    them at the Python boundary, with an ``InputError`` (a ``ValueError`` and, as
    torchvision's checks raise, a ``RuntimeError``) naming the argument and its dtype,
    never by misreading their integer storage."""
    boxes, scores = _create_tensors_with_iou(10, 0.5)
    qboxes = torch.quantize_per_tensor(boxes, scale=1, zero_point=0, dtype=torch.quint8)
    qscores = torch.quantize_per_tensor(scores * 100, scale=1, zero_point=0,
                                        dtype=torch.quint8)
    idxs = torch.zeros(10, dtype=torch.int64)
    for call, name in ((lambda: ops.nms(qboxes, qscores, 0.5, backend=backend), "boxes"),
                       (lambda: ops.nms(boxes, qscores, 0.5, backend=backend), "scores"),
                       (lambda: ops.batched_nms(qboxes, qscores, idxs, 0.5, backend=backend),
                        "boxes")):
        with pytest.raises(ops.InputError, match=rf"^{name} must be a floating tensor .*, "
                                                 r"got torch\.quint8$"):
            call()


def _assert_nms_agrees(expected, keep, scores, tol):
    """torchvision's check of test_nms_gpu: the same indices, or where they differ (the
    order of duplicate scores), the same scores."""
    is_eq = expected.shape == keep.shape and torch.allclose(expected, keep.cpu())
    if not is_eq and expected.shape == keep.shape:
        is_eq = torch.allclose(scores[expected].float(), scores[keep.cpu()].float(),
                               rtol=tol, atol=tol)
    assert is_eq, "NMS incompatible between torchvision and fcos_fast"


@pytest.mark.parametrize("backend,device", _cuda_backends())
@pytest.mark.parametrize("iou", (0.2, 0.5, 0.8))
def test_nms_gpu(backend, device, iou):
    """TestNMS.test_nms_gpu: the CPU result (torchvision's) and ours on the GPU agree, or
    differ only where scores are duplicates."""
    boxes, scores = _create_tensors_with_iou(1000, iou)
    r_cpu = torchvision.ops.nms(boxes, scores, iou)
    r_gpu = ops.nms(boxes.to(device), scores.to(device), iou, backend=backend)
    _assert_nms_agrees(r_cpu, r_gpu, scores, tol=1e-5)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("iou", (0.2, 0.5, 0.8))
def test_nms_autocast(backend, device, iou):
    """TestNMS.test_autocast: NMS of boxes and scores made under autocast, as a
    detector's head makes them (here by a linear layer: float16 on CUDA, bfloat16 on the
    CPU), called under autocast. torchvision's autocast kernel computes such boxes in
    float32 (its CPU kernel alone refuses bfloat16); ours computes every half-precision
    input in float32: the same indices. Duplicate scores abound in half precision."""
    dtype = torch.float16 if device == "cuda" else torch.bfloat16
    boxes, scores = _create_tensors_with_iou(64 if interpreted(backend, device) else 1000, iou)
    with torch.autocast(device, dtype=dtype):
        boxes = torch.nn.functional.linear(boxes.to(device), torch.eye(4, device=device))
        scores = torch.nn.functional.linear(scores.to(device)[:, None],
                                            torch.ones(1, 1, device=device))[:, 0]
        assert boxes.dtype == scores.dtype == dtype
        expected = torchvision.ops.nms(boxes, scores, iou)
        keep = ops.nms(boxes, scores, iou, backend=backend)
    assert keep.dtype == torch.int64
    assert torch.equal(expected, torchvision.ops.nms(boxes.float(), scores.float(), iou))
    if device == "cpu":  # torchvision's CPU kernel orders equal scores by index, as ours
        assert torch.equal(keep, expected)
    else:
        _assert_nms_agrees(expected.cpu(), keep, scores.cpu(), tol=1e-3)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_nms_float16(backend, device):
    """TestNMS.test_nms_float16 (torchvision: CUDA and MPS only; ours computes half
    precision in float32 on every device, so it runs everywhere)."""
    boxes = torch.tensor([
        [285.3538, 185.5758, 1193.5110, 851.4551],
        [285.1472, 188.7374, 1192.4984, 851.0669],
        [279.2440, 197.9812, 1189.4746, 849.2019],
    ]).to(device)
    scores = torch.tensor([0.6370, 0.7569, 0.3966]).to(device)
    iou_thres = 0.2
    keep32 = ops.nms(boxes, scores, iou_thres, backend=backend)
    keep16 = ops.nms(boxes.to(torch.float16), scores.to(torch.float16), iou_thres,
                     backend=backend)
    torch.testing.assert_close(keep32, keep16, rtol=0, atol=0)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_batched_nms_implementations(backend, device):
    """TestNMS.test_batched_nms_implementations: torchvision checks its two batched_nms
    strategies agree; ours must give what both give, and nothing for empty boxes."""
    n = 64 if interpreted(backend, device) else 1000
    iou_threshold = 0.9
    for seed in range(2) if interpreted(backend, device) else range(10):
        torch.random.manual_seed(seed)
        boxes = torch.cat((torch.rand(n, 2), torch.rand(n, 2) + 10), dim=1)
        assert max(boxes[:, 0]) < min(boxes[:, 2])  # x1 < x2
        assert max(boxes[:, 1]) < min(boxes[:, 3])  # y1 < y2
        scores = torch.rand(n)
        idxs = torch.randint(0, 4, size=(n,))
        keep_vanilla = torchvision.ops.boxes._batched_nms_vanilla(boxes, scores, idxs,
                                                                  iou_threshold)
        keep_trick = torchvision.ops.boxes._batched_nms_coordinate_trick(boxes, scores, idxs,
                                                                         iou_threshold)
        torch.testing.assert_close(keep_vanilla, keep_trick)
        keep = ops.batched_nms(boxes.to(device), scores.to(device), idxs.to(device),
                               iou_threshold, backend=backend)
        torch.testing.assert_close(keep.cpu(), keep_vanilla,
                                   msg=f"ours ({backend}) and torchvision's batched_nms "
                                       f"differ, seed {seed}")

    # Also make sure an empty tensor is returned if boxes is empty
    empty = torch.empty((0,), dtype=torch.int64)
    torch.testing.assert_close(empty, ops.batched_nms(empty.to(device), None, None, None,
                                                      backend=backend).cpu())


@pytest.mark.parametrize("backend,device", backend_matrix(include_reference=False))
@pytest.mark.parametrize("op", ["nms", "batched_nms"])
def test_nms_opcheck(backend, device, op):
    """torchvision runs optests.generate_opcheck_tests over TestNMS (one case per test,
    ``opcheck_only_one``); the same checks on our compiled ops, with test_nms_ref's and
    test_batched_nms_implementations' inputs."""
    torch.random.manual_seed(0)
    n = 64 if interpreted(backend, device) else 1000
    boxes, scores = _create_tensors_with_iou(n, 0.5)
    args = (boxes.to(device), scores.to(device))
    if op == "batched_nms":
        args += (torch.randint(0, 4, size=(n,)).to(device),)
    overload = getattr(torch.ops.fcos_fast, op + ("_triton" if backend == "triton" else ""))
    torch.library.opcheck(overload, args + (0.5,), test_utils=OPTESTS)


# ================================================== torchvision TestGeneralizedBoxIouLoss

def _get_boxes(dtype, device):
    box1 = torch.tensor([-1, -1, 1, 1], dtype=dtype, device=device)
    box2 = torch.tensor([0, 0, 1, 1], dtype=dtype, device=device)
    box3 = torch.tensor([0, 1, 1, 2], dtype=dtype, device=device)
    box4 = torch.tensor([1, 1, 2, 2], dtype=dtype, device=device)
    box1s = torch.stack([box2, box2], dim=0)
    box2s = torch.stack([box3, box4], dim=0)
    return box1, box2, box3, box4, box1s, box2s


def _assert_iou_loss(iou_fn, box1, box2, expected_loss, device, reduction="none"):
    # assert_close checks the dtype: half boxes must give a float32 loss, as torchvision's.
    computed_loss = iou_fn(box1, box2, reduction=reduction)
    expected_loss = torch.tensor(expected_loss, device=device)
    torch.testing.assert_close(computed_loss, expected_loss)


def _assert_empty_loss(iou_fn, dtype, device):
    box1 = torch.randn([0, 4], dtype=dtype, device=device).requires_grad_()
    box2 = torch.randn([0, 4], dtype=dtype, device=device).requires_grad_()
    loss = iou_fn(box1, box2, reduction="mean")
    loss.backward()
    torch.testing.assert_close(loss, torch.tensor(0.0, device=device))
    assert box1.grad is not None, "box1.grad should not be None after backward is called"
    assert box2.grad is not None, "box2.grad should not be None after backward is called"
    loss = iou_fn(box1, box2, reduction="none")
    assert loss.numel() == 0, f"{iou_fn} for two empty box should be empty"


def _giou_loss(backend):
    def giou_loss(boxes1, boxes2, reduction="none"):
        return ops.giou_loss(boxes1, boxes2, reduction=reduction, backend=backend)
    return giou_loss


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.half])
def test_giou_loss(backend, device, dtype):
    """TestGeneralizedBoxIouLoss.test_giou_loss (the values are fvcore's)."""
    loss_fn = _giou_loss(backend)
    box1, box2, box3, box4, box1s, box2s = _get_boxes(dtype, device)

    # Identical boxes should have loss of 0
    _assert_iou_loss(loss_fn, box1, box1, 0.0, device=device)
    # quarter size box inside other box = IoU of 0.25
    _assert_iou_loss(loss_fn, box1, box2, 0.75, device=device)
    # Two side by side boxes, area=union; IoU=0 and GIoU=0 (loss 1.0)
    _assert_iou_loss(loss_fn, box2, box3, 1.0, device=device)
    # Two diagonally adjacent boxes, area=2*union; IoU=0 and GIoU=-0.5 (loss 1.5)
    _assert_iou_loss(loss_fn, box2, box4, 1.5, device=device)
    # Test batched loss and reductions
    _assert_iou_loss(loss_fn, box1s, box2s, 2.5, device=device, reduction="sum")
    _assert_iou_loss(loss_fn, box1s, box2s, 1.25, device=device, reduction="mean")

    # reduction value other than ["none", "mean", "sum"] should raise a ValueError
    with pytest.raises(ValueError, match="Invalid"):
        loss_fn(box1s, box2s, reduction="xyz")


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.half])
def test_giou_loss_empty_inputs(backend, device, dtype):
    """TestGeneralizedBoxIouLoss.test_empty_inputs."""
    _assert_empty_loss(_giou_loss(backend), dtype, device)


# ======================================================== fvcore tests/test_giou_loss.py

@pytest.mark.parametrize("backend,device", BACKENDS)
def test_fvcore_giou_loss(backend, device):
    """fvcore TestGIoULoss.test_giou_loss (float32, NumPy comparisons)."""
    np.random.seed(42)  # fvcore's setUp
    loss_fn = _giou_loss(backend)

    def tensor(values):
        return torch.tensor(values, dtype=torch.float32, device=device)

    def value(loss):
        return loss.detach().cpu().numpy()

    # Identical boxes should have loss of 0
    box = tensor([-1, -1, 1, 1])
    assert np.allclose(value(loss_fn(box, box)), [0.0])
    # quarter size box inside other box = IoU of 0.25
    box2 = tensor([0, 0, 1, 1])
    assert np.allclose(value(loss_fn(box, box2)), [0.75])
    # Two side by side boxes, area=union; IoU=0 and GIoU=0 (loss 1.0)
    box3 = tensor([0, 1, 1, 2])
    assert np.allclose(value(loss_fn(box2, box3)), [1.0])
    # Two diagonally adjacent boxes, area=2*union; IoU=0 and GIoU=-0.5 (loss 1.5)
    box4 = tensor([1, 1, 2, 2])
    assert np.allclose(value(loss_fn(box2, box4)), [1.5])
    # Test batched loss and reductions
    box1s = torch.stack([box2, box2], dim=0)
    box2s = torch.stack([box3, box4], dim=0)
    assert np.allclose(value(loss_fn(box1s, box2s, reduction="sum")), [2.5])
    assert np.allclose(value(loss_fn(box1s, box2s, reduction="mean")), [1.25])


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_fvcore_giou_loss_empty_inputs(backend, device):
    """fvcore TestGIoULoss.test_empty_inputs."""
    loss_fn = _giou_loss(backend)
    box1 = torch.randn([0, 4], dtype=torch.float32, device=device).requires_grad_()
    box2 = torch.randn([0, 4], dtype=torch.float32, device=device).requires_grad_()
    loss = loss_fn(box1, box2, reduction="mean")
    loss.backward()
    assert loss.detach().cpu().numpy() == 0.0
    assert box1.grad is not None
    assert box2.grad is not None
    loss = loss_fn(box1, box2, reduction="none")
    assert loss.numel() == 0


# ================================================== detectron2 tests/layers/test_nms.py

@pytest.mark.parametrize("backend,device", BACKENDS)
def test_detectron2_batched_nms(backend, device):
    """detectron2 TestNMS.test_nms_scriptability without the scripting (fcos_fast ops are
    not TorchScript): 2000 boxes of 50 classes (interpreted Triton: 64), ours equal to
    torchvision's batched_nms at three thresholds and the boxes left unmodified."""
    n = 64 if interpreted(backend, device) else 2000
    num_classes = 50
    boxes = torch.rand(n, 4) * 100
    # detectron2's note: torchvision's own generator does not guarantee x2 >= x1.
    boxes[:, 2:] += boxes[:, :2]
    scores = torch.rand(n)
    idxs = torch.randint(0, num_classes, (n,))
    for iou in [0.2, 0.5, 0.8]:
        keep_ref = torchvision.ops.batched_nms(boxes, scores, idxs, iou)
        on_device = boxes.to(device)
        backup = on_device.clone()
        keep = ops.batched_nms(on_device, scores.to(device), idxs.to(device), iou,
                               backend=backend)
        assert torch.equal(on_device, backup), "boxes modified by batched_nms"
        assert torch.equal(keep.cpu(), keep_ref), f"batched_nms differs for IoU={iou}"


# ======================================================== torchvision TestFocalLoss
#
# Adapted to class indices: ops.sigmoid_focal_loss takes labels in [-1, C) (one positive
# class per row at most), so torchvision's target kinds become labels, and its targets
# are their one-hot rows: "zeros" (every class negative) is -1 for every row; "ones" (every
# class positive) has no label form and becomes one positive class per row; "random_binary"
# becomes a random label in [-1, C). Half-precision logits give a float32 loss here (the
# contract: computed in float32), so the cross-entropy it is compared with is computed on
# the same logits in float32 too; on the CPU torchvision skips half, which runs here.

def _logit(p):
    return torch.log(p / (1 - p))


def _generate_diverse_input_label_pair(shape=(5, 2), **kwargs):
    """``_generate_diverse_input_target_pair``: inputs of 9 kinds, ``shape[0] * 9`` rows,
    with labels instead of targets."""
    def generate_inputs(range_type):
        low, high = {"small": (0.0, 0.2), "big": (0.8, 1.0), "random": (0.0, 1.0)}[range_type]
        return _logit(torch.testing.make_tensor(shape, low=low, high=high, **kwargs))

    def generate_labels(range_type):
        device = kwargs.get("device", "cpu")
        if range_type == "zeros":
            return torch.full(shape[:1], -1, dtype=torch.int64, device=device)
        if range_type == "ones":
            return torch.randint(0, shape[1], shape[:1], device=device)
        return torch.randint(-1, shape[1], shape[:1], device=device)

    inputs, labels = [], []
    for input_range_type, target_range_type in [
        ("small", "zeros"), ("small", "ones"), ("small", "random_binary"),
        ("big", "zeros"), ("big", "ones"), ("big", "random_binary"),
        ("random", "zeros"), ("random", "ones"), ("random", "random_binary"),
    ]:
        inputs.append(generate_inputs(input_range_type))
        labels.append(generate_labels(target_range_type))
    return torch.cat(inputs), torch.cat(labels)


def _targets(labels, inputs):
    """The one-hot targets torchvision's test would have passed."""
    return torch.nn.functional.one_hot(labels + 1, inputs.shape[-1] + 1)[..., 1:].to(inputs)


def _focal_loss(backend):
    def sigmoid_focal_loss(inputs, labels, alpha=0.25, gamma=2, reduction="none"):
        return ops.sigmoid_focal_loss(inputs, labels, alpha=alpha, gamma=gamma,
                                      reduction=reduction, backend=backend)
    return sigmoid_focal_loss


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("alpha", [-1.0, 0.0, 0.58, 1.0])
@pytest.mark.parametrize("gamma", [0, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.half])
@pytest.mark.parametrize("seed", [0, 1])
def test_focal_loss_correct_ratio(backend, device, alpha, gamma, dtype, seed):
    """TestFocalLoss.test_correct_ratio: the loss over the cross-entropy is
    alpha_t * (1 - p_t) ** gamma. (Adapted: the cross-entropy and the ratio are computed in
    float64 from the same inputs, and focal <= CE is allowed 4 float32 ulps. torchvision's
    test divides its focal loss by the very cross-entropy it multiplied; ours is computed
    otherwise, and more accurately than torch's float32 BCE-with-logits, whose log of
    1 + exp(-|x|) loses 2e-5 relative at a loss of 6e-3: where alpha_t = 1 and gamma = 0
    make the two equal, that error alone fails the check.)"""
    reduction = "none"
    torch.random.manual_seed(seed)
    inputs, labels = _generate_diverse_input_label_pair(dtype=dtype, device=device)
    targets = _targets(labels, inputs)
    focal_loss = _focal_loss(backend)(inputs, labels, gamma=gamma, alpha=alpha,
                                      reduction=reduction).double()
    inputs, targets = inputs.double(), targets.double()
    ce_loss = torch.nn.functional.binary_cross_entropy_with_logits(inputs, targets,
                                                                   reduction=reduction)

    assert torch.all(focal_loss <= ce_loss * (1 + 4 * torch.finfo(torch.float32).eps)), (
        "focal loss must be less or equal to cross entropy loss with same input")

    loss_ratio = (focal_loss / ce_loss).squeeze()
    prob = torch.sigmoid(inputs)
    p_t = prob * targets + (1 - prob) * (1 - targets)
    correct_ratio = (1.0 - p_t) ** gamma
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        correct_ratio = correct_ratio * alpha_t

    tol = 1e-3 if dtype is torch.half else 1e-5
    torch.testing.assert_close(correct_ratio, loss_ratio, atol=tol, rtol=tol)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.half])
@pytest.mark.parametrize("seed", [2, 3])
def test_focal_loss_equal_ce_loss(backend, device, reduction, dtype, seed):
    """TestFocalLoss.test_equal_ce_loss: alpha = -1 and gamma = 0 make it the
    cross-entropy, value and gradient. (Adapted for half: the cross-entropy of the logits
    upcast to float32, its gradient rounded to half, as ours is.)"""
    alpha = -1
    gamma = 0
    torch.random.manual_seed(seed)
    inputs, labels = _generate_diverse_input_label_pair(dtype=dtype, device=device)
    inputs_fl = inputs.clone().requires_grad_()
    inputs_ce = inputs.clone().requires_grad_()
    targets_ce = _targets(labels, inputs).float()
    focal_loss = _focal_loss(backend)(inputs_fl, labels, gamma=gamma, alpha=alpha,
                                      reduction=reduction)
    ce_loss = torch.nn.functional.binary_cross_entropy_with_logits(
        inputs_ce.float(), targets_ce, reduction=reduction)

    torch.testing.assert_close(focal_loss, ce_loss)

    focal_loss.backward()
    ce_loss.backward()
    torch.testing.assert_close(inputs_fl.grad, inputs_ce.grad)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("alpha", [-1.0, 0.0, 0.58, 1.0])
@pytest.mark.parametrize("gamma", [0, 2])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.half])
def test_focal_loss_compiled(backend, device, alpha, gamma, reduction, dtype):
    """TestFocalLoss.test_jit, for torch.compile: fcos_fast's ops are torch.library ops,
    not TorchScript, so the compiled function (fullgraph) stands in for the scripted one."""
    torch._dynamo.reset()
    torch.random.manual_seed(4)
    inputs, labels = _generate_diverse_input_label_pair(dtype=dtype, device=device)
    loss_fn = _focal_loss(backend)
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    focal_loss = loss_fn(inputs, labels, gamma=gamma, alpha=alpha, reduction=reduction)
    compiled_focal_loss = compiled(inputs, labels, gamma=gamma, alpha=alpha,
                                   reduction=reduction)
    tol = 1e-3 if dtype is torch.half else 1e-5
    torch.testing.assert_close(focal_loss, compiled_focal_loss, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.half])
def test_focal_loss_reduction_mode(backend, device, dtype, reduction="xyz"):
    """TestFocalLoss.test_reduction_mode: an unknown reduction raises ValueError."""
    torch.random.manual_seed(0)
    inputs, labels = _generate_diverse_input_label_pair(device=device, dtype=dtype)
    with pytest.raises(ValueError, match="Invalid"):
        _focal_loss(backend)(inputs, labels, 0.25, 2, reduction)


# ======================================== our errors are the kinds torchvision raises

def _bad_call_per_op():
    boxes = torch.rand(3, 4)
    return {
        "nms": lambda: ops.nms(boxes, torch.rand(4), 0.5),
        "batched_nms": lambda: ops.batched_nms(boxes, torch.rand(3), torch.rand(3), 0.5),
        "giou_loss": lambda: ops.giou_loss(boxes, boxes[:2]),
        "fcos_assign": lambda: ops.fcos_assign(torch.rand(5, 3), torch.rand(5), torch.rand(5),
                                               torch.rand(5), torch.rand(1, 2, 4),
                                               torch.ones(1, dtype=torch.int64)),
        "per_class_topk": lambda: ops.per_class_topk(torch.rand(5), 2, 0.1),
        "sigmoid_focal_loss": lambda: ops.sigmoid_focal_loss(torch.rand(5, 3),
                                                             torch.zeros(4, dtype=torch.int64)),
        "backend": lambda: ops.nms(boxes, torch.rand(3), 0.5, backend="cudnn"),
    }


@pytest.mark.parametrize("name", list(_bad_call_per_op()))
def test_input_errors_are_value_and_runtime_errors(name):
    """torchvision's C++ checks raise RuntimeError, its Python checks ValueError; code
    catching either catches ours (ops.InputError is both)."""
    with pytest.raises(ops.InputError) as raised:
        _bad_call_per_op()[name]()
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, RuntimeError)
    assert "\n" not in str(raised.value)  # one line saying what is wrong
