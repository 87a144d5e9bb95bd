"""A user's own data as annotation tools export it, read by path (``data.train_images``
and friends): Roboflow, CVAT and Label Studio COCO exports, VOC with the user's classes;
categories and their ids, and the one-line errors of a wrong path or class list."""

import json
import logging

import pytest
import torch
from PIL import Image

from fcos_fast.config import ConfigError, load_config
from fcos_fast.data import (Categories, CocoDetection, DatasetError, VOCDetection, build_dataset,
                            load_image, loader, with_absolute_paths)
from tests.data.own_data import (XML, voc_objects, write_cvat, write_label_studio,
                                 write_roboflow, write_voc)


def _config(dataset, train, val=None, *more):
    val = val or train
    return load_config(None, [f"data.dataset={dataset}", f"data.train_images={train[0]}",
                              f"data.train_annotations={train[1]}", f"data.val_images={val[0]}",
                              f"data.val_annotations={val[1]}", *more])


def test_roboflow_placeholder_category_is_left_out_with_a_log_line(tmp_path, caplog):
    root = write_roboflow(tmp_path)
    with caplog.at_level(logging.INFO, logger="fcos_fast"):
        dataset = CocoDetection(root / "train", root / "train" / "_annotations.coco.json")
    assert dataset.categories == Categories(("cat", "dog"), (7, 42))
    assert "category 0 'objects' left out" in caplog.text and "Roboflow" in caplog.text
    # Scored ground truth has the two classes only; the crowd box is kept (ignored).
    coco_gt = dataset.coco_gt()
    assert sorted(coco_gt.getCatIds()) == [7, 42]
    assert any(a["iscrowd"] for a in coco_gt.dataset["annotations"])
    # Training targets: labels in 0..1, the crowd box left out, the empty image empty.
    image, target = dataset[0]
    assert image.shape == (3, 60, 80) and target["image_id"] == 0
    assert target["labels"].tolist() == [0]
    assert dataset[1][1]["boxes"].shape == (0, 4)


def test_a_used_category_0_is_a_class(tmp_path):
    """Label Studio numbers categories from 0: category 0 is a real class there."""
    root = write_label_studio(tmp_path)
    dataset = CocoDetection(root / "images", root / "result.json")
    assert dataset.categories == Categories(("cat", "dog"), (0, 1))
    # file_name is images/<name>, relative to the export folder: found from either folder.
    assert dataset.image_path(0) == root / "images" / dataset._files[0].split("/", 1)[1]
    assert CocoDetection(root, root / "result.json").image_path(0) == dataset.image_path(0)
    assert dataset[1][0].shape[0] == 3


def test_cvat_file_names_in_subfolders(tmp_path):
    root = write_cvat(tmp_path)
    config = _config("coco", (root / "images", root / "annotations" / "instances_default.json"))
    dataset = build_dataset(config, "train", train=True)
    assert {path.parent.name for path in map(dataset.image_path, range(len(dataset)))} == \
        {"day", "night"}
    # Every label of the task is a class, the one without boxes too.
    assert dataset.categories == Categories(("cat", "dog", "bird"), (7, 42, 50))
    assert len(dataset) == 8 and build_dataset(config, "val").categories == dataset.categories


def test_cvat_images_in_a_subset_folder(tmp_path):
    """Newer CVAT writes ``images/<subset>/`` beside ``instances_<subset>.json``."""
    root = write_cvat(tmp_path, subset_folder=True)
    dataset = CocoDetection(root / "images", root / "annotations" / "instances_default.json")
    assert dataset.image_path(0).parent.parent.name == "default" and dataset[0][0].shape[0] == 3


def test_a_format_given_the_other_datasets_files(tmp_path):
    voc = write_voc(tmp_path / "voc")
    coco = write_cvat(tmp_path / "cvat")
    with pytest.raises(DatasetError, match="is a folder, not a COCO-format JSON file .*"
                                           "data.dataset: voc"):
        build_dataset(_config("coco", (voc / "JPEGImages", voc / "Annotations")), "train")
    json_file = coco / "annotations" / "instances_default.json"
    with pytest.raises(DatasetError, match="is a JSON file, not VOC XML: .* data.dataset: coco"):
        build_dataset(_config("voc", (coco / "images", json_file)), "train")


