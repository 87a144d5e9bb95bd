"""The FCOS model on its own: calling convention, shapes, empty images, overfitting, errors."""

from __future__ import annotations

import pytest
import torch

from fcos_fast.export import StaticFCOS
from fcos_fast.model import FCOS
from fcos_fast.ops import _dispatch
from tests.model._helpers import random_batch

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def model() -> FCOS:
    """A small model shared by the tests that only read it (mode set per test)."""
    torch.manual_seed(0)
    return FCOS(NUM_CLASSES, "resnet18", min_size=64, max_size=96)


def test_training_returns_three_finite_scalar_losses_with_gradients(model):
    images, targets = random_batch(torch.Generator().manual_seed(1), NUM_CLASSES)
    model.train()
    model.zero_grad()

    losses = model(images, targets)

    assert set(losses) == {"cls_loss", "reg_loss", "ctr_loss"}
    for name, loss in losses.items():
        assert loss.shape == () and loss.dtype == torch.float32, name
        assert torch.isfinite(loss) and loss > 0, name
    sum(losses.values()).backward()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


def test_centerness_weight_scales_only_the_centerness_loss(model):
    images, targets = random_batch(torch.Generator().manual_seed(2), NUM_CLASSES,
                                   empty_image=False)
    model.train()
    weight = model.centerness_weight
    try:
        with torch.no_grad():
            model.centerness_weight = 1.0
            unweighted = model(images, targets)
            model.centerness_weight = 2.0
            weighted = model(images, targets)
    finally:
        model.centerness_weight = weight
    torch.testing.assert_close(weighted["ctr_loss"], 2 * unweighted["ctr_loss"])
    torch.testing.assert_close(weighted["cls_loss"], unweighted["cls_loss"])


def test_defaults_follow_the_design():
    model = FCOS(5, "resnet18")
    assert (model.centerness_weight, model.candidates, model.backend) == (2.0, "per_class", None)
    prior = torch.sigmoid(model.head.cls_logits.bias)
    torch.testing.assert_close(prior, torch.full_like(prior, 0.01))
    assert torch.equal(model.head.centerness.bias, torch.zeros(1))
    assert model.strides == (8, 16, 32, 64, 128)


def test_images_without_boxes(model):
    """No boxes at all: pure background, a finite classification loss, zero box losses."""
    images = [torch.rand(3, 60, 80), torch.rand(3, 50, 45)]
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
               for _ in images]
    model.train()
    model.zero_grad()

    losses = model(images, targets)

    assert torch.isfinite(losses["cls_loss"]) and losses["cls_loss"] > 0
    assert losses["reg_loss"] == 0 and losses["ctr_loss"] == 0
    sum(losses.values()).backward()
    assert torch.isfinite(model.head.cls_logits.weight.grad).all()
    assert model.head.box_regression.weight.grad.abs().sum() == 0


@pytest.mark.parametrize("candidates", ["per_class", "per_level"])
def test_detections_shapes_dtypes_order_and_coordinates(model, candidates):
    images = [torch.rand(3, 70, 120), torch.rand(3, 131, 40), torch.rand(3, 33, 33)]
    model.eval()
    model.candidates, model.score_thresh, model.detections_per_img = candidates, 0.05, 20
    try:
        with torch.no_grad():
            detections = model(images)
    finally:
        model.candidates, model.score_thresh, model.detections_per_img = "per_class", 0.2, 100

    assert len(detections) == len(images)
    assert sum(len(d["boxes"]) for d in detections) > 0
    for image, found in zip(images, detections):
        count = len(found["boxes"])
        assert set(found) == {"boxes", "scores", "labels"}
        assert found["boxes"].shape == (count, 4) and found["boxes"].dtype == torch.float32
        assert found["scores"].shape == (count,) and found["scores"].dtype == torch.float32
        assert found["labels"].shape == (count,) and found["labels"].dtype == torch.int64
        assert count <= 20
        assert (found["scores"] > 0.05).all() and (found["scores"] <= 1).all()
        assert (found["scores"][:-1] >= found["scores"][1:]).all()
        assert ((found["labels"] >= 0) & (found["labels"] < NUM_CLASSES)).all()
        # In the input image's pixels: clipped to it, (x, y) order.
        height, width = image.shape[-2:]
        boxes = found["boxes"]
        assert (boxes >= 0).all()
        assert (boxes[:, 0::2] <= width + 1e-3).all() and (boxes[:, 1::2] <= height + 1e-3).all()
        assert (boxes[:, 2:] >= boxes[:, :2]).all()


