"""torchvision's detection-model tests, run on our FCOS.

Sources: pytorch/vision ``test/test_models.py`` (stored at commit
00ef56de6d82a3790743cce74bc7634ec5f4b748): ``test_detection_model``,
``_check_input_backprop``, ``test_detection_model_validation``,
``test_fasterrcnn_double``, ``test_fasterrcnn_switch_devices``,
``test_detection_model_trainable_backbone_layers`` with the ``fcos_resnet50_fpn``
settings (``num_classes=2, score_thresh=0.05, min_size=max_size=224``, input
``3x224x224``); and ``test/test_models_detection_negative_samples.py`` (the empty-image
training sample; torchvision's ``test_forward_negative_sample_fcos``). torchvision is BSD
3-Clause licensed, Copyright (c) Soumith Chintala 2016, all rights reserved; derived
source keeps that notice, the list of conditions and the disclaimer (torchvision's
LICENSE file).

Differences, each for a reason:

* ResNet-18 instead of ResNet-50 where the depth does not matter (two shared CPU cores);
  the trainable-layers count uses ResNet-50, whose numbers torchvision fixes.
* The expected-output pickles (``_assert_expected``) hold torchvision's own random-weight
  model's detections; ours are compared with torchvision's FCOS given the same weights in
  ``test_torchvision_equivalence.py`` instead.
* TorchScript (``_check_jit_scriptable``) is not supported: fcos_fast's model and ops are
  for eager mode, ``torch.compile`` and ``torch.export``; ``torch.jit`` is deprecated in
  PyTorch. ``torch.jit.script`` refuses the model with one clear error instead.
"""

from __future__ import annotations

import pytest
import torch
import torchvision

from fcos_fast.model import FCOS, FCOSInputError

NUM_CLASSES = 2  # torchvision's _model_params["fcos_resnet50_fpn"]
SIZE = 224


@pytest.fixture(scope="module")
def model() -> FCOS:
    torch.manual_seed(0)
    return FCOS(NUM_CLASSES, "resnet18", min_size=SIZE, max_size=SIZE, score_thresh=0.05)


def _check_out(out, num_images=1):
    """What torchvision's test_detection_model / checkOut assert of the format, plus the
    dtypes and shapes our docstring promises."""
    assert len(out) == num_images
    for found in out:
        assert set(found) == {"boxes", "scores", "labels"}
        count = len(found["scores"])
        assert found["boxes"].shape == (count, 4) and found["boxes"].dtype == torch.float32
        assert found["scores"].dtype == torch.float32
        assert found["labels"].shape == (count,) and found["labels"].dtype == torch.int64


def _check_input_backprop(model, inputs):
    """torchvision's _check_input_backprop for a detection model: the scores of the first
    image, summed and backpropagated, reach every input image."""
    requires_grad = [image.requires_grad for image in inputs]
    for image in inputs:
        image.requires_grad_(True)
    out = model(inputs)
    out[0]["scores"].sum().backward()
    for image, flag in zip(inputs, requires_grad):
        assert image.grad is not None
        image.requires_grad_(flag)


def test_detection_model(model):
    """test_detection_model: eval output format, the input list left as it was, and input
    backprop (the expected-file comparison and TorchScript: see the module docstring)."""
    model.eval()
    x = torch.rand(3, SIZE, SIZE)
    model_input = [x]
    out = model(model_input)
    assert model_input[0] is x
    _check_out(out)
    assert len(out[0]["scores"]) > 0  # a random head scores about 0.07 > 0.05 everywhere
    _check_input_backprop(model, model_input)


def test_detection_scores_backpropagate_to_the_head_and_backbone(model):
    """Explainability tools backpropagate from detection scores (and boxes) in eval mode."""
    model.eval()
    model.zero_grad()
    out = model([torch.rand(3, SIZE, SIZE)])
    out[0]["scores"].sum().backward()
    assert model.head.cls_logits.weight.grad.abs().sum() > 0
    assert model.head.centerness.weight.grad.abs().sum() > 0
    assert model.backbone.body.layer4[0].conv1.weight.grad.abs().sum() > 0
    model.zero_grad()
    out = model([torch.rand(3, SIZE, SIZE)])
    out[0]["boxes"].sum().backward()
    assert model.head.box_regression.weight.grad.abs().sum() > 0
    model.zero_grad()


@pytest.mark.parametrize("candidates", ["per_class", "per_level"])
@pytest.mark.parametrize("no_graph", ["no_grad", "inference_mode"])
def test_without_gradients_the_same_detections_and_no_graph(model, candidates, no_graph):
    model.eval()
    model.candidates = candidates
    images = [torch.rand(3, SIZE, SIZE), torch.rand(3, 160, 200)]
    try:
        with_graph = model(images)
        context = torch.no_grad() if no_graph == "no_grad" else torch.inference_mode()
        with context:
            without = model(images)
    finally:
        model.candidates = "per_class"
    assert with_graph[0]["scores"].requires_grad and with_graph[0]["boxes"].requires_grad
    for graph, plain in zip(with_graph, without):
        for key in ("boxes", "scores", "labels"):
            assert not plain[key].requires_grad and plain[key].grad_fn is None
            assert torch.equal(graph[key].detach(), plain[key]), key


def test_images_of_different_sizes_in_one_call(model):
    """model.eval(); model([img1, img2]) with different sizes: one result per image, in
    that image's pixels."""
    model.eval()
    images = [torch.rand(3, 100, 150), torch.rand(3, 180, 90), torch.rand(3, 64, 64)]
    with torch.no_grad():
        out = model(images)
    _check_out(out, num_images=3)
    for image, found in zip(images, out):
        height, width = image.shape[-2:]
        boxes = found["boxes"]
        assert (boxes >= 0).all()
        # Clipped in the resized image, then scaled back: allow the rounding of that.
        assert (boxes[:, 0::2] <= width + 1e-3).all()
        assert (boxes[:, 1::2] <= height + 1e-3).all()