def test_coco_classes_subset_in_the_order_given(tmp_path):
    root = write_cvat(tmp_path)
    files = (root / "images", root / "annotations" / "instances_default.json")
    dataset = build_dataset(_config("coco", files, None, "data.classes=[dog]"), "val")
    assert dataset.categories == Categories(("dog",), (42,))
    coco_gt = dataset.coco_gt()
    assert coco_gt.getCatIds() == [42]
    assert {a["category_id"] for a in coco_gt.dataset["annotations"]} == {42}
    assert all(set(dataset[i][1]["labels"].tolist()) <= {0} for i in range(len(dataset)))
    both = build_dataset(_config("coco", files, None, "data.classes=[dog, cat]"), "val")
    assert both.categories == Categories(("dog", "cat"), (42, 7))
    with pytest.raises(DatasetError, match=r"data.classes names \['fish'\].*\['bird', 'cat', "
                                           r"'dog'\]"):
        build_dataset(_config("coco", files, None, "data.classes=[dog, fish]"), "val")


@pytest.mark.parametrize("layout", ["folders", "split file"])
def test_voc_with_own_classes(tmp_path, layout):
    root = write_voc(tmp_path / "voc")
    files = ((root / "JPEGImages", root / "Annotations") if layout == "folders"
             else (root, root / "ImageSets" / "Main" / "train.txt"))
    config = _config("voc", files, None, "data.classes=[disc, ring]")
    dataset = build_dataset(config, "train", train=True)
    expected = 12 if layout == "folders" else 8  # every XML, or the split's
    assert len(dataset) == expected and dataset.categories == Categories(("disc", "ring"), (1, 2))
    assert dataset.image_path(0).suffix == ".png"  # from <filename>
    image, target = dataset[0]
    assert image.shape == (3, 60, 80) and target["labels"].tolist() == [0]
    assert dataset[2][1]["labels"].numel() == 0  # its only object is difficult


def test_voc_unknown_classes_say_which_and_how_to_name_them(tmp_path):
    root = write_voc(tmp_path / "voc")
    config = _config("voc", (root / "JPEGImages", root / "Annotations"))
    with pytest.raises(DatasetError) as error:
        build_dataset(config, "train")
    message = str(error.value)
    assert "unknown class 'disc'" in message and "unknown class 'ring'" in message
    assert ".xml" in message and '"data.classes=[disc, ring]"' in message
    assert "20 Pascal VOC classes" in message and "\n" not in message


def test_voc_image_file_is_the_one_its_xml_names(tmp_path):
    """A camera's upper-case ``.JPG``: found through ``<filename>``."""
    root = write_voc(tmp_path / "voc", suffix=".JPG", splits={"train": range(2)})
    dataset = VOCDetection.from_paths(root / "JPEGImages", root / "Annotations",
                                      classes=["disc", "ring"])
    assert dataset.image_path(0).name == "000000.JPG" and dataset[0][0].shape == (3, 60, 80)


def test_voc_xml_naming_no_file_falls_back_to_the_id(tmp_path):
    root = write_voc(tmp_path / "voc", suffix=".jpg", splits={"train": range(2)})
    xml = root / "Annotations" / "000000.xml"
    xml.write_text(XML.format(name="", width=80, height=60,
                              objects=voc_objects(("disc", 0, (2, 2, 20, 20)))))
    dataset = VOCDetection.from_paths(root / "JPEGImages", root / "Annotations",
                                      classes=["disc", "ring"])
    assert dataset.image_path(0).name == "000000.jpg"


def test_camera_orientation_is_applied(tmp_path):
    """A photo stored landscape with EXIF orientation 6 (rotate 90°) is read upright, as
    annotation tools show it."""
    path = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 20), (200, 10, 10)).save(path, exif=exif)
    assert load_image(path).shape == (3, 40, 20)


@pytest.mark.parametrize("overrides, message", [
    (["data.dataset=coco", "data.train_images=a"], "data.train_images is set but "
                                                   "data.train_annotations is not"),
    (["data.dataset=coco", "data.train_images=a", "data.train_annotations=b.json"],
     "set data.val_images and data.val_annotations"),
    (["data.train_images=a", "data.train_annotations=b", "data.val_images=a",
      "data.val_annotations=b"], "set data.dataset to coco"),
    (["data.dataset=voc", "data.classes=[a, b, a]"], r"names \['a'\] more than once"),
    (["data.classes=[a]"], "synthetic set's classes are data.synthetic.shapes"),
])
def test_path_settings_that_cannot_work_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_a_missing_path_names_its_key(tmp_path):
    root = write_roboflow(tmp_path)
    train = (root / "train", root / "train" / "_annotations.coco.json")
    missing = (root / "valid", root / "valid" / "_annotation.coco.json")
    with pytest.raises(DatasetError, match=r"data.val_annotations .*_annotation.coco.json does "
                                           r"not exist"):
        build_dataset(_config("coco", train, missing), "val")
    not_a_folder = (train[1], train[1])
    with pytest.raises(DatasetError, match="data.val_images .* is not a folder"):
        build_dataset(_config("coco", train, not_a_folder), "val")
    with pytest.raises(DatasetError, match="neither data.train_split"):
        build_dataset(_config("coco", train), "test")


