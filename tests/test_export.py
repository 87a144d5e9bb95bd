"""``fcos_fast.export``: StaticFCOS equals the dynamic model (in float32 and under
bfloat16 autocast), compiles whole, exports, round-trips through a file, and translates to
ONNX; the program's record and ``load``'s detector (images of any size); the ``python -m
fcos_fast.export`` command.

Equality with the dynamic model is exact (``torch.equal``) in eager mode: both run the
same network on the same padded batch and the same per-box arithmetic (the static path
decodes every point's box and gathers, the dynamic one gathers and decodes: the same
float operations per box), and the fixed-size ops keep what the dynamic ops keep. Only
compiled graphs and other runtimes (Inductor's fused kernels, onnxruntime's convolutions)
change the network's float results; there the counts and labels must still agree and
boxes and scores agree within 1e-4.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from fcos_fast import ops
from fcos_fast.data.common import Categories
from fcos_fast.engine.precision import (Precision, autocast, inference_precision,
                                        set_inference_memory_format)
from fcos_fast.export import (StaticFCOS, export_static, load, model_input_size,
                              program_metadata, save_program)
from fcos_fast.export.__main__ import compare, pad_detections, run_in_fresh_process
from fcos_fast.export.__main__ import main as export_main
from fcos_fast.model import FCOS, from_torchvision
from fcos_fast.model.head import HeadOutputs
from fcos_fast.model.points import make_points
from fcos_fast.model.postprocess import (PaddedDetections, postprocess_detections,
                                         postprocess_detections_padded)
from tests.model._helpers import randomize_head, torchvision_fcos
from tests.ops._cases import interpreted

CANDIDATES = ["per_class", "per_level"]
CPU_BACKENDS = ops.available_backends("cpu")


def _model_and_images(seed: int, backend: str | None, candidates: str, *,
                      num_images: int = 3) -> tuple[FCOS, torch.Tensor]:
    """A random FCOS (held-out weights: a seed of its own, a head that detects a lot),
    random thresholds, and images of one random size that the model does not resize
    (and that are not a multiple of 32, so the batch is padded)."""
    generator = torch.Generator().manual_seed(1000 + seed)
    draw = lambda low, high: int(torch.randint(low, high + 1, (1,), generator=generator))  # noqa: E731
    height, width = draw(70, 130), draw(70, 130)
    if height % 32 == 0:
        height += 1
    torch.manual_seed(1000 + seed)
    tv_model = torchvision_fcos(
        draw(2, 9), min_size=min(height, width), max_size=max(height, width),
        score_thresh=0.15 + 0.25 * float(torch.rand(1, generator=generator)),
        nms_thresh=0.4 + 0.3 * float(torch.rand(1, generator=generator)),
        topk_candidates=draw(8, 40), detections_per_img=draw(5, 40))
    randomize_head(tv_model, generator)
    model = from_torchvision(tv_model, backend=backend, candidates=candidates).eval()
    images = torch.rand(num_images, 3, height, width, generator=generator)
    assert model_input_size(model, height, width) == (height, width)
    return model, images


def _assert_equal_to_dynamic(static_outputs, dynamic, detections_per_img):
    found = PaddedDetections(*static_outputs)
    assert found.boxes.shape == (len(dynamic), detections_per_img, 4)
    for image, expected in enumerate(dynamic):
        count = int(found.num_detections[image])
        assert count == len(expected["scores"]), f"image {image}"
        assert torch.equal(found.boxes[image, :count], expected["boxes"]), f"image {image}"
        assert torch.equal(found.scores[image, :count], expected["scores"]), f"image {image}"
        assert torch.equal(found.labels[image, :count], expected["labels"]), f"image {image}"
        # Padding.
        assert (found.labels[image, count:] == -1).all()
        assert (found.scores[image, count:] == 0).all() and (found.boxes[image, count:] == 0).all()


def _equality_cases():
    params = []
    for backend in CPU_BACKENDS:
        for candidates in CANDIDATES:
            for seed in ([0] if interpreted(backend, "cpu") else [0, 1, 2]):
                params.append(pytest.param(backend, candidates, seed,
                                           id=f"{backend}-{candidates}-{seed}"))
    return params


@pytest.mark.parametrize("backend, candidates, seed", _equality_cases())
def test_static_equals_the_dynamic_model(backend, candidates, seed):
    model, images = _model_and_images(seed, backend, candidates)
    static = StaticFCOS(model)
    with torch.no_grad():
        dynamic = model(list(images))
        outputs = static(images)
    counts = [len(found["scores"]) for found in dynamic]
    assert sum(counts) > 2 * len(counts), "the case must produce detections"
    _assert_equal_to_dynamic(outputs, dynamic, model.detections_per_img)


# One 64x64 image: levels of 8x8, 4x4, 2x2, 1x1 and 1x1 points (85 in all).
POINTS = make_points([(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)], (64, 64), [8, 16, 32, 64, 128],
                     device=torch.device("cpu"))
NUM_POINTS = sum(POINTS.num_per_level)


def _planted_outputs(scores: torch.Tensor, box_size: torch.Tensor) -> HeadOutputs:
    """Head outputs with detection scores exactly ``scores`` [B, P, C] (centerness 1/2,
    so sqrt(p / 2) = s needs p = 2 s^2) and boxes ``box_size`` [B, P] strides each side."""
    probability = 2 * scores.double() ** 2
    logits = (torch.log(probability) - torch.log1p(-probability)).float()
    return HeadOutputs(logits, box_size[..., None].expand(-1, -1, 4).contiguous(),
                       torch.zeros(scores.shape[:2]))


@pytest.mark.parametrize("candidates", CANDIDATES)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_equal_scores_are_ordered_as_the_dynamic_path_orders_them(backend, candidates):
    """Scores drawn from three values: ties everywhere, across classes and levels, and
    overlapping boxes of equal scores, where NMS keeps the earlier candidate."""
    generator = torch.Generator().manual_seed(7)
    scores = torch.tensor([0.25, 0.4, 0.55])[torch.randint(0, 3, (2, NUM_POINTS, 3),
                                                           generator=generator)]
    outputs = _planted_outputs(scores, 0.5 + 2 * torch.rand(2, NUM_POINTS, generator=generator))
    settings = dict(score_thresh=0.3, nms_thresh=0.5, topk_candidates=12,
                    detections_per_img=20, candidates=candidates, backend=backend)
    dynamic = postprocess_detections(outputs, POINTS, [(64, 64)] * 2, **settings)
    static = postprocess_detections_padded(outputs, POINTS, (64, 64), **settings)
    assert all(len(found["scores"]) > 5 for found in dynamic)
    _assert_equal_to_dynamic(static, dynamic, 20)


@pytest.mark.parametrize("candidates", CANDIDATES)
def test_nan_predictions_and_fewer_slots_than_detections(candidates):
    """NaN scores are never candidates, NaN boxes reach NMS unchecked (as in the dynamic
    path), and D larger than the candidate slots is padded."""
    generator = torch.Generator().manual_seed(8)
    scores = torch.rand(2, NUM_POINTS, 2, generator=generator) * 0.7
    outputs = _planted_outputs(scores, torch.full((2, NUM_POINTS), 1.5))
    outputs.cls_logits[0, :10] = float("nan")
    outputs.box_regression[1, 20:30] = float("nan")
    settings = dict(score_thresh=0.2, nms_thresh=0.5, topk_candidates=4,
                    detections_per_img=60, candidates=candidates)
    dynamic = postprocess_detections(outputs, POINTS, [(64, 64)] * 2, **settings)
    static = postprocess_detections_padded(outputs, POINTS, (64, 64), **settings)
    assert static.boxes.shape == (2, 60, 4)
    assert all(0 < len(found["scores"]) < 60 for found in dynamic)
    found = PaddedDetections(*static)
    for image, expected in enumerate(dynamic):
        count = int(found.num_detections[image])
        assert count == len(expected["scores"])
        assert torch.equal(found.labels[image, :count], expected["labels"])
        assert torch.equal(found.scores[image, :count], expected["scores"])
        torch.testing.assert_close(found.boxes[image, :count], expected["boxes"],
                                   equal_nan=True, rtol=0, atol=0)


class TinyBackbone(nn.Module):
    """Five strided convolutions, P3 to P7, 32 channels: the network stand-in for the
    compile tests (Inductor compiles a ResNet in minutes on two cores; what is under test
    here is that the whole module compiles as one graph)."""

    out_channels = 32

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, kernel_size=8, stride=8)
        self.levels = nn.ModuleList(nn.Conv2d(32, 32, 3, stride=2, padding=1) for _ in range(4))

    def forward(self, images):
        features = [torch.relu(self.stem(images))]
        for level in self.levels:
            features.append(torch.relu(level(features[-1])))
        return features


def _tiny_model(backend: str, candidates: str) -> FCOS:
    torch.manual_seed(3)
    model = FCOS(4, TinyBackbone(), min_size=96, max_size=120, num_convs=1,
                 score_thresh=0.3, topk_candidates=15, detections_per_img=25,
                 candidates=candidates, backend=backend).eval()
    with torch.no_grad():
        model.head.cls_logits.bias.uniform_(-3, 1)
        model.head.box_regression.bias.fill_(2.0)
        for conv in (model.head.cls_logits, model.head.box_regression):
            conv.weight.normal_(std=0.05)
    return model


def _assert_close_detections(actual, expected):
    """Counts and labels equal; boxes and scores within 1e-4 (compiled float paths)."""
    assert compare(actual, expected, exact=False) is None, compare(actual, expected, exact=False)


@pytest.mark.parametrize("backend, candidates", [
    ("native", "per_class"), ("native", "per_level"), ("reference", "per_class")])
def test_compiles_whole_with_inductor(backend, candidates):
    if backend not in CPU_BACKENDS:
        pytest.fail(f"the {backend} backend must be built for this test")
    model = _tiny_model(backend, candidates)
    static = StaticFCOS(model)
    images = torch.rand(2, 3, 96, 120, generator=torch.Generator().manual_seed(4))
    torch._dynamo.reset()
    compiled = torch.compile(static, fullgraph=True)
    expected = static(images)
    assert int(expected[3].sum()) > 4
    _assert_close_detections(compiled(images), expected)


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_export_round_trips_through_a_file_into_a_fresh_process(backend, tmp_path):
    model, images = _model_and_images(3, backend, "per_class", num_images=2)
    model.topk_candidates = 10  # the reference NMS unrolls one step per slot
    static = StaticFCOS(model)
    exported = torch.export.export(static, (images,))
    if backend == "native":  # the ops are nodes of the graph, not traced through
        # (StaticFCOS runs under no_grad: the body is a submodule of a grad-mode node.)
        targets = {node.target for module in exported.graph_module.modules()
                   if isinstance(module, torch.fx.GraphModule) for node in module.graph.nodes}
        assert {torch.ops.fcos_fast.per_class_topk_padded.default,
                torch.ops.fcos_fast.batched_nms_padded.default} <= targets
    path = tmp_path / "model.pt2"
    torch.export.save(exported, path)
    with torch.no_grad():
        expected = static(images)
        dynamic = model(list(images))
    _assert_equal_to_dynamic(expected, dynamic, model.detections_per_img)
    assert compare(exported.module()(images), expected, exact=True) is None
    assert compare(run_in_fresh_process(path, images), expected, exact=True) is None


def test_compare_reports_every_kind_of_difference():
    """The oracle of every export, ONNX and Inductor check (issue 19.3): each way two sets
    of detections can differ is reported, and only what the mode allows passes."""
    boxes = torch.tensor([[[1.0, 2.0, 30.0, 40.0], [5.0, 5.0, 9.0, 9.0]]])
    expected = (boxes, torch.tensor([[0.9, 0.4]]), torch.tensor([[2, 0]]), torch.tensor([2]))
    assert compare(expected, expected, exact=True) is None
    one_ulp = boxes.clone()
    one_ulp[0, 1, 2] = torch.nextafter(one_ulp[0, 1, 2], torch.tensor(100.0))
    assert "different boxes" in compare((one_ulp, *expected[1:]), expected, exact=True)
    assert compare((one_ulp, *expected[1:]), expected, exact=False) is None
    scores = expected[1] + torch.tensor([[0.0, 1e-3]])
    assert "scores differ" in compare((boxes, scores, *expected[2:]), expected, exact=False)
    labels = torch.tensor([[2, 1]])
    assert compare((boxes, expected[1], labels, expected[3]), expected,
                   exact=False) == "different labels"
    fewer = (*expected[:3], torch.tensor([1]))
    assert "detections per image [1] instead of [2]" in compare(fewer, expected, exact=False)


def test_a_perturbed_program_is_reported_as_different(tmp_path):
    """The negative control of the fresh-process check: the same program with one bias of
    the box regression moved by 0.01 gives detections that ``compare`` rejects."""
    model, images = _model_and_images(3, "native", "per_class", num_images=2)
    static = StaticFCOS(model)
    exported = torch.export.export(static, (images,))
    with torch.no_grad():
        expected = static(images)
    assert int(expected[3].sum()) > 4
    name = next(key for key in exported.state_dict if key.endswith("box_regression.bias"))
    with torch.no_grad():
        exported.state_dict[name].add_(0.01)
    torch.export.save(exported, tmp_path / "perturbed.pt2")
    assert compare(run_in_fresh_process(tmp_path / "perturbed.pt2", images), expected,
                   exact=False) is not None


@pytest.mark.parametrize("candidates", CANDIDATES)
def test_onnx_in_onnxruntime_matches(candidates, tmp_path):
    from fcos_fast.export.onnx import export_onnx, run_onnxruntime

    model, images = _model_and_images(4, "native", candidates, num_images=2)
    static = StaticFCOS(model)
    exported = torch.export.export(static, (images,))
    export_onnx(exported, tmp_path / "model.onnx")
    import onnx

    # Standard ONNX operators only: no custom domain, no function left to resolve.
    onnx_model = onnx.load(tmp_path / "model.onnx")
    assert not onnx_model.functions
    assert all(node.domain in ("", "ai.onnx") and onnx.defs.has(node.op_type)
               for node in onnx_model.graph.node)
    assert {"NonMaxSuppression", "TopK", "ScatterND"} <= {
        node.op_type for node in onnx_model.graph.node}
    expected = static(images)
    assert int(expected[3].sum()) > 4
    _assert_close_detections(run_onnxruntime(tmp_path / "model.onnx", images), expected)


class _NMS(nn.Module):
    def forward(self, boxes, scores, counts, idxs):
        return ops.batched_nms_padded(boxes, scores, counts, 0.5, idxs, backend="native",
                                      check_values=False)


class _TopK(nn.Module):
    def forward(self, scores):
        return ops.per_class_topk_padded(scores, 7, 0.3, backend="native")


def _onnx_session(module, args, path):
    import onnxruntime

    from fcos_fast.export.onnx import ONNX_OPSET, _translations

    torch.onnx.export(torch.export.export(module, args), f=str(path), dynamo=True,
                      opset_version=ONNX_OPSET, custom_translation_table=_translations())
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(*inputs):
        feeds = {info.name: value.numpy() for info, value in zip(session.get_inputs(), inputs)}
        return [torch.from_numpy(output) for output in session.run(None, feeds)]

    return run


def test_onnx_translations_of_the_ops_on_ties_and_edge_cases(tmp_path):
    """The two translations alone, against the ops, on cases full of equal scores
    (onnxruntime's NonMaxSuppression keeps the lower index among equal scores, as the
    op does: ONNX does not say), unused slots, empty segments and categories; and top-k
    with ties and NaN."""
    generator = torch.Generator().manual_seed(9)
    segments, length = 5, 12
    boxes = torch.rand(segments, length, 4)
    scores, counts = torch.rand(segments, length), torch.full((segments,), length)
    idxs = torch.zeros(segments, length, dtype=torch.int64)
    nms = _onnx_session(_NMS(), (boxes, scores, counts, idxs), tmp_path / "nms.onnx")
    for trial in range(60):
        corner = torch.rand(segments, length, 2, generator=generator) * 20
        boxes = torch.cat([corner, corner + torch.rand(segments, length, 2,
                                                       generator=generator) * 15 + 1], -1)
        scores = (torch.rand(segments, length, generator=generator) * 3).floor() / 3
        counts = torch.randint(0, length + 1, (segments,), generator=generator)
        counts[0] = 0
        idxs = torch.randint(0, 3, (segments, length), generator=generator) + trial % 2 * 5
        assert torch.equal(nms(boxes, scores, counts, idxs)[0],
                           _NMS()(boxes, scores, counts, idxs)), f"trial {trial}"

    topk = _onnx_session(_TopK(), (torch.rand(40, 5),), tmp_path / "topk.onnx")
    for trial in range(10):
        values = (torch.rand(40, 5, generator=generator) * 10).floor() / 10
        values[3, 1] = values[7, 4] = float("nan")
        for got, want in zip(topk(values), _TopK()(values)):
            assert torch.equal(got, want), f"trial {trial}"


def test_input_errors():
    with pytest.raises(TypeError, match="fcos_fast FCOS"):
        StaticFCOS(nn.Linear(2, 2))
    static = StaticFCOS(_tiny_model("reference", "per_class"))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        static(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="floating point"):
        static(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="detections_per_img"):
        StaticFCOS(_tiny_model("reference", "per_class"), detections_per_img=0)


def test_model_input_size():
    model = FCOS(2, TinyBackbone(), min_size=800, max_size=1333)
    assert model_input_size(model, 480, 640) == (800, 1066)
    assert model_input_size(model, 800, 1066) == (800, 1066)
    assert model_input_size(model, 100, 1000) == (133, 1333)


@pytest.mark.cuda
@pytest.mark.parametrize("candidates", CANDIDATES)
def test_cuda_no_sync_compile_and_cuda_graphs(candidates, gpu):
    """On one GPU, for every backend that runs there: no host sync in the eager forward
    (sync debug mode "error"), the detections of the dynamic model, and the same again
    from torch.compile(fullgraph=True) and from CUDA graphs (mode="reduce-overhead").
    Rehearsed on the CPU with the native backend, without the sync mode and the graphs."""
    for backend in gpu.size(ops.available_backends("cuda"), ["native"]):
        model, images = _model_and_images(5, backend, candidates)
        model.to(gpu.device)
        images = gpu.to(images)
        static = StaticFCOS(model)
        with torch.no_grad():
            dynamic = model(list(images))
            expected = static(images)  # warm-up: cuDNN and kernel loading may sync
            with gpu.no_host_sync():
                outputs = static(images)
        # Two eager calls: cuDNN promises no bitwise repeatability, hence the tolerance.
        assert compare(outputs, expected, exact=False) is None, backend
        assert compare(outputs, pad_detections(dynamic, static.detections_per_img),
                       exact=False) is None, backend
        torch._dynamo.reset()
        compiled = torch.compile(static, fullgraph=True)
        _assert_close_detections(compiled(images), expected)
        if not gpu.cuda_only("CUDA graphs"):
            continue
        torch._dynamo.reset()
        counters = torch._dynamo.utils.counters
        counters.clear()
        graphed = torch.compile(static, fullgraph=True, mode="reduce-overhead")
        for _ in range(3):  # recorded on the second call, replayed on the third
            replayed = [t.clone() for t in graphed(images)]
        # Inductor falls back to no CUDA graph (and counts it) on anything it cannot
        # capture: a host sync, a CPU tensor, an op that is not capturable.
        assert not counters["inductor"]["cudagraph_skips"], (backend, dict(counters["inductor"]))
        _assert_close_detections(replayed, expected)


# Precision: the network under bfloat16 autocast with a channels-last backbone (the CPU's
# inference rule), post-processing in float32. bfloat16 runs on any CPU (emulated where
# it is not native), so these run everywhere.
BF16 = Precision("bf16", "cpu")


def _nodes(exported: torch.export.ExportedProgram) -> list[torch.fx.Node]:
    return [node for module in exported.graph_module.modules()
            if isinstance(module, torch.fx.GraphModule) for node in module.graph.nodes]


@pytest.mark.parametrize("candidates", CANDIDATES)
def test_static_under_bf16_equals_the_dynamic_model_under_autocast(candidates):
    model, images = _model_and_images(6, "native", candidates)
    set_inference_memory_format(model, BF16)
    static = StaticFCOS(model, precision="bf16")
    assert static.precision == BF16
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        dynamic = model(list(images))
    outputs = static(images)  # its own autocast
    assert sum(len(found["scores"]) for found in dynamic) > 2 * len(dynamic)
    _assert_equal_to_dynamic(outputs, dynamic, model.detections_per_img)
    assert outputs[0].dtype == outputs[1].dtype == torch.float32
    with torch.no_grad():  # and the precision made a difference
        float32 = StaticFCOS(model)(images)
    assert compare(outputs, float32, exact=True) is not None
    # A float32 StaticFCOS under the caller's autocast runs as the dynamic model does there.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert compare(StaticFCOS(model)(images), outputs, exact=True) is None


def test_bf16_export_round_trips_into_a_fresh_process(tmp_path):
    """The autocast region is exported as the casts autocast makes (no autocast node
    left: torch.export.load cannot read one back at a graph's top level): loaded in a
    fresh process, the program gives the eager model's bfloat16 detections bit for bit."""
    model, images = _model_and_images(7, "native", "per_class", num_images=2)
    set_inference_memory_format(model, BF16)
    static = StaticFCOS(model, precision=BF16)
    exported = export_static(static, images)
    nodes = _nodes(exported)
    assert not [node for node in nodes
                if getattr(node.target, "__name__", None) == "wrap_with_autocast"]
    convolutions = [node for node in nodes if "conv" in str(node.target)]
    assert convolutions and {node.meta["val"].dtype for node in convolutions} == {
        torch.float32, torch.bfloat16}  # P6/P7 stay float32
    path = tmp_path / "model.pt2"
    save_program(exported, path, program_metadata(static, images, categories=Categories(["a"] * 9, range(9)),
                                                  model=model, channels_last=True))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt2"]  # no temporary left
    with torch.no_grad(), BF16.autocast():
        expected = pad_detections(model(list(images)), model.detections_per_img)
    assert int(expected[3].sum()) > 4
    assert compare(run_in_fresh_process(path, images), expected, exact=True) is None


def test_compiles_whole_under_bf16():
    model = _tiny_model("native", "per_class")
    set_inference_memory_format(model, BF16)
    static = StaticFCOS(model, precision=BF16)
    images = torch.rand(2, 3, 96, 120, generator=torch.Generator().manual_seed(4))
    torch._dynamo.reset()
    compiled = torch.compile(static, fullgraph=True)
    expected = static(images)
    assert int(expected[3].sum()) > 4
    found = compiled(images)
    # Inductor fuses the bfloat16 network differently: counts and labels agree, scores
    # and boxes within bfloat16's rounding.
    assert torch.equal(found[3], expected[3]) and torch.equal(found[2], expected[2])
    torch.testing.assert_close(found[1], expected[1], rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(found[0], expected[0], rtol=1e-2, atol=0.5)


def _save(tmp_path, model, static, batch_size, size, channels_last=False):
    images = torch.rand(batch_size, 3, *size)
    path = tmp_path / "model.pt2"
    save_program(export_static(static, images), path,
                 program_metadata(static, images, model=model, channels_last=channels_last,
                                  categories=Categories(["cat", "dog", "cow", "owl"],
                                                        [3, 5, 7, 9])))
    return path


@pytest.mark.parametrize("precision", [None, BF16], ids=["fp32", "bf16"])
def test_loader_gives_the_eager_detections_where_the_size_fits(tmp_path, precision):
    """Images of the program's size (96 x 120, which the model keeps: min_size 96,
    max_size 120): the eager model's detections, exactly, at the program's precision;
    three images through a batch-2 program (a short last batch). An image the model
    resizes to that size: the same up to the float rounding of the resize."""
    model = _tiny_model("native", "per_class")
    channels_last = precision is not None and set_inference_memory_format(model, precision)
    static = StaticFCOS(model, precision=precision)
    detector = load(_save(tmp_path, model, static, 2, (96, 120), channels_last))
    assert detector.class_names == ["cat", "dog", "cow", "owl"]
    assert detector.category_ids == [3, 5, 7, 9]
    assert (detector.input_size, detector.batch_size) == ((96, 120), 2)
    assert detector.precision == (precision.name if precision else "fp32")
    assert detector.metadata["channels_last"] == channels_last
    generator = torch.Generator().manual_seed(11)
    images = [torch.rand(3, 96, 120, generator=generator) for _ in range(3)]
    assert detector.fits(96, 120) and not detector.fits(48, 60)
    resized = torch.rand(3, 48, 60, generator=generator)  # doubled by the model
    found = detector([*images, resized])
    with torch.no_grad(), autocast(precision):
        expected = model([*images, resized])
    assert sum(len(e["scores"]) for e in expected) > 6
    for image, (got, want) in enumerate(zip(found[:3], expected[:3])):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(got[key], want[key]), (image, key)
    assert compare(pad_detections(found[3:], 25), pad_detections(expected[3:], 25),
                   exact=False) is None


def test_loader_letterboxes_other_sizes_and_maps_boxes_back(tmp_path):
    """A 192 x 120 image into a 96 x 120 program: halved to 96 x 60, padded on the right
    with the model's mean colour (zero once normalised, as the model pads); boxes clipped
    to the image, those that start in the padding dropped, the rest doubled."""
    model = _tiny_model("native", "per_class")
    model.topk_candidates, model.detections_per_img = 150, 300  # some in the padding
    static = StaticFCOS(model)
    detector = load(_save(tmp_path, model, static, 2, (96, 120)))  # GroupNorm: B > 1 at 1x1
    image = torch.rand(3, 192, 120, generator=torch.Generator().manual_seed(12))
    assert not detector.fits(192, 120)
    (found,) = detector([image])

    half = nn.functional.interpolate(image[None], size=(96, 60), mode="bilinear",
                                     align_corners=False)[0]
    mean = torch.tensor(model.transform.image_mean)[:, None, None].expand(3, 96, 60)
    canvas = torch.cat([half, mean], dim=2)
    boxes, scores, labels, counts = static(torch.stack([canvas, torch.zeros_like(canvas)]))
    count = int(counts[0])
    boxes, scores, labels = boxes[0, :count], scores[0, :count], labels[0, :count]
    inside = boxes[:, 0] < 60
    assert inside.any() and not inside.all(), "the case needs detections in the padding"
    expected = boxes[inside].clone()
    expected[:, 0::2] = expected[:, 0::2].clamp(max=60)
    assert torch.equal(found["boxes"], expected * 2)
    assert torch.equal(found["scores"], scores[inside])
    assert torch.equal(found["labels"], labels[inside])
    assert float(found["boxes"][:, 0::2].max()) <= 120
    assert float(found["boxes"][:, 1::2].max()) <= 192


def test_load_refuses_a_program_without_its_record(tmp_path):
    model = _tiny_model("reference", "per_class")
    static = StaticFCOS(model)
    torch.export.save(export_static(static, torch.rand(2, 3, 96, 120)), tmp_path / "bare.pt2")
    with pytest.raises(ValueError, match="has no fcos_fast.json record"):
        load(tmp_path / "bare.pt2")


# The command, on the tiny trained run of the evaluate/infer tests (3 iterations on 64 px
# synthetic images).
from tests.test_evaluate_infer import run  # noqa: E402,F401  (a fixture)


def test_command_exports_checks_onnx_and_evaluates(run, tmp_path, capsys):
    assert export_main(["--checkpoint", str(run / "checkpoint.pt"), "--out",
                        str(tmp_path / "model.pt2"), "--batch", "2", "--onnx",
                        str(tmp_path / "model.onnx"), "--evaluate"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines()
             if not line.startswith("[torch.onnx]")]
    assert "loaded in a fresh process, the same detections as the eager model" in lines[0]
    assert "(2x3x64x64" in lines[0]
    assert "onnxruntime gives the exported program's detections" in lines[1]
    eager, exported = lines[2].split("eager model ")[1].split(", exported program ")
    assert lines[2].startswith("mAP on val (4 images)") and eager == exported
    program = torch.export.load(tmp_path / "model.pt2").module()
    assert program(torch.rand(2, 3, 64, 64))[0].shape == (2, 100, 4)
    # At the precision auto picks here (bfloat16 on a CPU that runs it natively); ONNX in
    # float32; the program file records what it is.
    name = inference_precision("auto", "cpu").name
    assert f"precision {name}" in lines[0] and f"at {name}:" in lines[2]
    assert ("backbone channels-last" in lines[0]) == (name == "bf16")
    assert "(float32)" in lines[1]
    assert (name != "fp32") == (len(lines) == 4 and lines[3].startswith("float32 eager model"))
    detector = load(tmp_path / "model.pt2")
    assert detector.class_names == ["circle", "square", "triangle"]
    assert (detector.input_size, detector.batch_size, detector.precision) == ((64, 64), 2, name)


def test_command_at_another_size_compares_with_the_eager_static_model(run, tmp_path, capsys):
    assert export_main(["--checkpoint", str(run / "checkpoint.pt"), "--out",
                        str(tmp_path / "model.pt2"), "--size", "96", "80"]) == 0
    line = capsys.readouterr().out.strip()
    assert "(1x3x96x80" in line and "as eager StaticFCOS" in line


@pytest.mark.parametrize("argv, message", [
    (["--checkpoint", "missing.pt"], "missing.pt"),
    (["--size", "16", "64"], "--size H W must be at least 32"),
    (["--batch", "0"], "--batch must be at least 1"),
])
def test_command_user_errors_are_one_line(run, tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    if argv[0] != "--checkpoint":
        argv = ["--checkpoint", str(run / "checkpoint.pt"), *argv]
    assert export_main([*argv, "--out", str(tmp_path / "model.pt2")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and message in error, error


def test_command_runs_as_a_module(run, tmp_path):
    result = subprocess.run([sys.executable, "-m", "fcos_fast.export", "--checkpoint",
                             str(run / "checkpoint.pt"), "--out", str(tmp_path / "m.pt2"),
                             "--size", "0", "64"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("error: ")


def test_command_without_onnx_installed_says_what_to_install(run, tmp_path, capsys,
                                                             monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a))
    assert export_main(["--checkpoint", str(run / "checkpoint.pt"), "--out",
                        str(tmp_path / "m.pt2"), "--onnx", str(tmp_path / "m.onnx")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "needs onnxruntime: pip install -r requirements.txt" in error
