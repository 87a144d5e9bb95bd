"""The point grid against torchvision's AnchorGenerator, box coding, and the backbone."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops.misc import FrozenBatchNorm2d

from fcos_fast.model import FCOS, resnet_fpn_backbone
from fcos_fast.model.points import centerness_targets, decode_boxes, make_points

STRIDES = (8, 16, 32, 64, 128)


def _feature_shapes(height, width):
    """P3-P7 sizes of a padded input: stride-2 convolutions round up."""
    shapes = []
    height, width = height // 8, width // 8
    for _ in STRIDES:
        shapes.append((height, width))
        height, width = (height + 1) // 2, (width + 1) // 2
    return shapes


@pytest.mark.parametrize("height, width", [(64, 64), (224, 96), (800, 1216), (32, 160)])
def test_points_are_torchvisions_anchor_centers_and_sizes(height, width):
    """Including sizes where P6/P7 steps are not 64/128 (224 / 4 = 56, 224 / 2 = 112)."""
    shapes = _feature_shapes(height, width)
    generator = AnchorGenerator(tuple((s,) for s in STRIDES), ((1.0,),) * len(STRIDES))
    features = [torch.zeros(1, 1, h, w) for h, w in shapes]
    image_list = ImageList(torch.zeros(1, 3, height, width), [(height, width)])
    (anchors,) = generator(image_list, features)

    points = make_points(shapes, (height, width), STRIDES, device=torch.device("cpu"))

    assert points.num_per_level == [h * w for h, w in shapes]
    assert torch.equal(points.xy, (anchors[:, :2] + anchors[:, 2:]) / 2)
    assert torch.equal(points.stride, anchors[:, 2] - anchors[:, 0])


def test_scale_ranges_open_at_both_ends():
    points = make_points(_feature_shapes(128, 128), (128, 128), STRIDES,
                         device=torch.device("cpu"))
    lower, upper = points.scale_ranges()
    first, last = points.num_per_level[0], points.num_per_level[-1]
    assert (lower[:first] == 0).all() and torch.equal(lower[first:], 4 * points.stride[first:])
    assert torch.isinf(upper[-last:]).all()
    assert torch.equal(upper[:-last], 8 * points.stride[:-last])


def test_decode_boxes_and_centerness():
    xy = torch.tensor([[10.0, 20.0], [0.0, 0.0]])
    stride = torch.tensor([8.0, 16.0])
    distances = torch.tensor([[1.0, 0.5, 2.0, 0.25], [0.0, 0.0, 1.0, 1.0]])
    boxes = decode_boxes(xy, stride, distances)
    torch.testing.assert_close(boxes, torch.tensor([[2.0, 16.0, 26.0, 22.0],
                                                    [0.0, 0.0, 16.0, 16.0]]))
    # (l, t, r, b) = (8, 4, 16, 2): sqrt(8/16 * 2/4) = 0.5; a centered point gives 1.
    centerness = centerness_targets(torch.tensor([[10.0, 20.0], [5.0, 5.0]]),
                                    torch.tensor([[2.0, 16.0, 26.0, 22.0], [0.0, 0.0, 10.0, 10.0]]))
    torch.testing.assert_close(centerness, torch.tensor([0.5, 1.0]))


@pytest.mark.parametrize("name, channels", [("resnet18", 512), ("resnet34", 512),
                                            ("resnet50", 2048)])
def test_backbones_give_p3_to_p7(name, channels):
    backbone = resnet_fpn_backbone(name)
    assert backbone.fpn.inner_blocks[-1][0].in_channels == channels
    with torch.no_grad():
        features = backbone.eval()(torch.zeros(1, 3, 64, 96))
    assert list(features) == ["0", "1", "2", "p6", "p7"]
    assert [tuple(f.shape) for f in features.values()] == [
        (1, 256, h, w) for h, w in _feature_shapes(64, 96)]
    assert isinstance(backbone.body.bn1, torch.nn.BatchNorm2d)
    assert all(p.requires_grad for p in backbone.parameters())


def test_backbone_weights_file_is_loaded_and_frozen_like_torchvision(tmp_path):
    resnet = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(resnet.state_dict(), path)

    model = FCOS(3, "resnet18", backbone_weights=path)

    body = model.backbone.body
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert torch.equal(body.layer3[1].conv2.weight, resnet.layer3[1].conv2.weight)
    assert torch.equal(body.layer1[0].bn1.running_var, resnet.layer1[0].bn1.running_var)
    # Pretrained default: layer2-4 trained, the stem and layer1 frozen.
    trainable = {name.split(".")[0] for name, p in body.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}


@pytest.mark.parametrize("other", ["resnet34", "resnet50"])
def test_a_weights_file_of_another_network_is_rejected(tmp_path, other):
    """resnet34 has extra blocks (unexpected keys); resnet50 other shapes."""
    path = tmp_path / f"{other}.pth"
    torch.save(getattr(torchvision.models, other)(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="not a torchvision resnet18 state_dict"):
        resnet_fpn_backbone("resnet18", weights=path)