def test_forward_negative_sample():
    """test_models_detection_negative_samples: an image without boxes in training (with the
    extra keys a COCO-style dataset gives) has zero box-regression and centerness losses."""
    torch.manual_seed(0)
    model = FCOS(2, "resnet18", min_size=100, max_size=100)
    images = [torch.rand((3, 100, 100), dtype=torch.float32)]
    boxes = torch.zeros((0, 4), dtype=torch.float32)
    negative_target = {
        "boxes": boxes,
        "labels": torch.zeros(0, dtype=torch.int64),
        "image_id": 4,
        "area": (boxes[:, 3] - boxes[:, 1]) * (boxes[:, 2] - boxes[:, 0]),
        "iscrowd": torch.zeros((0,), dtype=torch.int64),
    }
    loss_dict = model(images, [negative_target])
    # torchvision: loss_dict["bbox_regression"] and ["bbox_ctrness"] equal tensor(0.0)
    torch.testing.assert_close(loss_dict["reg_loss"], torch.tensor(0.0), rtol=0, atol=0)
    torch.testing.assert_close(loss_dict["ctr_loss"], torch.tensor(0.0), rtol=0, atol=0)
    assert torch.isfinite(loss_dict["cls_loss"]) and loss_dict["cls_loss"] > 0


def test_detection_model_validation(model):
    """test_detection_model_validation: torchvision raises AssertionError for each; ours
    is FCOSInputError, an AssertionError and a ValueError."""
    model.train()
    x = [torch.rand(3, 300, 300)]

    # validate that targets are present in training
    with pytest.raises(AssertionError):
        model(x)
    # validate type
    with pytest.raises(AssertionError):
        model(x, targets=[{"boxes": 0.0}])
    # validate boxes shape
    for boxes in (torch.rand((4,)), torch.rand((1, 5))):
        with pytest.raises(AssertionError):
            model(x, targets=[{"boxes": boxes}])
    # validate that no degenerate boxes are present
    boxes = torch.tensor([[1, 3, 1, 4], [2, 4, 3, 4]])
    with pytest.raises(AssertionError):
        model(x, targets=[{"boxes": boxes}])
    # ... also with labels and float boxes, where only the degenerate box is wrong
    with pytest.raises(FCOSInputError, match="positive width and height"):
        model(x, targets=[{"boxes": boxes.float(), "labels": torch.tensor([0, 1])}])


def test_double_model():
    """test_fasterrcnn_double, for FCOS: a float64 model runs and backpropagates."""
    torch.manual_seed(0)
    model = FCOS(50, "resnet18", min_size=SIZE, max_size=SIZE)
    model.double()
    model.eval()
    x = torch.rand(3, 300, 300, dtype=torch.float64)
    model_input = [x]
    out = model(model_input)
    assert model_input[0] is x
    assert len(out) == 1
    assert "boxes" in out[0] and "scores" in out[0] and "labels" in out[0]
    _check_input_backprop(model, model_input)


def test_outputs_are_on_the_input_device(model):
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 64, 64)])
    assert all(t.device.type == "cpu" for t in out[0].values())


@pytest.mark.cuda
def test_switch_devices(gpu):
    """test_fasterrcnn_switch_devices, for FCOS: CUDA, CUDA autocast, input backprop, then
    back to the CPU (rehearsed on the CPU alone)."""
    torch.manual_seed(0)
    model = FCOS(50, "resnet18", min_size=SIZE, max_size=SIZE, score_thresh=0.05)
    model.to(gpu.device)
    model.eval()
    x = torch.rand(3, 300, 300, device=gpu.device)
    model_input = [x]
    out = model(model_input)
    assert model_input[0] is x
    _check_out(out)
    assert all(t.device == gpu.device for t in out[0].values())
    with torch.autocast(gpu.device.type):
        out = model(model_input)
    _check_out(out)
    _check_input_backprop(model, model_input)

    # now switch to cpu and make sure it works
    model.cpu()
    x = x.cpu()
    out_cpu = model([x])
    _check_out(out_cpu)
    assert all(t.device.type == "cpu" for t in out_cpu[0].values())
    _check_input_backprop(model, [x])


def test_detection_model_trainable_backbone_layers(tmp_path):
    """test_detection_model_trainable_backbone_layers: the number of trainable parameters
    for 0-5 trainable ResNet-50 stages equals fcos_resnet50_fpn's (torchvision's
    _model_tests_values), with backbone weights (random ones, from a file)."""
    weights = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), weights)
    n_trainable_params = []
    for trainable_layers in range(0, 5 + 1):
        model = FCOS(91, "resnet50", backbone_weights=weights,
                     trainable_backbone_layers=trainable_layers)
        n_trainable_params.append(len([p for p in model.parameters() if p.requires_grad]))
    assert n_trainable_params == [54, 64, 83, 96, 106, 107]


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_jit_scriptable(model):
    """test_detection_model's _check_jit_scriptable scripts the model. fcos_fast does not
    support TorchScript: ``torch.jit.script`` refuses our FCOS at once, in one line that
    says so and names what to use instead, not with TorchScript's error about the first
    Python construct it cannot compile."""
    with pytest.raises(RuntimeError, match=r"^fcos_fast's FCOS does not support TorchScript "
                                           r".*torch\.compile.*StaticFCOS"):
        torch.jit.script(model)
