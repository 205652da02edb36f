"""An independent float64 functional AlphaNet, written from DESIGN 1.3 (not from our modules).

It shares only the state-dict key names with the library, so a semantic error in the modules (activation,
SE gate, shortcut, padding, head order, mid-width rounding) shows up as a mismatch.
"""
import torch
import torch.nn.functional as F


def _div8(v):
    new_v = max(8, int(v + 4) // 8 * 8)
    return new_v + 8 if new_v < 0.9 * v else new_v


def _bn(sd, prefix, x, act=True, eps=1e-5):
    w, b = sd[prefix + '.weight'], sd[prefix + '.bias']
    m, v = sd[prefix + '.running_mean'], sd[prefix + '.running_var']
    x = (x - m[:, None, None]) / torch.sqrt(v[:, None, None] + eps) * w[:, None, None] + b[:, None, None]
    return x * torch.sigmoid(x) if act else x  # swish


def reference_forward(sd, arch, space, x):
    """Logits of the subnet `arch` of `space` for input `x`, all in float64, from the design's formulas."""
    sd = {k: v.double() for k, v in sd.items()}
    x = x.double()
    x = F.conv2d(x, sd['conv_stem.weight'], stride=2, padding=1)
    x = _bn(sd, 'bn1', x)
    in_chs = arch.widths[0]
    for si, stage in enumerate(space.stages):
        out_chs, k, t = arch.widths[si + 1], arch.kernel_sizes[si], arch.expand_ratios[si]
        for j in range(arch.depths[si]):
            p = f'blocks.{si}.{j}.'
            stride = stage.stride if j == 0 else 1
            inp = x
            if t != 1:
                assert sd[p + 'conv_pw.weight'].shape[0] == _div8(round(in_chs * t))
                x = _bn(sd, p + 'bn1', F.conv2d(x, sd[p + 'conv_pw.weight']))
            x = F.conv2d(x, sd[p + 'conv_dw.weight'], stride=stride, padding=k // 2, groups=x.shape[1])
            x = _bn(sd, p + 'bn2', x)
            if stage.se:
                s = x.mean((2, 3), keepdim=True)
                s = F.relu(F.conv2d(s, sd[p + 'se.fc1.weight'], sd[p + 'se.fc1.bias']))
                s = F.conv2d(s, sd[p + 'se.fc2.weight'], sd[p + 'se.fc2.bias'])
                x = x * (F.relu6(s + 3) / 6)  # hard sigmoid
            x = _bn(sd, p + 'bn3', F.conv2d(x, sd[p + 'conv_pwl.weight']), act=False)
            sc = inp
            if stride > 1:  # the original: pad 1 (zeros counted) when the size is odd
                sc = F.avg_pool2d(sc, stride, stride, padding=0 if sc.size(-1) % 2 == 0 else 1)
            if in_chs != out_chs:
                sc = F.conv2d(sc, sd[p + 'shortcut.conv.weight'])
            x = x + sc
            in_chs = out_chs
    head = len(space.stages)
    x = _bn(sd, f'blocks.{head}.0.bn1', F.conv2d(x, sd[f'blocks.{head}.0.conv.weight']))
    x = x.mean((2, 3), keepdim=True)
    x = F.conv2d(x, sd['conv_head.weight'])
    x = (x * torch.sigmoid(x)).flatten(1)
    return F.linear(x, sd['classifier.weight'], sd['classifier.bias'])
