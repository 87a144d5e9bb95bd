"""Detect objects in images: ``python -m fcos_fast.infer --checkpoint FILE INPUT... --out DIR``.

``INPUT`` is an image file or a folder of images; with none, the first ``--num-images`` of
the dataset split ``--split`` (default: the config's validation split) are used. Writes
``DIR/<image name>.png`` with the labelled boxes scoring above ``--score-thresh``, all of
them side by side in ``DIR/grid.png``, and
``DIR/detections.json``: per image its path, size and every detection (``box`` as
``[x1, y1, x2, y2]`` in pixels, ``score``, ``label``, ``class_name``).

``--precision`` (default ``auto``) is the precision of the network, as for ``evaluate``.

``--torchvision-checkpoint FILE`` detects with a torchvision ``fcos_resnet50_fpn`` state
dict instead (config: ``coco_r50_1x.yaml`` unless ``--config`` is given); its labels are
COCO category ids, named as torchvision names them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from fcos_fast.data import build_dataset, load_image
from fcos_fast.engine.cli import (add_model_arguments, add_precision_argument,
                                  inference_setup, load_model, model_config,
                                  report_user_errors, resolve_device)
from fcos_fast.engine.precision import Precision, autocast, inference_precision
from fcos_fast.visualize import draw_detections, montage

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def find_images(inputs: list[str]) -> list[Path]:
    """Image files named by ``inputs`` (files, or folders searched non-recursively)."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            paths.append(item)
        else:
            raise FileNotFoundError(f"{item} is neither an image file nor a folder")
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {inputs}")
    return paths


@torch.no_grad()
def detect(model: torch.nn.Module, paths: list[Path], *, batch_size: int = 8,
           device: torch.device | str = "cpu", precision: Precision | None = None):
    """Yield ``(path, image, detections)`` per image, in batches of ``batch_size``;
    the network under ``precision``'s autocast (None: float32)."""
    for start in range(0, len(paths), batch_size):
        batch = paths[start:start + batch_size]
        images = [load_image(path) for path in batch]
        with autocast(precision):
            outputs = model([image.to(device) for image in images])
        for path, image, output in zip(batch, images, outputs):
            yield path, image, {key: value.cpu() for key, value in output.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fcos_fast.infer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", help="image files or folders")
    add_model_arguments(parser)
    parser.add_argument("--out", required=True, help="folder for the pictures and the JSON")
    parser.add_argument("--split", default=None,
                        help="with no inputs: dataset split to draw from (default: validation)")
    parser.add_argument("--num-images", type=int, default=8,
                        help="with no inputs: how many images of the split")
    parser.add_argument("--score-thresh", type=float, default=0.3,
                        help="draw and list detections scoring above this")
    parser.add_argument("--scale", type=int, default=0,
                        help="enlarge pictures this many times (default: to >= 384 px)")
    add_precision_argument(parser)
    args = parser.parse_args(argv)
    return report_user_errors(lambda: _infer(args))


def _infer(args: argparse.Namespace) -> int:
    config = model_config(args)
    device = resolve_device(config.train.device)
    precision = inference_precision(args.precision, device)
    model, config, class_names = load_model(args, config, device)
    print(inference_setup(model, precision, config))
    if args.inputs:
        paths = find_images(args.inputs)
    else:
        dataset = build_dataset(config, args.split or config.data.val_split)
        paths = [dataset.image_path(i) for i in range(min(args.num_images, len(dataset)))]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    unique_names = len({path.stem for path in paths}) == len(paths)
    records, pictures = [], []
    for index, (path, image, found) in enumerate(
            detect(model, paths, batch_size=config.train.eval_batch_size, device=device,
                   precision=precision)):
        keep = found["scores"] > args.score_thresh
        boxes, scores, labels = found["boxes"][keep], found["scores"][keep], found["labels"][keep]
        scale = args.scale or max(1, -(-384 // max(image.shape[1:])))
        picture = draw_detections(image, boxes, labels, scores, class_names, scale=scale)
        name = f"{path.stem}.png" if unique_names else f"{index:04d}_{path.stem}.png"
        picture.save(out / name)
        pictures.append(picture)
        records.append({
            "image": str(path), "picture": name,
            "width": image.shape[2], "height": image.shape[1],
            "detections": [{"box": [round(v, 2) for v in box], "score": round(score, 4),
                            "label": label, "class_name": class_names[label]}
                           for box, score, label in zip(boxes.tolist(), scores.tolist(),
                                                        labels.tolist())],
        })
    (out / "detections.json").write_text(json.dumps(records, indent=1) + "\n")
    montage(pictures).save(out / "grid.png")
    print(f"{len(records)} images with {sum(len(r['detections']) for r in records)} detections "
          f"written to {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
