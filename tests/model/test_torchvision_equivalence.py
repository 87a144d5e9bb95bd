"""``from_torchvision``: our model equals torchvision's FCOS, loss for loss, box for box.

Every case builds a random torchvision FCOS (random weights, classes, image sizes and
boxes from its seed), converts it, and runs both on the same inputs: in training mode the
losses (and the head gradients) must agree to 1e-4 relative, in evaluation mode the
detections must have the same count and labels, and boxes and scores within 1e-3. Each
case runs with every backend ``fcos_fast.ops`` has on each device.
"""

from __future__ import annotations

import numpy
import pytest
import torch
import torchvision
from torch.testing import assert_close

from fcos_fast.model import from_torchvision
from tests.model._helpers import random_batch, randomize_head, torchvision_fcos
from tests.ops._cases import backend_matrix, interpreted

# torchvision's loss names -> ours.
LOSS_NAMES = {"classification": "cls_loss", "bbox_regression": "reg_loss",
              "bbox_ctrness": "ctr_loss"}
SEEDS = [0, 1, 2]


def _seeded_backend_matrix(slow_seeds_when_interpreted=()):
    """``(backend, device, seed)`` for every backend and seed.

    The Triton interpreter takes tens of seconds on the seeds whose thousands of NMS
    candidates it runs element by element; those cases are marked ``slow``.
    """
    params = []
    for case in backend_matrix():
        backend, device = case.values
        for seed in SEEDS:
            slow = interpreted(backend, device) and seed in slow_seeds_when_interpreted
            params.append(pytest.param(backend, device, seed, id=f"{case.id}-{seed}",
                                       marks=list(case.marks) + ([pytest.mark.slow] if slow
                                                                 else [])))
    return params


