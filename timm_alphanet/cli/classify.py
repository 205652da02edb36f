"""Build AlphaNet models, report their cost and classify an image (or a synthetic batch).

    python -m timm_alphanet.classify                        # A0, a synthetic batch
    python -m timm_alphanet.classify -m alphanet_a3 --image cat.jpg --pretrained
"""
import argparse
import time
from typing import List, Optional, Sequence

import torch
import timm
from timm.data import create_transform, resolve_data_config

from .. import models  # noqa: F401  (registers the alphanet_* models)
from ..io_checks import check_model_spec
from ..cost.flops import count_macs_and_params


def classify(model_name: str, image: Optional[str] = None, pretrained: bool = False, batch_size: int = 4,
             topk: int = 5, seed: int = 0) -> dict:
    """Create `model_name`, run it once on `image` (or a seeded random batch) and return a summary dict."""
    check_model_spec(model_name)
    model = timm.create_model(model_name, pretrained=pretrained).eval()
    macs, params = count_macs_and_params(model.arch, model.space, num_classes=model.num_classes)
    data_cfg = resolve_data_config(model=model)
    if image is not None:
        from PIL import Image
        transform = create_transform(**data_cfg)
        x = transform(Image.open(image).convert('RGB')).unsqueeze(0)
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


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-m', '--model', action='append', default=None,
                        help='model name (repeatable); default: alphanet_a0. "all" = every named A model')
    parser.add_argument('--image', default=None, help='image file to classify (default: a synthetic batch)')
    parser.add_argument('--pretrained', action='store_true', help='load published weights from the Hugging Face Hub')
    parser.add_argument('-b', '--batch-size', type=int, default=4, help='synthetic batch size')
    args = parser.parse_args(argv)
    names: List[str] = args.model or ['alphanet_a0']
    if names == ['all']:
        names = [n for n in timm.list_models('alphanet_*') if n not in ('alphanet_custom', 'alphanet_supernet')]
    print(f'{"model":<20} {"input":<18} {"MFLOPs":>8} {"params M":>9} {"ms":>8}  top-1 class (prob)')
    for name in names:
        r = classify(name, args.image, args.pretrained, args.batch_size)
        first = f'{r["top_classes"][0][0]} ({r["top_probs"][0][0]:.3f})'
        print(f'{name:<20} {str(r["input_size"]):<18} {r["mflops"]:>8.2f} {r["params_m"]:>9.2f} '
              f'{r["seconds"] * 1e3:>8.1f}  {first}')
    if not args.pretrained:
        print('(random weights: pass --pretrained for the published ones; classes are meaningless without them)')


if __name__ == '__main__':
    main()
