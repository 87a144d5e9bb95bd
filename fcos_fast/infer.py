"""Detect objects in images: ``python -m fcos_fast.infer --checkpoint FILE INPUT... --out DIR``.

``INPUT`` is an image file or a folder of images (``--recursive``: with its subfolders);
with none, the first ``--num-images`` of the dataset split ``--split`` (default: the
config's validation split) are used. Writes into ``DIR``:

* ``<image name>.png``: the image with the labelled boxes scoring above
  ``--score-thresh`` (``NNNN_<image name>.png`` when names repeat);
* ``grid.png``: all of them side by side;
* ``detections.json``, in ``--format``:

  - ``coco`` (default): the COCO results format, one record per detection:
    ``{"image_id", "file_name", "category_id", "bbox": [x, y, width, height], "score"}``,
    ``category_id`` being the dataset's own category id. ``image_id`` is the dataset's id
    of a split image, else the image's position in this run (1, 2, ...).
  - ``per-image``: one record per image: ``{"image_id", "file_name", "picture", "width",
    "height", "detections": [{"box": [x1, y1, x2, y2], "score", "category_id",
    "class_name"}]}``.

Boxes are in the pixels of the image file. ``DIR`` may not be an input folder, lie inside
one, or hold an input file that a picture would replace: nothing a user gave is written
to, and a later run over the input folder never reads the pictures as inputs. An
unreadable file is skipped with a warning and listed at the end. Every file is written
whole (a temporary file renamed into place).

``--precision`` (default ``auto``) is the precision of the network, as for ``evaluate``.

``--torchvision-checkpoint FILE`` detects with a torchvision ``fcos_resnet50_fpn`` state
dict instead (config: ``coco_r50_1x.yaml`` unless ``--config`` is given); its labels are
COCO category ids, named as torchvision names them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from fcos_fast.config import ConfigError
from fcos_fast.data import Categories, DatasetError, build_dataset, load_image
from fcos_fast.engine.atomic import save_image, write_json
from fcos_fast.engine.cli import (add_model_arguments, add_precision_argument,
                                  inference_setup, load_detector, model_config,
                                  report_user_errors, resolve_device)
from fcos_fast.engine.precision import Precision, autocast, inference_precision
from fcos_fast.visualize import draw_detections, montage

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

#: What ``--format`` may be.
FORMATS = ("coco", "per-image")

#: Files of every run besides the pictures.
GRID, DETECTIONS = "grid.png", "detections.json"


def find_images(inputs: list[str], *, recursive: bool = False) -> list[Path]:
    """Image files named by ``inputs``: files, or the images of folders (with their
    subfolders when ``recursive``; hidden files and folders left out), each once."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += _images_in(item, recursive)
        elif item.is_file():
            paths.append(item)
        else:
            raise FileNotFoundError(f"{item} is neither an image file nor a folder")
    unique = list({path.resolve(): path for path in reversed(paths)}.values())[::-1]
    if not unique:
        hint = "" if recursive else " (--recursive searches subfolders too)"
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {inputs}{hint}")
    return unique


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    found = []
    for parent, folders, files in os.walk(folder):  # symbolic links to folders not followed
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        found += [Path(parent) / name for name in sorted(files)
                  if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES]
        if not recursive:
            break
    return found


def picture_names(paths: list[Path]) -> list[str]:
    """``<stem>.png`` per image, or ``NNNN_<stem>.png`` for all when stems repeat or one
    would be a file of the run itself (``grid.png``)."""
    names = [f"{path.stem}.png" for path in paths]
    if len(set(names)) == len(names) and GRID not in names:
        return names
    return [f"{index:04d}_{path.stem}.png" for index, path in enumerate(paths)]