def test_images_listed_but_not_in_the_folder_are_counted(tmp_path):
    root = write_roboflow(tmp_path)  # valid/ holds img0..img3: 4 of train's 8 are not there
    with pytest.raises(DatasetError, match=r"4 of the 8 image\(s\) listed in .* do not exist"):
        CocoDetection(root / "valid", root / "train" / "_annotations.coco.json")


def test_saved_paths_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = with_absolute_paths(_config("coco", ("imgs", "a.json"), None, "data.root=~/x"))
    assert config.data.train_images == str(tmp_path / "imgs")
    assert config.data.val_annotations == str(tmp_path / "a.json")
    assert not config.data.root.startswith("~") and config.data.root.endswith("/x")
    monkeypatch.setenv("FCOS_FAST_DATA", "data")
    by_root = with_absolute_paths(load_config("coco_r18.yaml"))
    assert by_root.data.root == str(tmp_path / "data" / "coco")


def test_categories_say_what_differs():
    ours = Categories(("cat", "dog"), (7, 42))
    assert ours.difference(Categories(("cat", "dog"), (7, 42)), "a", "b") is None
    assert ours.difference(Categories(("cat", "dog", "bird"), (7, 42, 50)), "a", "b") == \
        "only b has bird (50)"
    assert ours.difference(Categories(("cat", "dog"), (1, 2)), "a", "b") == \
        "only a has cat (7), dog (42); only b has cat (1), dog (2)"
    assert "another order" in ours.difference(Categories(("dog", "cat"), (42, 7)), "a", "b")


class _Corrupt(torch.utils.data.Dataset):
    """A dataset whose image 1 is a file that cannot be decoded."""

    def __init__(self, folder):
        self.path = folder / "broken.jpg"
        self.path.write_bytes(b"\xff\xd8 not a jpeg")

    def __len__(self):
        return 3

    def __getitem__(self, index):
        if index == 1:
            load_image(self.path)
        return torch.zeros(3, 4, 4), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_an_unreadable_image_in_a_worker_is_one_error_in_this_process(tmp_path, num_workers):
    dataset = _Corrupt(tmp_path)
    with pytest.raises(DatasetError) as error:
        for _ in loader.test_loader(dataset, batch_size=1, num_workers=num_workers):
            pass
    message = str(error.value)
    assert message.startswith("cannot read image") and "broken.jpg" in message
    assert "data.verify_images: true" in message and "Traceback" not in message
    stream = loader.train_loader(dataset, lambda image, target, generator: (image, target),
                          batch_size=3, seed=0, num_workers=num_workers)
    with pytest.raises(DatasetError, match="broken.jpg.*data.verify_images"):
        next(stream)


def test_num_workers_at_most_the_cores(monkeypatch, caplog, recwarn):
    monkeypatch.setattr(loader.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    loader._log_capped.cache_clear()
    with caplog.at_level(logging.INFO, logger="fcos_fast"):
        assert loader.usable_workers(4) == 1 and loader.usable_workers(0) == 0
    assert "data.num_workers 4: 1 loader workers" in caplog.text
    data = loader.test_loader(list(range(3)), batch_size=1, num_workers=4)
    assert data.loader.num_workers == 1
    assert not [w for w in recwarn if "worker" in str(w.message)]  # PyTorch's warning


def test_dataset_files_are_only_read(tmp_path):
    """Reading a set writes nothing beside the user's files."""
    root = write_roboflow(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    dataset = CocoDetection(root / "valid", root / "valid" / "_annotations.coco.json",
                            verify_images=True)
    [dataset[i] for i in range(len(dataset))]
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    assert json.loads((root / "valid" / "_annotations.coco.json").read_text())["categories"][0][
        "id"] == 0