def test_no_detections_gives_empty_tensors(model):
    model.eval()
    model.score_thresh = 1.0  # scores are at most 1: nothing passes
    try:
        with torch.no_grad():
            (found,) = model([torch.rand(3, 50, 60)])
    finally:
        model.score_thresh = 0.2
    assert found["boxes"].shape == (0, 4) and found["scores"].shape == (0,)
    assert found["labels"].shape == (0,) and found["labels"].dtype == torch.int64


def test_loss_decreases_on_a_tiny_overfit_set():
    torch.manual_seed(0)
    model = FCOS(2, "resnet18", min_size=64, max_size=96, trainable_backbone_layers=0)
    images = [torch.rand(3, 64, 80), torch.rand(3, 72, 64)]
    targets = [{"boxes": torch.tensor([[8.0, 10.0, 40.0, 50.0], [30.0, 20.0, 76.0, 60.0]]),
                "labels": torch.tensor([0, 1])},
               {"boxes": torch.tensor([[5.0, 5.0, 60.0, 66.0]]), "labels": torch.tensor([1])}]
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    history = []
    for _ in range(10):
        losses = model(images, targets)
        history.append({name: loss.item() for name, loss in losses.items()})
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    first, last = history[0], history[-1]
    assert last["cls_loss"] < 0.5 * first["cls_loss"], history
    assert last["reg_loss"] < 0.9 * first["reg_loss"], history
    # The centerness BCE has a floor (the entropy of its soft targets); the total still
    # has to fall clearly.
    assert sum(last.values()) < 0.75 * sum(first.values()), history


@pytest.mark.parametrize("target, message", [
    ({"boxes": torch.tensor([[10.0, 10.0, 10.0, 20.0]]), "labels": torch.tensor([0])},
     "positive width and height"),
    ({"boxes": torch.tensor([[10.0, 10.0, 20.0, float("nan")]]), "labels": torch.tensor([0])},
     "non-finite"),
    ({"boxes": torch.tensor([[10.0, 10.0, 20.0, 20.0]]), "labels": torch.tensor([NUM_CLASSES])},
     "label 3 outside"),
    ({"boxes": torch.tensor([10.0, 10.0, 20.0, 20.0]), "labels": torch.tensor([0])},
     r"\['boxes'\] must be a \[N, 4\]"),
    ({"boxes": torch.tensor([[10.0, 10.0, 20.0, 20.0]]), "labels": torch.tensor([0, 1])},
     "one label per box"),
])
def test_bad_targets_raise_value_error(model, target, message):
    model.train()
    images = [torch.rand(3, 40, 40), torch.rand(3, 40, 40)]
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    with pytest.raises(ValueError, match=message):
        model(images, [empty, target])


def test_training_without_targets_raises(model):
    model.train()
    with pytest.raises(ValueError, match="targets are required"):
        model([torch.rand(3, 40, 40)])


def test_backend_option_reaches_the_ops(model):
    model.train()
    images, targets = random_batch(torch.Generator().manual_seed(4), NUM_CLASSES)
    model.backend = "no-such-backend"
    try:
        with pytest.raises(ValueError, match="no-such-backend"):
            model(images, targets)
    finally:
        model.backend = None


#: The ops each post-processing path dispatches: (path, candidate scheme) -> op names.
POST_PROCESSING_OPS = {
    ("dynamic", "per_class"): {"per_class_topk", "batched_nms"},
    ("dynamic", "per_level"): {"batched_nms"},
    ("static", "per_class"): {"per_class_topk_padded", "batched_nms_padded"},
    ("static", "per_level"): {"batched_nms_padded"},
}


