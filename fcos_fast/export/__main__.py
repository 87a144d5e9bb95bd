"""Export a trained model: ``python -m fcos_fast.export --checkpoint C --out model.pt2``.

    python -m fcos_fast.export --checkpoint C --out model.pt2 [--batch B] [--size H W]
                               [--precision auto|fp32|bf16|fp16] [--onnx model.onnx]
                               [--evaluate] [--split S] [--config FILE] [--set KEY=VALUE ...]

Writes ``StaticFCOS`` of the checkpoint's model as a ``torch.export`` program
(``torch.export.save``, atomically) for images ``[B, 3, H, W]`` (default: batch 1 at the
config's test size, ``input.min_size_test`` square), then checks on ``B`` validation
images, resized to ``H x W``, that the program loaded in a fresh process
(``torch.export.load`` after ``import fcos_fast``, which registers the custom ops) gives
the detections of the eager model at the same precision, exactly, and says so in one line.

``--precision`` (default ``auto``: bfloat16 where the CPU executes it natively, else
float32; as ``evaluate`` takes it) is the precision of the network in the program: the
autocast region is exported as the casts it makes, with a channels-last backbone under
bfloat16 on the CPU; post-processing is float32. The program file records its class
names, input size, batch size and precision; ``fcos_fast.export.load`` returns a detector
that takes images of any size (letterbox in, boxes back in the image's pixels)::

    from fcos_fast.export import load
    detector = load("model.pt2")
    detections = detector([image])   # [{"boxes", "scores", "labels"}]; detector.class_names

or the bare program::

    import fcos_fast, torch
    program = torch.export.load("model.pt2").module()
    boxes, scores, labels, num_detections = program(images)  # images [B, 3, H, W] in [0, 1]

``--onnx FILE`` also writes the graph as ONNX with standard operators only
(``fcos_fast.export.onnx``), always in float32 (ONNX runtimes have next to no bfloat16
kernels on CPUs: onnxruntime's CPU provider has no bfloat16 convolution), and checks it in
onnxruntime against the float32 program (same counts and labels, boxes and scores within
1e-4). ``--evaluate`` reports the mAP of the eager model and of the exported program on
the validation split (``--split``), and, under a lower precision, the float32 eager
model's beside them.

The program's batch size is static: export one per batch size (a smaller last batch is
padded with blank images, as ``load``'s detector does).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import Tensor, nn

from fcos_fast.config import ConfigError
from fcos_fast.data import build_dataset
from fcos_fast.engine.cli import (add_model_arguments, add_precision_argument, load_detector,
                                  model_config, report_user_errors)
from fcos_fast.engine.precision import (autocast, describe, inference_precision,
                                        resolve_precision, set_inference_memory_format)
from fcos_fast.export import (StaticFCOS, export_static, load, model_input_size,
                              program_metadata, resize_to, save_program)

#: The smallest image side: the coarsest level (stride 128) needs a cell.
MIN_SIDE = 32


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fcos_fast.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--out", required=True, help="the exported program (.pt2)")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="image height and width (default: input.min_size_test square)")
    parser.add_argument("--onnx", default=None, metavar="FILE", help="also write ONNX here")
    parser.add_argument("--evaluate", action="store_true",
                        help="report the eager and the exported mAP on the validation split")
    parser.add_argument("--split", default=None, help="split (default: data.val_split)")
    add_precision_argument(parser)
    args = parser.parse_args(argv)
    return report_user_errors(lambda: _export(args))


def _export(args: argparse.Namespace) -> int:
    if args.batch < 1:
        raise ConfigError(f"--batch must be at least 1, got {args.batch}")
    if args.size is not None and min(args.size) < MIN_SIDE:
        raise ConfigError(f"--size H W must be at least {MIN_SIDE} pixels each, got "
                          f"{args.size[0]} {args.size[1]}")
    config = model_config(args)
    device = torch.device("cpu")
    precision = inference_precision(args.precision, device)
    model, config, categories = load_detector(args, config, device)
    channels_last = set_inference_memory_format(model, precision, config.solver.channels_last)
    side = config.input.min_size_test
    height, width = args.size if args.size is not None else model_input_size(model, side, side)
    split = args.split or config.data.val_split
    dataset = build_dataset(config, split)
    if args.evaluate and args.checkpoint is not None:  # scored: the classes must be its own
        dataset.require_categories(categories, f"checkpoint {args.checkpoint}")
    static = StaticFCOS(model, precision=precision).eval()
    if args.onnx is not None:
        missing = [name for name in ("onnx", "onnxscript", "onnxruntime")
                   if importlib.util.find_spec(name) is None]
        if missing:
            raise ConfigError(f"--onnx needs {', '.join(missing)}: pip install -r "
                              f"requirements.txt (or leave out --onnx)")
    if args.onnx is not None and "fcos_fast::batched_nms_padded" not in _native_ops():
        raise ConfigError("--onnx needs the native backend (the extension fcos_fast._C "
                          "with the fixed-size ops); rebuild it, or leave out --onnx")

    images = validation_batch(dataset, args.batch, (height, width))
    exported = export_static(static, images)
    out = Path(args.out)
    save_program(exported, out, program_metadata(static, images, categories=categories,
                                                 model=model, channels_last=channels_last))

    # The reference: the dynamic model at the same precision, which leaves images of its
    # input size as they are; at another size its resize would differ, so the eager
    # StaticFCOS.
    at_input_size = model_input_size(model, height, width) == (height, width)
    with torch.no_grad(), autocast(precision):
        expected = (padded_from_dynamic(model, images, static.detections_per_img)
                    if at_input_size else static(images))
    loaded = run_in_fresh_process(out, images)
    reference = "the eager model" if at_input_size else "eager StaticFCOS"
    mismatch = compare(loaded, expected, exact=True)
    if mismatch:
        print(f"error: the program loaded from {out} differs from {reference}: {mismatch}",
              file=sys.stderr)
        return 1
    print(f"exported {out} ({images.shape[0]}x3x{height}x{width}, backend "
          f"{_backend_name(model)}, precision {describe(precision, channels_last)}): loaded "
          f"in a fresh process, the same detections as {reference} on {images.shape[0]} "
          f"{split} images ({int(expected[3].sum())} detections)")

    if args.onnx is not None:
        from fcos_fast.export.onnx import export_onnx, run_onnxruntime  # noqa: PLC0415

        # ONNX in float32 always: onnxruntime's CPU provider has no bfloat16 convolution.
        onnx_source = exported if precision.dtype is None else export_static(
            StaticFCOS(model).eval(), images)
        export_onnx(onnx_source, args.onnx)
        with torch.no_grad():
            ours = onnx_source.module()(images)
        mismatch = compare(run_onnxruntime(args.onnx, images), ours, exact=False)
        if mismatch:
            print(f"error: onnxruntime's detections with {args.onnx} differ from the "
                  f"exported program's: {mismatch}", file=sys.stderr)
            return 1
        print(f"exported {args.onnx} (float32): onnxruntime gives the exported program's "
              f"detections{'' if precision.dtype is None else ' at float32'} (counts and "
              f"labels equal, boxes and scores within 1e-4)")

    if args.evaluate:
        from fcos_fast.engine.evaluation import evaluate  # noqa: PLC0415

        batch = config.train.eval_batch_size
        eager, _ = evaluate(model, dataset, batch_size=batch, device=device,
                            num_workers=config.data.num_workers, precision=precision)
        ours, _ = evaluate(load(out), dataset, batch_size=batch, device=device,
                           num_workers=config.data.num_workers)
        print(f"mAP on {split} ({eager['num_images']} images) at {precision.name}: eager model "
              f"{eager['mAP']:.4f} (mAP@0.5 {eager['mAP50']:.4f}), exported program "
              f"{ours['mAP']:.4f} (mAP@0.5 {ours['mAP50']:.4f})")
        if precision.dtype is not None:
            # The float32 reference as float32 inference runs: contiguous.
            fp32 = resolve_precision("fp32", device)
            set_inference_memory_format(model, fp32, config.solver.channels_last)
            reference, _ = evaluate(model, dataset, batch_size=batch, device=device,
                                    num_workers=config.data.num_workers, precision=fp32)
            differences = [eager[key] - reference[key] for key in ("mAP", "mAP50")]
            print(f"float32 eager model: mAP {reference['mAP']:.4f} (mAP@0.5 "
                  f"{reference['mAP50']:.4f}); {precision.name} differs by "
                  f"{differences[0]:+.4f} ({differences[1]:+.4f})")
    return 0


def _native_ops() -> set[str]:
    from fcos_fast import _extension  # noqa: PLC0415

    if not _extension.NATIVE_AVAILABLE:
        return set()
    return {f"fcos_fast::{op}" for op in ("per_class_topk_padded", "batched_nms_padded")
            if _extension.native_has_kernel(op, "cpu")}


def _backend_name(model: nn.Module) -> str:
    from fcos_fast import ops  # noqa: PLC0415

    if model.backend is not None:
        return model.backend
    return "native" if "native" in ops.available_backends("cpu") else "reference"


def validation_batch(dataset, batch_size: int, size: tuple[int, int]) -> Tensor:
    """The first ``batch_size`` images of ``dataset`` (repeated if it has fewer),
    resized to ``size``: ``[B, 3, H, W]``."""
    if len(dataset) == 0:
        raise ConfigError("the validation split has no images to check the export on")
    return torch.stack([resize_to(dataset[index % len(dataset)][0], size)
                        for index in range(batch_size)])


def padded_from_dynamic(model: nn.Module, images: Tensor, detections_per_img: int
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``model(list(images))`` in ``StaticFCOS``'s padded layout."""
    return pad_detections(model(list(images)), detections_per_img)


