"""Build AlphaNet models, report their cost and classify an image (or a synthetic batch).

    alphanet-classify                        # A0, a synthetic batch
    alphanet-classify -m alphanet_a3 --image cat.jpg --pretrained
"""
import argparse
import sys
import time
from typing import Any, List, Optional, Sequence

from ..utils import check_model_spec, display_path, regular_file_size, short_message
from ._common import int_at_least, user_errors_exit

PROG = 'alphanet-classify'
MAX_IMAGE_BYTES = 256 << 20  # an encoded photo is a few MB
_HUB_PREFIXES = ('local-dir:', 'hf-hub:')


def _timm() -> Any:
    """timm, with the alphanet_* models registered; imported on first use, after the arguments are parsed."""
    import timm

    from .. import models  # noqa: F401  (registers the alphanet_* models)
    return timm


def _check_model_name(name: str) -> None:
    """A named AlphaNet model or a local-dir:/hf-hub: folder; ValueError naming the allowed names otherwise."""
    if not isinstance(name, str) or name.startswith(_HUB_PREFIXES):
        return
    timm = _timm()
    allowed = timm.list_models('alphanet_*')
    if timm.models.split_model_name_tag(name)[0] not in allowed:  # 'alphanet_a0.in1k' names alphanet_a0
        raise ValueError(f'model {name[:100]!r} is not an AlphaNet model; allowed: {", ".join(allowed)}, "all", '
                         'or local-dir:FOLDER / hf-hub:ORG/NAME of an AlphaNet model')


def _read_image(path: str) -> 'Image.Image':
    """An RGB image from `path` (a bounded regular file); ValueError naming the file when PIL cannot decode it."""
    from PIL import Image

    size = regular_file_size(path, 'image file')
    if size > MAX_IMAGE_BYTES:
        raise ValueError(f'{display_path(path)}: too large for an image file ({size} bytes; at most {MAX_IMAGE_BYTES})')
    try:  # PIL refuses decompression bombs (more than twice its MAX_IMAGE_PIXELS) itself
        with Image.open(path) as img:
            return img.convert('RGB')
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f'{display_path(path)}: not an image PIL can read ({short_message(e)})') from None


def classify(model_name: str, image: Optional[str] = None, pretrained: bool = False, batch_size: int = 4,
             topk: int = 5, seed: int = 0) -> dict:
    """Create `model_name`, run it once on `image` (or a seeded random batch) and return a summary dict.

    Raises:
        ValueError: a model that is not an AlphaNet one, an unreadable image, or a batch_size/topk below 1.
        FileNotFoundError: a missing image or local-dir: folder.
    """
    for arg, value in (('batch_size', batch_size), ('topk', topk)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f'{arg} must be a positive integer, got {str(value)[:40]!r}')
    import torch
    from timm.data import create_transform, resolve_data_config

    from ..cost.flops import count_macs_and_params

    _check_model_name(model_name)
    timm = _timm()
    check_model_spec(model_name)
    picture = _read_image(image) if image is not None else None
    model = timm.create_model(model_name, pretrained=pretrained).eval()
    if not hasattr(model, 'arch') or not hasattr(model, 'space'):  # e.g. a local-dir: folder of a resnet
        raise ValueError(f'{model_name[:300]}: a {type(model).__name__}, not an AlphaNet model')
    macs, params = count_macs_and_params(model.arch, model.space, num_classes=model.num_classes)
    data_cfg = resolve_data_config(model=model)
    if picture is not None:
        x = create_transform(**data_cfg)(picture).unsqueeze(0)
    else:
        x = torch.randn((batch_size, *data_cfg['input_size']), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        t0 = time.perf_counter()
        probs = model(x).softmax(-1)
        seconds = time.perf_counter() - t0
    top = probs.topk(min(topk, probs.shape[-1]), dim=-1)
    return dict(model=model_name, input_size=tuple(x.shape), mflops=macs / 1e6, params_m=params / 1e6,
                pretrained=pretrained, top_probs=top.values.tolist(), top_classes=top.indices.tolist(),
                seconds=seconds)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``alphanet-classify``; exits with status 2 and a one-line message on bad input."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-m', '--model', action='append', default=None,
                        help='model name (repeatable); default: alphanet_a0. "all" = every named A model')
    parser.add_argument('--image', default=None, help='image file to classify (default: a synthetic batch)')
    parser.add_argument('--pretrained', action='store_true', help='load published weights from the Hugging Face Hub')
    parser.add_argument('-b', '--batch-size', type=int_at_least(1), default=4, help='synthetic batch size')
    args = parser.parse_args(argv)
    names: List[str] = args.model or ['alphanet_a0']
    if names == ['all']:
        names = [n for n in _timm().list_models('alphanet_*') if n not in ('alphanet_custom', 'alphanet_supernet')]

    def run() -> int:
        for name in names:  # every name, and the image, are checked before the first model is built
            _check_model_name(name)
        if args.image is not None:
            _read_image(args.image)
        print(f'{"model":<20} {"input":<18} {"MFLOPs":>8} {"params M":>9} {"ms":>8}  top-1 class (prob)')
        for name in names:
            r = classify(name, args.image, args.pretrained, args.batch_size)
            first = f'{r["top_classes"][0][0]} ({r["top_probs"][0][0]:.3f})'
            print(f'{name:<20} {str(r["input_size"]):<18} {r["mflops"]:>8.2f} {r["params_m"]:>9.2f} '
                  f'{r["seconds"] * 1e3:>8.1f}  {first}')
        if not args.pretrained:
            print('(random weights: pass --pretrained for the published ones; classes are meaningless without them)')
        return 0

    return user_errors_exit(PROG, run)


if __name__ == '__main__':
    sys.exit(main())