@pytest.mark.parametrize("path, candidates", list(POST_PROCESSING_OPS))
def test_backend_option_reaches_every_post_processing_op(model, monkeypatch, path, candidates):
    """Detection with ``backend="reference"``, dynamic (``model(images)``) and static
    (``StaticFCOS``), per class and per level: every op it dispatches is asked for the
    model's backend. An op called without it would take the automatic choice (native
    here), and the detection tests of the other backends would test native unawares."""
    monkeypatch.delenv(_dispatch.BACKEND_ENV_VAR, raising=False)
    calls = []
    select = _dispatch.select

    def spy(op, device, backend=None):
        calls.append((op, backend))
        return select(op, device, backend)

    monkeypatch.setattr(_dispatch, "select", spy)
    model.eval()
    settings = (model.candidates, model.score_thresh, model.backend)
    model.candidates, model.score_thresh, model.backend = candidates, 0.05, "reference"
    try:
        with torch.no_grad():
            if path == "dynamic":
                found = model([torch.rand(3, 64, 80), torch.rand(3, 70, 64)])
                assert sum(len(d["scores"]) for d in found) > 0
            else:
                found = StaticFCOS(model)(torch.rand(2, 3, 64, 64))
                assert found[3].sum() > 0
    finally:
        model.candidates, model.score_thresh, model.backend = settings
    assert {op for op, _ in calls} == POST_PROCESSING_OPS[path, candidates], calls
    assert all(backend == "reference" for _, backend in calls), calls


def test_mixed_precision_losses_and_detections_are_float32(model):
    images, targets = random_batch(torch.Generator().manual_seed(5), NUM_CLASSES, sizes=(40, 64))
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images, targets)
    assert all(loss.dtype == torch.float32 and torch.isfinite(loss) for loss in losses.values())
    model.eval()
    model.score_thresh = 0.05
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            detections = model(images)
    finally:
        model.score_thresh = 0.2
    assert all(d["boxes"].dtype == torch.float32 for d in detections)


def test_unknown_options_are_rejected():
    with pytest.raises(ValueError, match="backbone must be one of"):
        FCOS(2, "resnet19")
    with pytest.raises(ValueError, match="candidates must be one of"):
        FCOS(2, "resnet18", candidates="global")


def _nan_head(model: FCOS) -> dict[str, torch.Tensor]:
    """Make the box regression NaN, as after a diverged step; returns what to restore."""
    saved = {name: value.clone() for name, value in model.head.state_dict().items()}
    with torch.no_grad():
        model.head.box_regression.bias.fill_(float("nan"))
    return saved


def test_nan_predictions_give_non_finite_losses_not_an_error(model):
    """A diverged model's NaN boxes reach ops.giou_loss unchecked: the losses come back
    NaN (the trainer's non-finite guard then skips the step) instead of the op's input
    check raising "pred contains NaN"."""
    images, targets = random_batch(torch.Generator().manual_seed(6), NUM_CLASSES,
                                   empty_image=False)
    model.train()
    saved = _nan_head(model)
    try:
        losses = model(images, targets)
    finally:
        model.head.load_state_dict(saved)
    assert not torch.isfinite(losses["reg_loss"])
    assert not torch.isfinite(sum(losses.values()))


def test_nan_predictions_in_evaluation_do_not_raise(model):
    """NaN boxes reach ops.batched_nms unchecked too: detections, however meaningless,
    instead of an exception in the middle of an evaluation."""
    model.eval()
    model.score_thresh = 0.05
    saved = _nan_head(model)
    try:
        with torch.no_grad():
            detections = model([torch.rand(3, 64, 64), torch.rand(3, 50, 70)])
    finally:
        model.head.load_state_dict(saved)
        model.score_thresh = 0.2
    assert len(detections) == 2
    for found in detections:
        assert found["boxes"].shape == (len(found["scores"]), 4)
        assert found["labels"].dtype == torch.int64


def test_model_input_errors_are_also_assertion_errors(model):
    """torchvision's detection models raise AssertionError (torch._assert) for these;
    ours raise FCOSInputError, a ValueError and an AssertionError."""
    from fcos_fast.model import FCOSInputError

    model.train()
    with pytest.raises(AssertionError) as raised:
        model([torch.rand(3, 40, 40)])
    assert isinstance(raised.value, FCOSInputError) and isinstance(raised.value, ValueError)