def pad_detections(detections: list[dict[str, Tensor]], detections_per_img: int
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-image detection dicts as ``(boxes [B, D, 4], scores [B, D], labels [B, D],
    num_detections [B])``, padded as ``StaticFCOS`` pads (on the CPU)."""
    batch = len(detections)
    boxes = torch.zeros(batch, detections_per_img, 4)
    scores = torch.zeros(batch, detections_per_img)
    labels = torch.full((batch, detections_per_img), -1, dtype=torch.int64)
    counts = torch.tensor([len(found["scores"]) for found in detections], dtype=torch.int64)
    for index, found in enumerate(detections):
        count = len(found["scores"])
        boxes[index, :count] = found["boxes"].cpu()
        scores[index, :count] = found["scores"].cpu()
        labels[index, :count] = found["labels"].cpu()
    return boxes, scores, labels, counts


def compare(actual, expected, *, exact: bool) -> str | None:
    """What differs between two ``(boxes, scores, labels, num_detections)``, or None.

    ``exact=False``: counts and labels equal, boxes and scores within 1e-4 (relative,
    or absolute near zero)."""
    boxes, scores, labels, counts = (tensor.cpu() for tensor in actual)
    want_boxes, want_scores, want_labels, want_counts = (tensor.cpu() for tensor in expected)
    if not torch.equal(counts, want_counts):
        return f"detections per image {counts.tolist()} instead of {want_counts.tolist()}"
    if not torch.equal(labels, want_labels):
        return "different labels"
    for name, got, want in (("boxes", boxes, want_boxes), ("scores", scores, want_scores)):
        if exact and not torch.equal(got, want):
            return f"different {name} (largest difference {float((got - want).abs().max())})"
        if not exact and not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
            return f"{name} differ by up to {float((got - want).abs().max())}"
    return None


def run_in_fresh_process(program: Path, images: Tensor) -> tuple[Tensor, ...]:
    """The outputs of the program file on ``images``, from a new Python process that only
    imports fcos_fast (registering its ops) and ``torch.export.load``s the file."""
    with tempfile.TemporaryDirectory() as folder:
        inputs, outputs = Path(folder) / "images.pt", Path(folder) / "outputs.pt"
        torch.save(images, inputs)
        code = ("import sys, torch, fcos_fast.ops\n"
                "program = torch.export.load(sys.argv[1]).module()\n"
                "with torch.no_grad():\n"
                "    outputs = program(torch.load(sys.argv[2]))\n"
                "torch.save(tuple(outputs), sys.argv[3])\n")
        result = subprocess.run([sys.executable, "-c", code, str(program), str(inputs),
                                 str(outputs)], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"loading {program} in a fresh process failed:\n{result.stderr}")
        return torch.load(outputs)


if __name__ == "__main__":
    sys.exit(main())
