"""ONNX export with a dynamic batch axis, checked against torch with onnxruntime (needs the ``onnx`` extra)."""
import os
from typing import Any, Dict, Union

import torch

from ..utils import import_optional
from .timing import describe_device, images_per_second

__all__ = ['OnnxCheckError', 'export_onnx', 'require_onnx', 'ONNX_ATOL']

ONNX_ATOL = 1e-4  # largest max-abs logit difference onnxruntime vs torch that passes


class OnnxCheckError(ValueError):
    """onnxruntime's logits differ from torch's by more than the tolerance."""


def require_onnx():
    """onnxruntime, after checking that ONNX export's packages are installed (`MissingExtraError` names the extra)."""
    for name in ('onnx', 'onnxscript'):  # torch.onnx.export(dynamo=True) imports them; check before any work
        import_optional(name, 'ONNX export')
    return import_optional('onnxruntime', 'ONNX export')


@torch.no_grad()
def export_onnx(model: torch.nn.Module, path: Union[str, os.PathLike], resolution: int, in_chans: int = 3,
                batch_size: int = 4, atol: float = ONNX_ATOL, opset: int = 18, seed: int = 0,
                measure: bool = True) -> Dict[str, Any]:
    """Write `model` (on CPU, eval) to `path` as one ONNX file with a dynamic batch axis and check it.

    The check runs onnxruntime (CPU) and torch on seeded random inputs at two batch sizes (`batch_size` and
    `batch_size` + 1, so the batch axis is proven dynamic) and fails above `atol` max abs logit difference.

    Returns:
        {'max_abs_diff', 'atol', 'opset', 'input', 'output', 'batch_size', and with `measure`:
        'ort_images_per_s', 'torch_images_per_s', 'device'} for the card.

    Raises:
        OnnxCheckError: onnxruntime disagrees with torch by more than `atol`.
        MissingExtraError: onnx, onnxscript or onnxruntime is not installed.
    """
    ort = require_onnx()
    model = model.eval().cpu()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, in_chans, resolution, resolution, generator=g)
    torch.onnx.export(model, (x,), os.fspath(path), input_names=['input'], output_names=['logits'],
                      dynamic_shapes=({0: torch.export.Dim('batch')},), dynamo=True, external_data=False,
                      opset_version=opset, verbose=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same threads as torch, so images/s compare
    session = ort.InferenceSession(os.fspath(path), sess_options=options, providers=['CPUExecutionProvider'])
    diff = 0.0
    for n in (batch_size, batch_size + 1):
        xb = torch.randn(n, in_chans, resolution, resolution, generator=g)
        ours = session.run(None, {'input': xb.numpy()})[0]
        diff = max(diff, float((torch.from_numpy(ours) - model(xb)).abs().max()))
    if not diff <= atol:  # also catches NaN
        raise OnnxCheckError(f'ONNX check failed: onnxruntime and torch logits differ by up to {diff:.3g} '
                             f'(allowed {atol:g}); the model folder was not written')
    out = {'max_abs_diff': diff, 'atol': atol, 'opset': opset, 'input': 'input', 'output': 'logits',
           'batch_size': batch_size}
    if measure:
        feed = {'input': x.numpy()}
        out['ort_images_per_s'] = images_per_second(lambda: session.run(None, feed), batch_size)
        out['torch_images_per_s'] = images_per_second(lambda: model(x), batch_size)
        out['device'] = describe_device('cpu')
    return out
