"""The Pascal VOC loader on small files in the real VOCdevkit layout, and the VOC AP."""

import pytest
import torch
from PIL import Image

from fcos_fast.data import VOC_CLASSES, DatasetError, VOCDetection
from fcos_fast.engine.evaluation import voc_evaluate
from tests.data.own_data import XML
from tests.data.own_data import voc_objects as _objects

def _write(root, name, width, height, objects):
    (root / "Annotations" / f"{name}.xml").write_text(
        XML.format(name=f"{name}.jpg", width=width, height=height, objects=objects))
    Image.new("RGB", (width, height), (90, 120, 30)).save(root / "JPEGImages" / f"{name}.jpg")


@pytest.fixture
def voc(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2007"
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    _write(root, "000005", 50, 40, _objects(("dog", 0, (1, 1, 10, 20)),
                                            ("person", 1, (20, 5, 30, 35)),
                                            ("chair", 0, (40, 30, 50, 40))))
    _write(root, "000007", 30, 30, _objects(("dog", 0, (5, 5, 25, 25))))
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("000005\n000007\n")
    return tmp_path, root


def test_items_and_difficult_left_out_of_training(voc):
    dataset = VOCDetection(voc[0], "trainval")
    assert len(dataset) == 2 and dataset.class_names == list(VOC_CLASSES)
    image, target = dataset[0]
    assert image.shape == (3, 40, 50)
    # 1-based pixel indices become 0-based continuous coordinates.
    torch.testing.assert_close(target["boxes"], torch.tensor([[0., 0, 10, 20], [39, 29, 50, 40]]))
    assert [VOC_CLASSES[i] for i in target["labels"]] == ["dog", "chair"]
    _, with_difficult = VOCDetection(voc[0], "trainval", use_difficult=True)[0]
    assert [VOC_CLASSES[i] for i in with_difficult["labels"]] == ["dog", "person", "chair"]


@pytest.mark.parametrize("where", ["parent", "devkit", "year"])
def test_root_may_be_any_level(voc, where):
    tmp_path, root = voc
    given = {"parent": tmp_path, "devkit": root.parent, "year": root}[where]
    assert len(VOCDetection(given, "trainval")) == 2


def test_difficult_is_crowd_in_coco_ground_truth(voc):
    coco_gt = VOCDetection(voc[0], "trainval").coco_gt()
    crowd = [a for a in coco_gt.dataset["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and crowd[0]["category_id"] == VOC_CLASSES.index("person") + 1


def test_voc_ap_ignores_difficult(voc):
    dataset = VOCDetection(voc[0], "trainval")
    dog, person = VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")
    predictions = [
        {"image_id": 0, "boxes": torch.tensor([[0., 0, 10, 20], [20, 5, 30, 35]]),
         "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([dog, person])},
        {"image_id": 1, "boxes": torch.tensor([[4., 4, 25, 25], [0, 0, 3, 3]]),
         "scores": torch.tensor([0.7, 0.95]), "labels": torch.tensor([dog, dog])},
    ]
    result = voc_evaluate(dataset, predictions)
    ap = result["per_class_voc_AP50"]
    # person: its only object is difficult -> nothing to score (None), and the detection on
    # it is no false positive. dog: the false positive ranks first (precision 1/2 at
    # recall 1/2, then 2/3 at recall 1): 11-point AP = (6 * 2/3 + 5 * 2/3) / 11.
    assert ap["person"] is None
    assert ap["dog"] == pytest.approx(2 / 3)
    assert ap["chair"] == 0.0
    assert result["voc_mAP50"] == pytest.approx((2 / 3 + 0.0) / 2)


def test_missing_dataset_says_where_and_how(tmp_path):
    with pytest.raises(DatasetError, match="python -m fcos_fast.data.download voc2007") as error:
        VOCDetection(tmp_path / "nowhere", "trainval")
    assert "VOCdevkit/VOC2007" in str(error.value)


def test_missing_split(voc):
    with pytest.raises(DatasetError, match="test.txt"):
        VOCDetection(voc[0], "test")


@pytest.mark.parametrize("objects, message", [
    ("<object><name>dog</name", "cannot parse"),
    (_objects(("unicorn", 0, (1, 1, 5, 5))), "unknown class 'unicorn'"),
    ("<object><name>dog</name><difficult>0</difficult></object>", "no <bndbox>"),
    (_objects(("dog", 0, (1, 1, "ten", 5))), "no numeric <xmax>"),
    (_objects(("dog", 0, (9, 1, 5, 5))), "without area"),
])
def test_corrupt_annotation_names_the_file(voc, objects, message):
    _, root = voc
    (root / "Annotations" / "000007.xml").write_text(
        XML.format(name="000007.jpg", width=30, height=30, objects=objects))
    with pytest.raises(DatasetError, match=message) as error:
        VOCDetection(root, "trainval")
    assert "000007.xml" in str(error.value)


def test_corrupt_image_names_the_file(voc):
    _, root = voc
    (root / "JPEGImages" / "000007.jpg").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="000007.jpg"):
        VOCDetection(root, "trainval")[1]
    with pytest.raises(DatasetError, match="000007.jpg"):
        VOCDetection(root, "trainval", verify_images=True)