def check_output_folder(out: Path, input_folders: list[Path], outputs: list[Path],
                        input_files: list[Path]) -> None:
    """Refuse an ``out`` that is an input folder or inside one, a file, or whose
    ``outputs`` would replace one of ``input_files``."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; name a folder for the pictures")
    target = out.resolve()
    for folder in input_folders:
        if target == folder.resolve() or folder.resolve() in target.parents:
            where = "is" if target == folder.resolve() else "is inside"
            raise ConfigError(f"--out {out} {where} the input folder {folder}: the pictures "
                              f"would be written among its images (and read as inputs by the "
                              f"next run); choose a folder outside it")
    given = {path.resolve(): path for path in input_files}
    for output in outputs:
        if output.resolve() in given:
            raise ConfigError(f"--out {out} would overwrite the input {given[output.resolve()]}"
                              f" with {output.name}; choose another folder")


@torch.no_grad()
def detect(model: torch.nn.Module, paths: list[Path], *, batch_size: int = 8,
           device: torch.device | str = "cpu", precision: Precision | None = None,
           unreadable: Callable[[Path, DatasetError], None] | None = None
           ) -> Iterator[tuple[Path, torch.Tensor, dict[str, torch.Tensor]]]:
    """Yield ``(path, image, detections)`` per image, in batches of ``batch_size``, the
    network under ``precision``'s autocast (None: float32). A file that cannot be read
    goes to ``unreadable(path, error)`` and is skipped (without ``unreadable`` its
    ``DatasetError`` is raised)."""
    for start in range(0, len(paths), batch_size):
        batch, images = [], []
        for path in paths[start:start + batch_size]:
            try:
                images.append(load_image(path))
            except DatasetError as error:
                if unreadable is None:
                    raise
                unreadable(path, error)
                continue
            batch.append(path)
        if not batch:
            continue
        with autocast(precision):
            outputs = model([image.to(device) for image in images])
        for path, image, output in zip(batch, images, outputs):
            yield path, image, {key: value.cpu() for key, value in output.items()}


def coco_results(image_id: int, file_name: str, boxes: torch.Tensor, scores: torch.Tensor,
                 labels: torch.Tensor, categories: Categories) -> list[dict[str, Any]]:
    """Detections in the COCO results format, with the dataset's category ids."""
    return [{"image_id": image_id, "file_name": file_name,
             "category_id": categories.ids[label],
             "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
             "score": round(score, 5)}
            for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), scores.tolist(),
                                                      labels.tolist())]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fcos_fast.infer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", help="image files or folders")
    add_model_arguments(parser)
    parser.add_argument("--out", required=True,
                        help="folder for the pictures and the JSON (not an input folder)")
    parser.add_argument("--recursive", action="store_true",
                        help="search input folders' subfolders too")
    parser.add_argument("--format", choices=FORMATS, default="coco",
                        help="detections.json: COCO results or per-image records "
                             "(default: %(default)s)")
    parser.add_argument("--split", default=None,
                        help="with no inputs: dataset split to draw from (default: the "
                             "config's data.val_split)")
    parser.add_argument("--num-images", type=int, default=8,
                        help="with no inputs: how many images of the split (default: "
                             "%(default)s)")
    parser.add_argument("--score-thresh", type=float, default=0.3,
                        help="draw and list detections scoring above this (default: "
                             "%(default)s)")
    parser.add_argument("--scale", type=int, default=0,
                        help="enlarge pictures this many times (default: 0, as many as "
                             "make them >= 384 px)")
    add_precision_argument(parser)
    args = parser.parse_args(argv)
    return report_user_errors(lambda: _infer(args))


def _infer(args: argparse.Namespace) -> int:
    if args.num_images < 1:
        raise ConfigError(f"--num-images must be at least 1, got {args.num_images}")
    config = model_config(args)
    device = resolve_device(config.train.device)
    precision = inference_precision(args.precision, device)
    out = Path(args.out)
    if args.inputs:
        paths = find_images(args.inputs, recursive=args.recursive)
        input_folders = [Path(item) for item in args.inputs if Path(item).is_dir()]
        image_ids = list(range(1, len(paths) + 1))
        file_names = [str(path) for path in paths]
    else:
        dataset = build_dataset(config, args.split or config.data.val_split)
        indices = range(min(args.num_images, len(dataset)))
        paths = [dataset.image_path(i) for i in indices]
        input_folders = sorted({dataset.image_dir, *(path.parent for path in paths)})
        image_ids = [dataset.image_ids[i] for i in indices]
        file_names = [path.relative_to(dataset.image_dir).as_posix() for path in paths]
    if not paths:
        raise DatasetError("the split has no images to detect objects in")
    names = picture_names(paths)
    check_output_folder(out, input_folders, [out / n for n in (*names, GRID, DETECTIONS)], paths)
    model, config, categories = load_detector(args, config, device)
    print(inference_setup(model, precision, config))

    position = {path: index for index, path in enumerate(paths)}
    skipped: list[str] = []

    def unreadable(path: Path, error: DatasetError) -> None:
        print(f"warning: skipped {path}: {error}", file=sys.stderr)
        skipped.append(str(path))

    out.mkdir(parents=True, exist_ok=True)
    records, results, pictures = [], [], []
    for path, image, found in detect(model, paths, batch_size=config.train.eval_batch_size,
                                     device=device, precision=precision,
                                     unreadable=unreadable):
        index = position[path]
        keep = found["scores"] > args.score_thresh
        boxes, scores, labels = found["boxes"][keep], found["scores"][keep], found["labels"][keep]
        scale = args.scale or max(1, -(-384 // max(image.shape[1:])))
        picture = draw_detections(image, boxes, labels, scores, categories.names, scale=scale)
        save_image(picture, out / names[index])
        pictures.append(picture)
        results += coco_results(image_ids[index], file_names[index], boxes, scores, labels,
                                categories)
        records.append({
            "image_id": image_ids[index], "file_name": file_names[index],
            "picture": names[index], "width": image.shape[2], "height": image.shape[1],
            "detections": [{"box": [round(v, 2) for v in box], "score": round(score, 5),
                            "category_id": categories.ids[label],
                            "class_name": categories.names[label]}
                           for box, score, label in zip(boxes.tolist(), scores.tolist(),
                                                        labels.tolist())],
        })
    if not records:
        raise DatasetError(f"none of the {len(paths)} image(s) could be read")
    write_json(out / DETECTIONS, results if args.format == "coco" else records, indent=1)
    save_image(montage(pictures), out / GRID)
    print(f"{len(records)} images with {len(results)} detections written to {out}/ "
          f"({DETECTIONS} in the {args.format} format)")
    if skipped:
        print(f"warning: {len(skipped)} unreadable file(s) skipped: {', '.join(skipped)}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
