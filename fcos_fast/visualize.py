"""Pictures: detections drawn on images, and the training curves.

``python -m fcos_fast.visualize RUN_DIR`` plots ``RUN_DIR/metrics.jsonl`` (losses,
learning rate, mAP) into ``RUN_DIR/curves.png``.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor


def class_colour(label: int) -> tuple[int, int, int]:
    """A distinct, saturated colour per class (golden-ratio hues)."""
    red, green, blue = colorsys.hsv_to_rgb((label * 0.618033988749895) % 1.0, 0.85, 1.0)
    return int(red * 255), int(green * 255), int(blue * 255)


def to_pil(image: Tensor | Image.Image) -> Image.Image:
    """A ``[3, H, W]`` float tensor in ``[0, 1]`` (or a PIL image) as an RGB PIL image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = (image.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).numpy())


def draw_detections(image: Tensor | Image.Image, boxes: Tensor, labels: Tensor,
                    scores: Tensor | None = None, class_names: Sequence[str] | None = None, *,
                    score_thresh: float = 0.0, scale: int = 1) -> Image.Image:
    """The image with one labelled box per detection.

    Args:
        image: ``[3, H, W]`` float in ``[0, 1]``, or a PIL image.
        boxes: ``[D, 4]`` ``(x1, y1, x2, y2)`` in the image's pixels.
        labels: ``[D]`` class indices.
        scores: ``[D]`` scores (shown beside the name; ground truth has none).
        class_names: names of the classes (default: the indices).
        score_thresh: detections scoring at most this are not drawn.
        scale: enlarge the picture this many times first (small images stay legible).
    """
    picture = to_pil(image)
    if scale != 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    width = max(1, round(min(picture.size) / 200))
    for index in range(len(boxes)):
        score = None if scores is None else float(scores[index])
        if score is not None and score <= score_thresh:
            continue
        label = int(labels[index])
        x1, y1, x2, y2 = (float(v) * scale for v in boxes[index])
        colour = class_colour(label)
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        text = class_names[label] if class_names is not None else str(label)
        if score is not None:
            text = f"{text} {score:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), text, font=font)
        top_y = y1 - (bottom - top) - 2 if y1 - (bottom - top) - 2 >= 0 else y1
        draw.rectangle([x1, top_y, x1 + (right - left) + 3, top_y + (bottom - top) + 2],
                       fill=colour)
        draw.text((x1 + 2, top_y - (top - y1) + 1), text, fill=(0, 0, 0), font=font)
    return picture


def montage(pictures: Sequence[Image.Image], columns: int = 4, gap: int = 4) -> Image.Image:
    """The pictures side by side, ``columns`` to a row, on a white background."""
    width = max(p.width for p in pictures)
    height = max(p.height for p in pictures)
    rows = -(-len(pictures) // columns)
    columns = min(columns, len(pictures))
    sheet = Image.new("RGB", (columns * (width + gap) - gap, rows * (height + gap) - gap),
                      (255, 255, 255))
    for index, picture in enumerate(pictures):
        row, column = divmod(index, columns)
        sheet.paste(picture, (column * (width + gap), row * (height + gap)))
    return sheet


def plot_curves(metrics_jsonl: str | Path, out_png: str | Path) -> Path:
    """Plot the training losses, the learning rate and any mAP from a run's ``metrics.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line]
    series: dict[str, tuple[list, list]] = {}
    for record in records:
        for key, value in record.items():
            if key != "iter" and isinstance(value, (int, float)):
                xs, ys = series.setdefault(key, ([], []))
                xs.append(record["iter"])
                ys.append(value)
    losses = sorted(k for k in series if k.startswith("train/") and k.endswith("loss"))
    evals = sorted(k for k in series if k.startswith("eval/"))
    panels = [("loss", losses), ("learning rate", ["train/lr"] if "train/lr" in series else [])]
    if evals:
        panels.append(("evaluation", evals))
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
    for axis, (title, keys) in zip(axes, panels):
        for key in keys:
            xs, ys = series[key]
            axis.plot(xs, ys, marker="o" if len(xs) < 5 else None, label=key.split("/", 1)[1])
        axis.set_title(title)
        axis.set_xlabel("iteration")
        axis.grid(alpha=0.3)
        if keys:
            axis.legend(fontsize=8)
    if losses:
        axes[0].set_yscale("log")
    figure.tight_layout()
    out_png = Path(out_png)
    figure.savefig(out_png, dpi=110)
    plt.close(figure)
    return out_png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fcos_fast.visualize",
                                     description="Plot a training run's curves.")
    parser.add_argument("run_dir", help="output folder of a training run")
    parser.add_argument("--out", default=None, help="PNG to write (default RUN_DIR/curves.png)")
    args = parser.parse_args(argv)
    log = Path(args.run_dir) / "metrics.jsonl"
    if not log.is_file():
        print(f"error: {log} does not exist", file=sys.stderr)
        return 2
    print(plot_curves(log, args.out or Path(args.run_dir) / "curves.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
