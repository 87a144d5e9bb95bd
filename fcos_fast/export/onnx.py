"""``StaticFCOS`` to ONNX: our fixed-size ops translated to standard ONNX operators.

``torch.onnx.export(..., dynamo=True)`` exports the ``torch.export`` graph; the two
fcos_fast ops in it become standard operators through ``TRANSLATIONS`` (its
``custom_translation_table``), so any ONNX runtime runs the model without a plugin:

* ``fcos_fast::per_class_topk_padded`` -> ``Where`` (threshold), ``Transpose``, ``TopK``
  (ONNX breaks ties by the lower index: our order), ``ReduceSum`` for the counts.
* ``fcos_fast::batched_nms_padded`` -> ``NonMaxSuppression``, which is per (batch, class)
  by definition: the segments are its batches, the categories (``idxs``) its classes —
  a slot's score is kept in its own category's row and ``-inf`` in the others, as are
  unused slots, and a ``score_threshold`` of ``-inf`` drops them — then the selected
  ``(segment, slot)`` pairs are scattered into the keep mask (``ScatterND``).

Differences to know (``tests/test_export.py`` checks the rest is equal):

* Equal scores: ONNX leaves the order of equal-score boxes in ``NonMaxSuppression``
  unspecified (onnxruntime's priority queue compares scores only), so where two
  boxes of one category have exactly the same score *and* overlap above the threshold,
  the runtime may keep the other one of the two. ``torch.topk`` on CPU (per-level
  candidates) likewise makes no promise among equal scores, where ONNX ``TopK`` takes the
  lower index. Trained models rarely produce exactly equal float scores.
* A used slot with score ``-inf`` is never kept (the threshold drops it); the model's
  candidates all score above ``score_thresh``.
"""

from __future__ import annotations

import os

import torch

ONNX_OPSET = 18

_FLOAT_MIN = float("-inf")


def _translations() -> dict:
    """``{OpOverload: onnxscript function}``; imported lazily (onnxscript is optional)."""
    from onnxscript import INT64  # noqa: PLC0415
    from onnxscript import opset18 as op  # noqa: PLC0415

    def per_class_topk_padded(scores, k: int, score_thresh: float):
        """``(top_scores [C, K], top_index [C, K], counts [C])``, ``K = min(k, N)``."""
        slots = min(int(k), int(scores.shape[0]))
        thresh = op.CastLike(op.Constant(value_float=float(score_thresh)), scores)
        neg_inf = op.CastLike(op.Constant(value_float=_FLOAT_MIN), scores)
        # NaN > thresh is false: NaN is never a candidate, as in the op.
        candidates = op.Where(op.Greater(scores, thresh), scores, neg_inf)
        values, indices = op.TopK(op.Transpose(candidates, perm=[1, 0]),
                                  op.Constant(value_ints=[slots]), axis=1, largest=1, sorted=1)
        found = op.Greater(values, thresh)
        counts = op.ReduceSum(op.Cast(found, to=INT64.dtype), op.Constant(value_ints=[1]),
                              keepdims=0)
        return (op.Where(found, values, neg_inf),
                op.Where(found, indices, op.Constant(value_int=-1)), counts)

    def batched_nms_padded(boxes, scores, counts, iou_threshold: float, idxs=None):
        """``keep [S, L]`` bool through ``NonMaxSuppression``."""
        length = int(boxes.shape[1])
        neg_inf = op.CastLike(op.Constant(value_float=_FLOAT_MIN), scores)
        slot = op.Range(op.Constant(value_int=0), op.Constant(value_int=length),
                        op.Constant(value_int=1))
        used = op.Less(op.Unsqueeze(slot, op.Constant(value_ints=[0])),
                       op.Unsqueeze(counts, op.Constant(value_ints=[1])))  # [S, L]
        masked = op.Unsqueeze(op.Where(used, scores, neg_inf),
                              op.Constant(value_ints=[1]))  # [S, 1, L]
        if idxs is not None:
            # Categories as NMS classes: [S, K, L] scores, -inf outside each category.
            # Category k is idxs == min(idxs) + k (idxs of unused slots included: they
            # only add rows that hold no used slot).
            lowest = op.ReduceMin(op.Concat(op.Reshape(idxs, op.Constant(value_ints=[-1])),
                                            op.Constant(value_ints=[0]), axis=0), keepdims=1)
            category = op.Sub(idxs, lowest)
            num_categories = op.Add(op.ReduceMax(
                op.Concat(op.Reshape(category, op.Constant(value_ints=[-1])),
                          op.Constant(value_ints=[0]), axis=0), keepdims=0),
                op.Constant(value_int=1))
            classes = op.Range(op.Constant(value_int=0), num_categories,
                               op.Constant(value_int=1))
            member = op.Equal(op.Unsqueeze(category, op.Constant(value_ints=[1])),
                              op.Unsqueeze(classes, op.Constant(value_ints=[0, 2])))
            masked = op.Where(member, masked, neg_inf)
        selected = op.NonMaxSuppression(
            op.Cast(boxes, to=1), op.Cast(masked, to=1), op.Constant(value_ints=[length]),
            op.Constant(value_floats=[float(iou_threshold)]),
            op.Constant(value_floats=[_FLOAT_MIN]), center_point_box=0)  # [M, 3]
        # (batch, class, box) -> (segment, slot), scattered into a zero mask.
        pairs = op.Gather(selected, op.Constant(value_ints=[0, 2]), axis=1)
        ones = op.Expand(op.Constant(value_int=1),
                         op.Gather(op.Shape(selected), op.Constant(value_ints=[0]), axis=0))
        zeros = op.Expand(op.Constant(value_int=0), op.Shape(scores))
        return op.Cast(op.ScatterND(zeros, pairs, ones), to=9)  # 9: BOOL

    def sort_stable(values, *, stable: bool | None = None, dim: int = -1,
                    descending: bool = False):
        """``torch.sort(stable=True)`` as a ``TopK`` of every element: ONNX ``TopK``
        orders equal values by index, which is the stable order (torch_lib translates
        only the unstable overload)."""
        size = op.Reshape(op.Gather(op.Shape(values), op.Constant(value_int=dim), axis=0),
                          op.Constant(value_ints=[1]))
        return op.TopK(values, size, axis=dim, largest=1 if descending else 0, sorted=1)

    return {
        torch.ops.aten.sort.stable: sort_stable,
        torch.ops.fcos_fast.per_class_topk_padded.default: per_class_topk_padded,
        torch.ops.fcos_fast.batched_nms_padded.default: batched_nms_padded,
    }


def export_onnx(exported: torch.export.ExportedProgram, path: str | os.PathLike) -> None:
    """Write ``exported`` (``torch.export.export(StaticFCOS(...), (images,))`` with the
    native backend, whose ops are graph nodes) as an ONNX model at ``path``.

    Inputs ``images``; outputs ``boxes``, ``scores``, ``labels``, ``num_detections``.
    """
    # Imported here: onnx/onnxscript are dependencies of this feature only.
    torch.onnx.export(exported, f=str(path), dynamo=True, opset_version=ONNX_OPSET,
                      custom_translation_table=_translations(), input_names=["images"],
                      output_names=["boxes", "scores", "labels", "num_detections"],
                      external_data=False, optimize=True, verify=False, verbose=False)


def run_onnxruntime(path: str | os.PathLike, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The ONNX model at ``path`` on ``images`` in onnxruntime (CPU): its four outputs."""
    import onnxruntime  # noqa: PLC0415

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: images.cpu().numpy()})
    return tuple(torch.from_numpy(output) for output in outputs)
