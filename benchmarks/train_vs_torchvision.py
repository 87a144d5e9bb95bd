"""Train torchvision's FCOS and ours side by side on the synthetic set, in one run.

    python -m benchmarks.train_vs_torchvision [--quick] [--iters N] [--config FILE]
                                              [--set KEY=VALUE ...] [--no-readme]

Both detectors have the same architecture — the config's ResNet, FPN P3–P7 of
``model.fpn_channels`` and shared GroupNorm heads of ``model.num_convs`` convolutions —
and get the same training images in the same order (same sampler seed and augmentation
stream), the same optimizer (the config's, no weight decay on norms), LR schedule, precision
(``solver.amp``), memory format and iteration count; both are scored by the same
pycocotools evaluation on the held-out split. What differs is each detector's own code:
torchvision's ``FCOS`` (per-point P×G matching, its losses with centerness weight 1 —
it has no knob —, per-level candidates) against ``fcos_fast``'s (fused ops, the
config's centerness weight and candidate scheme, float32 losses under autocast).

Reports, per detector, the median step time, the training time and mAP@0.5 / mAP, into
``benchmarks/results/training/<device>.{json,md}`` and README.md's side-by-side block.
``--quick`` trains 150 iterations on a 100-image validation split (minutes on a CPU);
the full run uses the config's schedule.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.detection import FCOS as TorchvisionFCOS

from benchmarks.harness import device_name, fill_readme_block, versions, write_atomically
from fcos_fast.config import Config, load_config
from fcos_fast.data import build_dataset, build_train_transform, train_loader
from fcos_fast.engine.build import build_model, build_optimizer, build_schedule
from fcos_fast.engine.evaluation import evaluate
from fcos_fast.engine.hooks import LRScheduler
from fcos_fast.engine.precision import resolve_precision, use_channels_last
from fcos_fast.engine.schedule import build_scheduler
from fcos_fast.engine.trainer import HookBase, Trainer
from fcos_fast.model import resnet_fpn_backbone

RESULTS_DIR = Path(__file__).resolve().parent / "results" / "training"
README = Path(__file__).resolve().parent.parent / "README.md"
README_BEGIN = "<!-- train-vs-torchvision:begin -->"
README_END = "<!-- train-vs-torchvision:end -->"
QUICK_ITERS, QUICK_VAL = 150, 100


def torchvision_model(config: Config, num_classes: int) -> TorchvisionFCOS:
    """torchvision's FCOS with the architecture and inference settings of ``config``.

    The backbone is built by the same function as ours (so the two start from networks
    of the same shape, each drawing its own random init); the head and the
    post-processing are torchvision's own.
    """
    m = config.model
    backbone = resnet_fpn_backbone(m.backbone, weights=m.backbone_weights,
                                   trainable_layers=m.trainable_backbone_layers,
                                   out_channels=m.fpn_channels)
    # torchvision's default anchor generator: one anchor per point, sized by the stride.
    return TorchvisionFCOS(
        backbone, num_classes, min_size=config.input.min_size_test,
        max_size=config.input.max_size_test,
        center_sampling_radius=m.center_sampling_radius, score_thresh=m.score_thresh,
        nms_thresh=m.nms_thresh, detections_per_img=m.detections_per_img,
        topk_candidates=m.topk_candidates, _skip_resize=True,
        head=torchvision.models.detection.fcos.FCOSHead(m.fpn_channels, 1, num_classes,
                                                        num_convs=m.num_convs))


class _StepTimes(HookBase):
    def __init__(self) -> None:
        self.times: list[float] = []

    def after_step(self) -> None:
        self.times.append(self.trainer.step_time)


def train_and_evaluate(name: str, model: nn.Module, config: Config, train_set, val_set,
                       device: torch.device, progress: bool = True) -> dict:
    """Train ``model`` as ``config.solver`` says, then evaluate it; one result row."""
    solver = config.solver
    precision = resolve_precision(solver.amp, device)
    model = model.to(device)
    if use_channels_last(solver.channels_last, device):
        model.backbone.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(config, model)
    scheduler = build_scheduler(optimizer, build_schedule(config))
    data = train_loader(train_set, build_train_transform(config),
                        batch_size=solver.batch_size, seed=config.train.seed,
                        num_workers=config.data.num_workers)
    trainer = Trainer(model, optimizer, data, max_iter=solver.max_iters, device=device,
                      precision=precision, scaler=precision.grad_scaler(),
                      clip_grad_norm=solver.clip_grad_norm)
    steps = _StepTimes()
    bar = _Progress(name, solver.max_iters) if progress else None
    trainer.register_hooks([LRScheduler(scheduler), steps, bar])
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    metrics, _ = evaluate(model, val_set, batch_size=config.train.eval_batch_size,
                          device=device, progress=progress)
    return {"detector": name, "iterations": solver.max_iters,
            "batch_size": solver.batch_size, "precision": precision.name,
            "step_ms": 1000 * statistics.median(steps.times), "train_s": train_seconds,
            "skipped_steps": trainer.skipped_steps,
            "mAP50": metrics["mAP50"], "mAP": metrics["mAP"]}


class _Progress(HookBase):
    def __init__(self, name: str, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=f"train {name}", dynamic_ncols=True)

    def after_step(self) -> None:
        self.bar.update(1)

    def after_train(self) -> None:
        self.bar.close()


def markdown(rows: list[dict], *, device: str, run: str, config_name: str) -> str:
    baseline = next(row for row in rows if row["detector"] == "torchvision")
    lines = [f"**{device}** — run {run} ({versions()}); config `{config_name}`, "
             f"{baseline['iterations']} iterations of {baseline['batch_size']} images, "
             f"{baseline['precision']}, same data, schedule and evaluation for both.",
             "",
             "| detector | median step ms | step speed-up | training s | mAP@0.5 | mAP |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        speedup = baseline["step_ms"] / row["step_ms"]
        lines.append(f"| {row['detector']} | {row['step_ms']:.0f} | {speedup:.2f}× | "
                     f"{row['train_s']:.0f} | {row['mAP50']:.3f} | {row['mAP']:.3f} |")
    return "\n".join(lines) + "\n"


def update_readme(table: str, readme: Path = README) -> None:
    fill_readme_block(readme, README_BEGIN, README_END, table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_vs_torchvision",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="config (default: synthetic.yaml)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_ITERS} iterations, {QUICK_VAL} validation images")
    parser.add_argument("--iters", type=int, default=None, help="iterations (both detectors)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--no-readme", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    overrides = list(args.set)
    config = load_config(args.config, overrides)
    if config.data.dataset != "synthetic":
        print("error: the side-by-side benchmark trains on the synthetic set "
              "(data.dataset: synthetic)", file=sys.stderr)
        return 2
    planned = config.solver.in_iterations(config.data.synthetic.num_train)
    iterations = args.iters or (QUICK_ITERS if args.quick else planned.max_iters)
    scale = iterations / planned.max_iters
    overrides += [f"solver.max_iters={iterations}",
                  f"solver.warmup_iters={max(1, math.ceil(planned.warmup_iters * scale))}",
                  f"solver.steps={[max(1, round(s * scale)) for s in planned.steps]}"]
    if args.quick:
        overrides.append(f"data.synthetic.num_val={QUICK_VAL}")
    config = load_config(args.config, overrides)
    if config.train.num_threads > 0:
        torch.set_num_threads(config.train.num_threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train_set = build_dataset(config, config.data.train_split, train=True)
    val_set = build_dataset(config, config.data.val_split)

    rows = []
    for name, make in (("torchvision", torchvision_model), ("fcos_fast", build_model)):
        torch.manual_seed(config.train.seed)
        model = make(config, train_set.num_classes)
        rows.append(train_and_evaluate(name, model, config, train_set, val_set, device,
                                       progress=not args.no_progress))
        print(json.dumps(rows[-1]), flush=True)

    device_label = device_name(device)
    run = time.strftime("%Y-%m-%dT%H:%M:%S")
    table = markdown(rows, device=device_label, run=run,
                     config_name=args.config or "synthetic.yaml")
    results = args.results_dir / f"{device_label}.json"
    history = json.loads(results.read_text()) if results.exists() else []
    write_atomically(results, json.dumps(
        history + [{**row, "run": run, "device": device_label, "version": versions(),
                    "quick": args.quick} for row in rows], indent=1) + "\n")
    write_atomically(args.results_dir / f"{device_label}.md", table)
    print(table)
    if not args.no_readme and args.results_dir == RESULTS_DIR:
        update_readme(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
