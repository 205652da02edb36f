"""An independent float64 functional AlphaNet, written from the layer description of the paper and the original code (not from our modules).

It shares only the state-dict key names with the library, so a semantic error in the modules (activation,
SE gate, shortcut, padding, head order, mid-width rounding) shows up as a mismatch.
"""
import torch
import torch.nn.functional as F


def _div8(v):
    new_v = max(8, int(v + 4) // 8 * 8)
    return new_v + 8 if new_v < 0.9 * v else new_v


def _w(sd, key, out_chs, in_chs=None, k=None):
    """Weight `key` for out_chs x in_chs (x k x k): leading channels, centre of a larger stored kernel."""
    w = sd[key][:out_chs]
    if in_chs is not None:
        w = w[:, :in_chs]
    if k is not None:
        c = (w.shape[-1] - k) // 2
        w = w[..., c:c + k, c:c + k]
    return w


def _bn(sd, prefix, x, act=True, eps=1e-5):
    c = x.shape[1]  # supernet tensors are stored at max width: use the leading channels
    w, b = sd[prefix + '.weight'][:c], sd[prefix + '.bias'][:c]
    m, v = sd[prefix + '.running_mean'][:c], sd[prefix + '.running_var'][:c]
    x = (x - m[:, None, None]) / torch.sqrt(v[:, None, None] + eps) * w[:, None, None] + b[:, None, None]
    return x * torch.sigmoid(x) if act else x  # swish


def reference_forward(sd, arch, space, x):
    """Logits of the subnet `arch` of `space` for input `x`, all in float64, from the design's formulas.

    `sd` is a static model's or a supernet's state dict (larger tensors are sliced here).
    """
    sd = {k: v.double() for k, v in sd.items()}
    x = x.double()
    x = F.conv2d(x, _w(sd, 'conv_stem.weight', arch.widths[0], x.shape[1], 3), stride=2, padding=1)
    x = _bn(sd, 'bn1', x)
    in_chs = arch.widths[0]
    for si, stage in enumerate(space.stages):
        out_chs, k, t = arch.widths[si + 1], arch.kernel_sizes[si], arch.expand_ratios[si]
        for j in range(arch.depths[si]):
            p = f'blocks.{si}.{j}.'
            stride = stage.stride if j == 0 else 1
            inp = x
            mid = _div8(round(in_chs * t)) if t != 1 else in_chs
            if t != 1:
                x = _bn(sd, p + 'bn1', F.conv2d(x, _w(sd, p + 'conv_pw.weight', mid, in_chs)))
            x = F.conv2d(x, _w(sd, p + 'conv_dw.weight', mid, None, k), stride=stride, padding=k // 2, groups=mid)
            x = _bn(sd, p + 'bn2', x)
            if stage.se:
                rd = _div8(mid // 4)
                s = x.mean((2, 3), keepdim=True)
                s = F.relu(F.conv2d(s, _w(sd, p + 'se.fc1.weight', rd, mid), sd[p + 'se.fc1.bias'][:rd]))
                s = F.conv2d(s, _w(sd, p + 'se.fc2.weight', mid, rd), sd[p + 'se.fc2.bias'][:mid])
                x = x * (F.relu6(s + 3) / 6)  # hard sigmoid
            x = _bn(sd, p + 'bn3', F.conv2d(x, _w(sd, p + 'conv_pwl.weight', out_chs, mid)), act=False)
            sc = inp
            if stride > 1:  # the original: pad 1 (zeros counted) when the size is odd
                sc = F.avg_pool2d(sc, stride, stride, padding=0 if sc.size(-1) % 2 == 0 else 1)
            if in_chs != out_chs:
                sc = F.conv2d(sc, _w(sd, p + 'shortcut.conv.weight', out_chs, in_chs))
            x = x + sc
            in_chs = out_chs
    head = len(space.stages)
    expand = in_chs * space.head_expand_ratio
    x = _bn(sd, f'blocks.{head}.0.bn1', F.conv2d(x, _w(sd, f'blocks.{head}.0.conv.weight', expand, in_chs)))
    x = x.mean((2, 3), keepdim=True)
    x = F.conv2d(x, _w(sd, 'conv_head.weight', arch.widths[-1], expand))
    x = (x * torch.sigmoid(x)).flatten(1)
    return F.linear(x, sd['classifier.weight'][:, :arch.widths[-1]], sd['classifier.bias'])
