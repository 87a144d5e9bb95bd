"""Small datasets laid out as annotation tools export them, for the tests of a user's own
data: COCO-format JSON as Roboflow, CVAT and Label Studio write it, and VOC-format XML
with the user's own class names.

Every set draws the same kind of scene: images of a few sizes (never square, so that an
``(x, y)`` swap shows), objects of two classes (category ids 7 and 42 unless the tool
numbers them itself) drawn as filled rectangles and ellipses, one image without objects
and one crowd box. ``scene`` is a pure function of its arguments.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

#: The two classes of the COCO sets: (category id, name).
CATEGORIES = ((7, "cat"), (42, "dog"))

#: The image sizes ``(width, height)`` the scenes cycle through.
SIZES = ((80, 60), (72, 96), (96, 64))

XML = """<annotation>
  <folder>VOC2007</folder><filename>{name}</filename>
  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>
  {objects}
</annotation>"""

OBJECT = """<object><name>{cls}</name><pose>Left</pose><truncated>0</truncated>
  <difficult>{difficult}</difficult>
  <bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>
</object>"""


def voc_objects(*objects) -> str:
    """``(class, difficult, (x1, y1, x2, y2))`` tuples as VOC ``<object>`` elements."""
    return "".join(OBJECT.format(cls=c, difficult=d, x1=a, y1=b, x2=e, y2=f)
                   for c, d, (a, b, e, f) in objects)


def scene(index: int, num_classes: int = 2, *, empty: bool = False
          ) -> tuple[Image.Image, list[tuple[int, list[float]]]]:
    """Image ``index`` and its objects ``(class index, [x, y, width, height])``."""
    rng = np.random.default_rng(index)
    width, height = SIZES[index % len(SIZES)]
    noise = rng.integers(40, 90, size=(height, width, 3), dtype=np.uint8)
    image = Image.fromarray(noise)
    draw = ImageDraw.Draw(image)
    objects = []
    for k in range(0 if empty else 1 + index % 2):
        w, h = int(rng.integers(16, 30)), int(rng.integers(16, 30))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        label = (index + k) % num_classes
        shape = draw.rectangle if label == 0 else draw.ellipse
        shape([x, y, x + w - 1, y + h - 1], fill=(230, 200, 40) if label == 0 else (40, 90, 230))
        objects.append((label, [float(x), float(y), float(w), float(h)]))
    return image, objects


def coco_json(records: list[tuple[str, Image.Image, list]], categories: list[dict], *,
              category_ids: list[int], first_id: int = 1, crowd_on: int | None = None,
              **image_fields) -> dict:
    """A COCO instances dict for ``(file_name, image, objects)`` records; ``crowd_on``: the
    position of an image that gets one crowd box more."""
    images, annotations = [], []
    for position, (file_name, image, objects) in enumerate(records):
        image_id = first_id + position
        images.append({"id": image_id, "file_name": file_name, "width": image.width,
                       "height": image.height, **image_fields})
        boxes = [(category_ids[label], box, 0) for label, box in objects]
        if position == crowd_on:
            boxes.append((category_ids[0], [0.0, 0.0, 20.0, 12.0], 1))
        for category_id, box, crowd in boxes:
            annotations.append({"id": first_id + len(annotations), "image_id": image_id,
                                "category_id": category_id, "bbox": box,
                                "area": box[2] * box[3], "segmentation": [], "iscrowd": crowd})
    return {"info": {"description": "test"}, "licenses": [], "images": images,
            "annotations": annotations, "categories": categories}


def _records(folder: Path, names: list[str], start: int, empty_at: int | None,
             suffix: str = ".jpg") -> list[tuple[str, Image.Image, list]]:
    records = []
    for position, name in enumerate(names):
        image, objects = scene(start + position, empty=position == empty_at)
        path = folder / f"{name}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        records.append((f"{name}{suffix}", image, objects))
    return records


def write_roboflow(root: Path, num_train: int = 8, num_val: int = 4) -> Path:
    """Roboflow's COCO export: ``train/`` and ``valid/``, each with its images beside
    ``_annotations.coco.json``; category 0 is the project's placeholder, used by no box,
    the supercategory of the real ones. Returns ``root``."""
    categories = [{"id": 0, "name": "objects", "supercategory": "none"}]
    categories += [{"id": i, "name": n, "supercategory": "objects"} for i, n in CATEGORIES]
    for split, count, start in (("train", num_train, 0), ("valid", num_val, 100)):
        folder = root / split
        names = [f"img{i}_jpg.rf.{i:08x}" for i in range(count)]
        records = _records(folder, names, start, empty_at=1)
        data = coco_json(records, categories, category_ids=[i for i, _ in CATEGORIES],
                         first_id=0, crowd_on=0, license=1, date_captured="2024-01-01")
        (folder / "_annotations.coco.json").write_text(json.dumps(data))
    return root


#: A label of the CVAT task that no box uses (CVAT exports every label of the task).
UNUSED_CATEGORY = (50, "bird")


def write_cvat(root: Path, num_images: int = 8, start: int = 0, *,
               subset_folder: bool = False) -> Path:
    """CVAT's "COCO 1.0" export of one task: ``annotations/instances_default.json`` and
    ``images/``, file names with the subfolders of the uploaded archive; the task's third
    label ``UNUSED_CATEGORY`` has no box. ``subset_folder``: the images in
    ``images/default/`` as newer CVAT versions write them. Returns ``root``."""
    names = [f"{'day' if i % 2 else 'night'}/frame_{i:06d}" for i in range(num_images)]
    images = root / "images" / "default" if subset_folder else root / "images"
    records = _records(images, names, start, empty_at=2)
    categories = [{"id": i, "name": n, "supercategory": ""}
                  for i, n in (*CATEGORIES, UNUSED_CATEGORY)]
    data = coco_json(records, categories, category_ids=[i for i, _ in CATEGORIES],
                     crowd_on=3, license=0, flickr_url="", coco_url="", date_captured=0)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "instances_default.json").write_text(json.dumps(data))
    return root


def write_label_studio(root: Path, num_images: int = 8, start: int = 0) -> Path:
    """Label Studio's COCO export: ``result.json`` beside ``images/``, ``file_name``
    written as ``images/<name>``, image and category ids from 0 (category 0 is a real
    class there). Returns ``root``."""
    names = [f"{i:02x}a1b2c3-photo{i}" for i in range(num_images)]
    records = [(f"images/{name}", image, objects) for name, image, objects
               in _records(root / "images", names, start, empty_at=0)]
    categories = [{"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}]
    data = coco_json(records, categories, category_ids=[0, 1], first_id=0, crowd_on=1)
    (root / "result.json").write_text(json.dumps(data))
    return root


def write_voc(root: Path, classes: tuple[str, ...] = ("disc", "ring"), *,
              splits: dict[str, range] | None = None, suffix: str = ".png") -> Path:
    """A VOC-format set with the user's own ``classes``: ``root/Annotations/*.xml``
    naming the images of ``root/JPEGImages/`` (PNG by default: ``<filename>`` gives the
    file) and ``root/ImageSets/Main/<split>.txt`` for each of ``splits``. Image 1 has no
    objects; image 2 a difficult one. Returns ``root``."""
    splits = splits or {"train": range(0, 8), "val": range(8, 12)}
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for split, indices in splits.items():
        for index in indices:
            image, objects = scene(index, len(classes), empty=index == 1)
            name = f"{index:06d}"
            image.save(root / "JPEGImages" / f"{name}{suffix}")
            xml = voc_objects(*((classes[label], int(index == 2), (x + 1, y + 1, x + w, y + h))
                                for label, (x, y, w, h) in objects))
            (root / "Annotations" / f"{name}.xml").write_text(
                XML.format(name=f"{name}{suffix}", width=image.width, height=image.height,
                           objects=xml))
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text(
            "".join(f"{index:06d}\n" for index in indices))
    return root
