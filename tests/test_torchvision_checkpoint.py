"""``--torchvision-checkpoint``: a torchvision ``fcos_resnet50_fpn`` state dict evaluated by
our pipeline gives exactly pycocotools' metrics of torchvision's own detections.

The test makes a tiny COCO-format set (random images; a few categories with real COCO ids
and names), a torchvision ``fcos_resnet50_fpn`` with random weights and a head that
detects confidently, and ground truth near some of its detections so that the metrics are
neither 0 nor 1. ResNet-50 at ~128 px on a handful of images keeps it a few seconds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fcos_fast import evaluate, infer
from fcos_fast.data import load_image
from fcos_fast.model.torchvision_compat import (COCO_CATEGORIES, CategoryRelabel,
                                                coco_category_labels,
                                                load_torchvision_checkpoint)
from tests.model._helpers import randomize_head

MIN_SIZE, MAX_SIZE, SCORE_THRESH = 128, 192, 0.05
NUM_IMAGES = 4
STAT_NAMES = ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large")


@pytest.fixture(scope="module")
def coco_set(tmp_path_factory):
    """``(root, checkpoint file, torchvision's detections per image, COCO gt file)``."""
    root = tmp_path_factory.mktemp("torchvision_coco")
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    tv_model = torchvision.models.detection.fcos_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91, min_size=MIN_SIZE,
        max_size=MAX_SIZE, score_thresh=SCORE_THRESH)
    randomize_head(tv_model, generator)
    tv_model.eval()
    checkpoint = root / "fcos_resnet50_fpn_random.pth"
    torch.save(tv_model.state_dict(), checkpoint)

    (root / "val").mkdir()
    images, detections = [], []
    for index in range(NUM_IMAGES):
        height, width = torch.randint(96, 161, (2,), generator=generator).tolist()
        pixels = (torch.rand(height, width, 3, generator=generator) * 255).to(torch.uint8)
        name = f"{index:03d}.png"  # lossless: both models see the same pixels
        Image.fromarray(pixels.numpy()).save(root / "val" / name)
        images.append({"id": 10 + index, "file_name": name, "width": width, "height": height})
        with torch.no_grad():
            (found,) = tv_model([load_image(root / "val" / name)])
        detections.append(found)

    # The dataset's categories: the three real COCO categories torchvision detects most.
    labels = torch.cat([d["labels"] for d in detections]).tolist()
    real = [c for c in range(1, len(COCO_CATEGORIES)) if COCO_CATEGORIES[c] != "N/A"]
    chosen = sorted(sorted(real, key=lambda c: -labels.count(c))[:3])
    assert all(labels.count(c) for c in chosen)
    annotations = []
    for image, found in zip(images, detections):
        picked = [i for i, label in enumerate(found["labels"].tolist()) if label in chosen][:5]
        for i in picked[::2]:  # about half of them, moved a little: true and false positives
            x1, y1, x2, y2 = (found["boxes"][i] + torch.randn(4, generator=generator)).tolist()
            x1, y1 = max(x1, 0.0), max(y1, 0.0)
            x2, y2 = min(x2, image["width"]), min(y2, image["height"])
            if x2 - x1 > 1 and y2 - y1 > 1:
                annotations.append({"id": len(annotations) + 1, "image_id": image["id"],
                                    "category_id": int(found["labels"][i]),
                                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                                    "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    # and one object nothing detects
    annotations.append({"id": len(annotations) + 1, "image_id": 10, "category_id": chosen[0],
                        "bbox": [2.0, 3.0, 20.0, 30.0], "area": 600.0, "iscrowd": 0})
    (root / "annotations").mkdir()
    gt_file = root / "annotations" / "instances_val.json"
    gt_file.write_text(json.dumps({
        "images": images, "annotations": annotations,
        # Not in id order, as a dataset's file may list them.
        "categories": [{"id": c, "name": COCO_CATEGORIES[c]} for c in reversed(chosen)]}))
    return root, checkpoint, detections, gt_file


def _overrides(root):
    return ["--set", f"data.root={root}", "data.val_split=val", "data.num_workers=0",
            f"input.min_size_test={MIN_SIZE}", f"input.max_size_test={MAX_SIZE}",
            f"model.score_thresh={SCORE_THRESH}", "train.eval_batch_size=1",
            "train.device=cpu"]


def _pycocotools_metrics(gt_file, image_ids, detections):
    """COCOeval of torchvision's detections, converted here to COCO results (all labels:
    COCOeval itself ignores categories the ground truth lacks)."""
    results = []
    for image_id, found in zip(image_ids, detections):
        for (x1, y1, x2, y2), score, label in zip(found["boxes"].tolist(),
                                                  found["scores"].tolist(),
                                                  found["labels"].tolist()):
            results.append({"image_id": image_id, "category_id": label,
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    gt = COCO(str(gt_file))
    evaluator = COCOeval(gt, gt.loadRes(results), iouType="bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    metrics = dict(zip(STAT_NAMES, (float(v) for v in evaluator.stats)))
    precision = evaluator.eval["precision"]
    per_class = {}
    for k, category in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, 0, -1]
        per_class[gt.cats[category]["name"]] = float(values[values > -1].mean())
    return metrics, per_class


def test_evaluate_equals_pycocotools_on_torchvisions_detections(coco_set, tmp_path, capsys):
    root, checkpoint, detections, gt_file = coco_set
    # In float32, as torchvision's detections were made (auto would be bfloat16 here).
    assert evaluate.main(["--torchvision-checkpoint", str(checkpoint), "--config",
                          "coco_r50_1x.yaml", "--out", str(tmp_path), "--no-progress",
                          "--precision", "fp32", *_overrides(root)]) == 0
    ours = json.loads((tmp_path / "metrics.json").read_text())
    capsys.readouterr()
    image_ids = [10 + i for i in range(NUM_IMAGES)]
    expected, per_class = _pycocotools_metrics(gt_file, image_ids, detections)
    assert 0 < expected["mAP50"] < 1, expected  # a test that can fail
    for name in STAT_NAMES:
        assert ours[name] == pytest.approx(expected[name], abs=1e-12), name
    assert ours["per_class_AP"] == pytest.approx(per_class, abs=1e-12)
    assert ours["num_images"] == NUM_IMAGES and ours["checkpoint"] == str(checkpoint)


def test_relabel_keeps_exactly_the_dataset_categories(coco_set):
    root, checkpoint, detections, gt_file = coco_set
    model = load_torchvision_checkpoint(checkpoint, min_size=MIN_SIZE, max_size=MAX_SIZE,
                                        score_thresh=SCORE_THRESH)
    categories = json.loads(gt_file.read_text())["categories"]
    ids = sorted(c["id"] for c in categories)
    relabeled = CategoryRelabel(model, coco_category_labels(ids, [COCO_CATEGORIES[i]
                                                                  for i in ids]))
    image = load_image(root / "val" / "001.png")
    with torch.no_grad():
        (mine,) = model([image])
        (kept,) = relabeled([image])
    wanted = torch.isin(mine["labels"], torch.tensor(ids))
    assert torch.equal(kept["boxes"], mine["boxes"][wanted])
    assert torch.equal(torch.tensor(ids)[kept["labels"]], mine["labels"][wanted])
    # ...and those are torchvision's detections.
    assert torch.equal(mine["labels"], detections[1]["labels"])
    np.testing.assert_allclose(mine["boxes"].numpy(), detections[1]["boxes"].numpy(), atol=1e-3)


def test_infer_names_coco_categories(coco_set, tmp_path):
    root, checkpoint, detections, _ = coco_set
    expected = detections[0]["labels"][detections[0]["scores"] > 0.3].tolist()  # float32
    # detections.json in the COCO results format (the default) and as per-image records:
    # torchvision's labels are COCO category ids, named as torchvision names them.
    for form in ("coco", "per-image"):
        out = tmp_path / form
        assert infer.main([str(root / "val" / "000.png"), "--torchvision-checkpoint",
                           str(checkpoint), "--out", str(out), "--score-thresh", "0.3",
                           "--format", form, "--precision", "fp32", *_overrides(root)]) == 0
        found = json.loads((out / "detections.json").read_text())
        if form == "per-image":
            (record,) = found
            found = record["detections"]
            assert all(d["class_name"] == COCO_CATEGORIES[d["category_id"]] for d in found)
        assert sorted(d["category_id"] for d in found) == sorted(expected)


def test_a_dataset_without_cocos_categories_is_one_line(coco_set, tmp_path, capsys):
    root, checkpoint, _, gt_file = coco_set
    data = json.loads(gt_file.read_text())
    data["categories"][0]["name"] = "circle"
    (root / "annotations" / "instances_renamed.json").write_text(json.dumps(data))
    (root / "renamed").mkdir(exist_ok=True)
    for image in data["images"]:
        (root / "renamed" / image["file_name"]).write_bytes(
            (root / "val" / image["file_name"]).read_bytes())
    assert evaluate.main(["--torchvision-checkpoint", str(checkpoint), "--split", "renamed",
                          "--out", str(tmp_path), "--no-progress", *_overrides(root)]) == 2
    error = capsys.readouterr().err
    category = data["categories"][0]["id"]
    assert error.count("\n") == 1 and f"category {category} ('circle') is not COCO's" in error


@pytest.mark.parametrize("contents", ["garbage", "resnet18", "missing"])
def test_a_file_that_is_not_a_torchvision_checkpoint_is_one_line(tmp_path, capsys, contents):
    path = tmp_path / "weights.pth"
    if contents == "garbage":
        path.write_bytes(b"\x00not a checkpoint")
    elif contents == "resnet18":
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    assert evaluate.main(["--torchvision-checkpoint", str(path), "--no-progress",
                          "--set", "train.device=cpu"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and str(path) in error