def _case(seed: int, device: str, **model_kwargs):
    """A random torchvision model (in train mode) and a random batch for ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    num_classes = int(torch.randint(1, 12, (1,), generator=generator))
    min_size = int(torch.randint(64, 129, (1,), generator=generator))
    torch.manual_seed(seed)  # the model's own initialisation
    tv_model = torchvision_fcos(num_classes, min_size=min_size, max_size=160, **model_kwargs)
    # Seed 0: three images, one without boxes; seed 1: two, one empty; seed 2: two full.
    images, targets = random_batch(generator, num_classes, num_images=3 if seed == 0 else 2,
                                   sizes=(48, 180), max_boxes=10, empty_image=seed != 2)
    tv_model.to(device)
    images = [image.to(device) for image in images]
    targets = [{key: value.to(device) for key, value in target.items()} for target in targets]
    return tv_model, images, targets, generator


def _in_canonical_order(detections):
    """Detections sorted by score descending, then label and box.

    Both models sort by score; only the order of exactly equal scores is arbitrary
    (torchvision's sorts are not stable), so that order is fixed here before comparing.
    """
    keys = torch.cat([-detections["scores"][:, None].double(),
                      detections["labels"][:, None].double(),
                      detections["boxes"].double()], dim=1).cpu().numpy()
    order = torch.from_numpy(numpy.lexsort(keys.T[::-1]).copy()).to(detections["boxes"].device)
    return {key: value[order] for key, value in detections.items()}


def _assert_same_detections(ours, theirs):
    assert len(ours) == len(theirs)
    for image, (mine, reference) in enumerate(zip(ours, theirs)):
        assert len(mine["boxes"]) == len(reference["boxes"]), f"image {image}"
        mine, reference = _in_canonical_order(mine), _in_canonical_order(reference)
        assert torch.equal(mine["labels"], reference["labels"]), f"image {image}"
        assert_close(mine["boxes"], reference["boxes"], atol=1e-3, rtol=0)
        assert_close(mine["scores"], reference["scores"], atol=1e-3, rtol=0)
        assert mine["labels"].dtype == reference["labels"].dtype == torch.int64


@pytest.mark.parametrize("backend, device, seed", _seeded_backend_matrix())
def test_losses_and_gradients_equal_torchvision(backend, device, seed):
    tv_model, images, targets, _ = _case(seed, device)
    model = from_torchvision(tv_model, backend=backend)
    tv_model.train()
    model.train()

    theirs = tv_model(images, targets)
    ours = model(images, targets)

    assert set(ours) == set(LOSS_NAMES.values())
    for tv_name, name in LOSS_NAMES.items():
        assert_close(ours[name], theirs[tv_name], rtol=1e-4, atol=0, msg=name)
    sum(theirs.values()).backward()
    sum(ours.values()).backward()
    tv_head = dict(tv_model.head.named_parameters())
    for tv_name, our_name in [("classification_head.cls_logits.weight", "cls_logits.weight"),
                              ("regression_head.bbox_reg.weight", "box_regression.weight"),
                              ("regression_head.bbox_ctrness.weight", "centerness.weight"),
                              ("classification_head.conv.0.weight", "cls_tower.0.weight"),
                              ("regression_head.conv.0.weight", "reg_tower.0.weight")]:
        reference = tv_head[tv_name].grad
        scale = reference.abs().max()
        assert_close(model.head.get_parameter(our_name).grad, reference, rtol=1e-4,
                     atol=1e-5 * float(scale), msg=our_name)


@pytest.mark.parametrize("backend, device, seed",
                         _seeded_backend_matrix(slow_seeds_when_interpreted=[0]))
def test_detections_equal_torchvision(backend, device, seed):
    # Seed 0 keeps everything NMS keeps; the others cut the NMS output short.
    detections_per_img = [1000, 7, 30][seed]
    tv_model, images, _, generator = _case(seed, device, detections_per_img=detections_per_img,
                                           topk_candidates=[1000, 50, 200][seed])
    randomize_head(tv_model, generator)
    tv_model.eval()
    model = from_torchvision(tv_model, backend=backend)
    assert not model.training

    with torch.no_grad():
        theirs = tv_model(images)
        ours = model(images)

    assert sum(len(d["boxes"]) for d in theirs) > 0, "the case must produce detections"
    _assert_same_detections(ours, theirs)


@pytest.mark.parametrize("backend, device", backend_matrix())
def test_fcos_resnet50_fpn(backend, device):
    """torchvision's own builder: ResNet-50, 91 classes, BatchNorm, all layers trainable.

    One conversion serves both modes: the training step moves both models' BatchNorm
    running statistics, identically, before the detections are compared.
    """
    generator = torch.Generator().manual_seed(5)
    tv_model = torchvision.models.detection.fcos_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91, min_size=64, max_size=96,
        topk_candidates=100)  # NMS at scale is the detection test's job
    randomize_head(tv_model, generator)
    tv_model.to(device)
    images, targets = random_batch(generator, 91, num_images=2, sizes=(50, 100), device=device)
    model = from_torchvision(tv_model, backend=backend)

    theirs, ours = tv_model(images, targets), model(images, targets)
    for tv_name, name in LOSS_NAMES.items():
        assert_close(ours[name], theirs[tv_name], rtol=1e-4, atol=0, msg=name)

    tv_model.eval()
    model.eval()
    with torch.no_grad():
        _assert_same_detections(model(images), tv_model(images))


def test_frozen_backbone_settings_are_copied():
    """A "pretrained-style" torchvision model: FrozenBatchNorm2d, only 3 stages trainable."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    resnet = torchvision.models.resnet34(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = torchvision.models.detection.backbone_utils._resnet_fpn_extractor(
        resnet, 3, returned_layers=[2, 3, 4],
        extra_blocks=torchvision.ops.feature_pyramid_network.LastLevelP6P7(256, 256))
    tv_model = torchvision.models.detection.FCOS(
        backbone, 4, min_size=100, max_size=150, score_thresh=0.3, nms_thresh=0.5,
        center_sampling_radius=2.0, topk_candidates=77, detections_per_img=11,
        image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.25])
    model = from_torchvision(tv_model)

    assert isinstance(model.backbone.body.bn1, FrozenBatchNorm2d)
    trainable = {name for name, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable == {name for name, p in tv_model.backbone.named_parameters()
                         if p.requires_grad}
    assert not any(name.startswith("body.layer1") for name in trainable)
    assert (model.score_thresh, model.nms_thresh, model.center_sampling_radius,
            model.topk_candidates, model.detections_per_img) == (0.3, 0.5, 2.0, 77, 11)
    assert (model.transform.min_size, model.transform.max_size) == ((100,), 150)
    assert (model.transform.image_mean, model.transform.image_std) == (
        [0.4, 0.5, 0.6], [0.2, 0.3, 0.25])
    assert (model.candidates, model.centerness_weight) == ("per_level", 1.0)

    generator = torch.Generator().manual_seed(3)
    images, targets = random_batch(generator, 4, num_images=2)
    theirs, ours = tv_model(images, targets), model(images, targets)
    for tv_name, name in LOSS_NAMES.items():
        assert_close(ours[name], theirs[tv_name], rtol=1e-4, atol=0, msg=name)


def test_the_converted_model_shares_no_tensors():
    tv_model = torchvision_fcos(2)
    model = from_torchvision(tv_model)
    ours = {t.data_ptr() for t in model.state_dict().values()}
    assert not ours & {t.data_ptr() for t in tv_model.state_dict().values()}


def test_rejects_other_models():
    with pytest.raises(TypeError, match="torchvision.models.detection.FCOS"):
        from_torchvision(torch.nn.Linear(2, 2))


class _TinyPyramid(torch.nn.Module):
    """A non-ResNet backbone: five stride-2 steps after a stride-8 stem, 32 channels."""

    out_channels = 32

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 32, kernel_size=8, stride=8)
        self.downs = torch.nn.ModuleList(
            torch.nn.Conv2d(32, 32, kernel_size=3, stride=2, padding=1) for _ in range(4))

    def forward(self, x):
        levels = [torch.relu(self.stem(x))]
        for down in self.downs:
            levels.append(torch.relu(down(levels[-1])))
        return dict(zip("abcde", levels))


def test_a_backbone_that_is_not_a_resnet_fpn_is_copied():
    torch.manual_seed(0)
    tv_model = torchvision.models.detection.FCOS(_TinyPyramid(), 3, min_size=96, max_size=128)
    model = from_torchvision(tv_model)
    assert isinstance(model.backbone, _TinyPyramid) and model.backbone is not tv_model.backbone

    images, targets = random_batch(torch.Generator().manual_seed(0), 3, num_images=2)
    theirs, ours = tv_model(images, targets), model(images, targets)
    for tv_name, name in LOSS_NAMES.items():
        assert_close(ours[name], theirs[tv_name], rtol=1e-4, atol=0, msg=name)
