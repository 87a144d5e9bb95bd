"""The COCO loader on small files in the real COCO instances format, valid and broken."""

import json

import pytest
import torch
from PIL import Image

from fcos_fast.data import CocoDetection, DatasetError

CATEGORIES = [{"id": 7, "name": "zebra"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]


def _write_image(path, width, height, value=128):
    Image.new("RGB", (width, height), (value, 0, 255 - value)).save(path)


@pytest.fixture
def coco(tmp_path):
    """Three images: two objects and a crowd region; one object; no object."""
    images = tmp_path / "val2017"
    images.mkdir()
    for name, size in (("a.jpg", (40, 30)), ("b.png", (20, 24)), ("c.jpg", (16, 16))):
        _write_image(images / name, *size)
    data = {
        "info": {}, "licenses": [],
        "images": [{"id": 42, "file_name": "a.jpg", "width": 40, "height": 30},
                   {"id": 5, "file_name": "b.png", "width": 20, "height": 24},
                   {"id": 9, "file_name": "c.jpg", "width": 16, "height": 16}],
        "annotations": [
            {"id": 1, "image_id": 42, "category_id": 7, "bbox": [2, 3, 10, 5], "area": 50,
             "iscrowd": 0},
            {"id": 2, "image_id": 42, "category_id": 3, "bbox": [30, 20, 20, 20], "area": 400,
             "iscrowd": 0},  # runs past the right and bottom edges: clipped
            {"id": 3, "image_id": 42, "category_id": 1, "bbox": [0, 0, 8, 8], "area": 64,
             "iscrowd": 1},
            {"id": 4, "image_id": 5, "category_id": 1, "bbox": [1.5, 2.5, 4, 6], "area": 24,
             "iscrowd": 0},
        ],
        "categories": CATEGORIES,
    }
    annotation_file = tmp_path / "annotations" / "instances_val2017.json"
    annotation_file.parent.mkdir()
    annotation_file.write_text(json.dumps(data))
    return images, annotation_file, data


def test_categories_map_to_contiguous_labels_in_id_order(coco):
    dataset = CocoDetection(*coco[:2])
    assert dataset.label_to_category_id == [1, 3, 7]
    assert dataset.class_names == ["person", "car", "zebra"]
    assert dataset.num_classes == 3


def test_items(coco):
    dataset = CocoDetection(*coco[:2])
    assert dataset.image_ids == [5, 9, 42]  # sorted by id
    image, target = dataset[2]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1
    assert target["image_id"] == 42
    # xywh -> xyxy, clipped to the image; the crowd region is not a training target.
    torch.testing.assert_close(target["boxes"], torch.tensor([[2., 3, 12, 8], [30, 20, 40, 30]]))
    assert target["labels"].tolist() == [2, 1] and target["labels"].dtype == torch.int64
    _, target = dataset[0]
    torch.testing.assert_close(target["boxes"], torch.tensor([[1.5, 2.5, 5.5, 8.5]]))
    assert target["labels"].tolist() == [0]
    _, empty = dataset[1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)


def test_filter_empty(coco):
    assert CocoDetection(*coco[:2], filter_empty=True).image_ids == [5, 42]


def test_ground_truth_for_evaluation_keeps_crowd(coco):
    coco_gt = CocoDetection(*coco[:2]).coco_gt()
    assert len(coco_gt.getAnnIds()) == 4
    assert coco_gt.loadAnns(3)[0]["iscrowd"] == 1
    assert sorted(coco_gt.getCatIds()) == [1, 3, 7]


def test_missing_folder_says_where_and_how(tmp_path):
    with pytest.raises(DatasetError, match="cocodataset.org") as error:
        CocoDetection(tmp_path / "val2017", tmp_path / "annotations" / "instances_val2017.json")
    assert "instances_val2017.json" in str(error.value)


@pytest.mark.parametrize("corrupt, message", [
    (lambda d: "{not json", "not valid JSON"),
    (lambda d: {**d, "images": None}, "'images'"),
    (lambda d: {**d, "annotations": [{k: v for k, v in d["annotations"][0].items()
                                      if k != "bbox"}]}, "no 'bbox'"),
    (lambda d: {**d, "annotations": [{**d["annotations"][0], "bbox": [1, 2, -3, 4]}]},
     "annotation 1 has a bad bbox"),
    (lambda d: {**d, "annotations": [{**d["annotations"][0], "bbox": [1, 2, "x", 4]}]},
     "bad bbox"),
    (lambda d: {**d, "annotations": [{**d["annotations"][0], "category_id": 2}]},
     "unknown category id 2"),
    (lambda d: {**d, "annotations": [{**d["annotations"][0], "image_id": 1000}]},
     "unknown image id 1000"),
    (lambda d: {**d, "images": d["images"] + [d["images"][0]]}, "image id 42 appears twice"),
    (lambda d: {**d, "images": [{**d["images"][0], "width": "40"}] + d["images"][1:]},
     "bad 'width'"),
])
def test_corrupt_annotations_are_reported_with_the_file(coco, corrupt, message):
    images, annotation_file, data = coco
    broken = corrupt(data)
    annotation_file.write_text(broken if isinstance(broken, str) else json.dumps(broken))
    with pytest.raises(DatasetError, match=message) as error:
        CocoDetection(images, annotation_file)
    assert str(annotation_file) in str(error.value)


def test_missing_image_file(coco):
    images, annotation_file, _ = coco
    (images / "b.png").unlink()
    with pytest.raises(DatasetError, match="b.png"):
        CocoDetection(images, annotation_file)


def test_corrupt_image_names_the_file(coco):
    images, annotation_file, _ = coco
    (images / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    dataset = CocoDetection(images, annotation_file)
    with pytest.raises(DatasetError, match="a.jpg"):
        dataset[2]
    with pytest.raises(DatasetError, match="a.jpg"):  # found up front when asked
        CocoDetection(images, annotation_file, verify_images=True)


def test_image_of_another_size_than_annotated(coco):
    images, annotation_file, _ = coco
    _write_image(images / "b.png", 21, 24)
    with pytest.raises(DatasetError, match=r"b.png is 21x24 but .* says 20x24"):
        CocoDetection(images, annotation_file)[0]
