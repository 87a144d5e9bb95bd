"""Builders shared by the model tests: small torchvision FCOS models and random batches.

Everything is small (ResNet-18, images of about 64-200 px, a handful of boxes) so that
the model tests run in seconds on two CPU cores, and in the Triton interpreter.
"""

from __future__ import annotations

import torch
import torchvision
from torchvision.models.detection import FCOS as TorchvisionFCOS
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.feature_pyramid_network import LastLevelP6P7


def torchvision_fcos(num_classes: int, *, depth: str = "resnet18", min_size: int = 128,
                     max_size: int = 192, trainable_layers: int = 5,
                     **kwargs) -> TorchvisionFCOS:
    """A randomly initialised torchvision FCOS with a ResNet-FPN P3-P7 backbone.

    The backbone is built exactly as in ``fcos_resnet50_fpn`` (returned layers 2-4,
    P6/P7 from P5), with any ResNet depth.
    """
    resnet = getattr(torchvision.models, depth)(weights=None)
    backbone = _resnet_fpn_extractor(resnet, trainable_layers, returned_layers=[2, 3, 4],
                                     extra_blocks=LastLevelP6P7(256, 256))
    return TorchvisionFCOS(backbone, num_classes, min_size=min_size, max_size=max_size, **kwargs)


@torch.no_grad()
def randomize_head(tv_model: TorchvisionFCOS, generator: torch.Generator) -> None:
    """Give the head weights that produce confident, varied detections.

    A freshly initialised head scores every point about ``sqrt(0.01 * 0.5)``, below any
    usual threshold, and predicts near-empty boxes; this spreads the class biases around
    the threshold, makes the boxes a few strides wide and the scores differ per point.
    """
    head = tv_model.head
    for module in head.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.05)
    cls_bias = head.classification_head.cls_logits.bias
    cls_bias.copy_(torch.rand(cls_bias.shape, generator=generator) * 4 - 4)
    reg_bias = head.regression_head.bbox_reg.bias
    reg_bias.copy_(torch.rand(reg_bias.shape, generator=generator) * 2.5 + 1.5)


def random_batch(generator: torch.Generator, num_classes: int, *, num_images: int = 2,
                 sizes: tuple[int, int] = (64, 200), max_boxes: int = 8,
                 empty_image: bool = True, device="cpu"
                 ) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Images of random sizes with random valid boxes; with ``empty_image`` the last image
    has no boxes.

    Returns ``(images, targets)``: ``[3, H_i, W_i]`` tensors in ``[0, 1]`` and
    ``{"boxes": [G_i, 4] (x1, y1, x2, y2) float32, "labels": [G_i] int64}``.
    """
    images, targets = [], []
    for index in range(num_images):
        height, width = torch.randint(sizes[0], sizes[1] + 1, (2,), generator=generator).tolist()
        images.append(torch.rand(3, height, width, generator=generator, device="cpu").to(device))
        count = 0 if (empty_image and index == num_images - 1) else int(
            torch.randint(1, max_boxes + 1, (1,), generator=generator))
        extent = torch.tensor([width, height], dtype=torch.float32)
        corner = torch.rand(count, 2, generator=generator) * extent * 0.8
        size = torch.rand(count, 2, generator=generator) * extent * 0.6 + 4
        boxes = torch.cat([corner, torch.minimum(corner + size, extent)], dim=1)
        labels = torch.randint(0, num_classes, (count,), generator=generator)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return images, targets
