"""Latency tables: every distinct layer of a space is timed (checked against brute-force enumeration), a
prediction is the sum of the table's entries, foreign spaces/devices/files are refused, and the CLI works."""
import itertools
import json
import random

import pytest
import torch

from timm_alphanet import SearchSpace, SubnetConfig
from timm_alphanet.cli.latency import main as latency_main
from timm_alphanet.cost import LatencyTable, subnet_ops
from timm_alphanet.cost.latency import (OVERHEAD, LatencyValidation, TimingConfig, _op_calls, build_latency_table,
                                        distinct_ops, op_signature)
from timm_alphanet.models.alphanet import AlphaNet

TINY = {'resolutions': [16, 20], 'first_conv': {'c': [8, 16], 's': 2},
        'mb1': {'c': [8], 'd': [1, 2], 'k': [3], 't': [1], 's': 1},
        'mb2': {'c': [8, 16], 'd': [1, 3], 'k': [3, 5], 't': [2, 3], 's': 2, 'se': True},
        'last_conv': {'c': [24, 32]}, 'head_expand_ratio': 2}
DEEP = {'resolutions': [16], 'first_conv': {'c': [8]},
        'mb1': {'c': [8, 16], 'd': [3, 4], 'k': [3], 't': [1, 2], 's': 2},
        'mb2': {'c': [16, 24], 'd': [1], 'k': [3, 5], 't': [2], 's': 1},
        'mb3': {'c': [16, 24], 'd': [2], 'k': [3], 't': [3], 's': 2, 'se': True}, 'last_conv': {'c': [16]}}
FAST = TimingConfig(warmup=0, repeats=2, trim=0.0)


def _all_archs(space):
    for combo in itertools.product(space.resolutions, *space._choices('widths'), *space._choices('depths'),
                                   *space._choices('kernel_sizes'), *space._choices('expand_ratios')):
        n = space.num_stages
        yield SubnetConfig(combo[0], combo[1:n + 3], combo[n + 3:2 * n + 3], combo[2 * n + 3:3 * n + 3],
                           combo[3 * n + 3:])


@pytest.mark.parametrize('spec', [TINY, DEEP])
def test_distinct_ops_are_every_op_of_every_subnet(spec):
    space = SearchSpace.from_dict(spec)
    brute = {op_signature(op) for arch in _all_archs(space) for op in subnet_ops(arch, space, num_classes=7)}
    assert set(distinct_ops(space, num_classes=7)) == brute


def test_prediction_is_the_sum_of_the_entries():
    space = SearchSpace.from_dict(TINY)
    entries = {}
    for sig in distinct_ops(space, num_classes=5):
        entries[sig] = {'StemOp': 1000.0, 'HeadOp': 100000.0, 'BlockOp': 1.0}[sig.split('(')[0]]
    entries[OVERHEAD] = 0.5
    table = LatencyTable(space, 5, 3, {'type': 'cpu', 'name': 'x', 'threads': 1, 'dtype': 'float32',
                                       'memory_format': 'contiguous', 'batch_size': 1}, FAST, entries)
    for arch in random.Random(0).sample(list(_all_archs(space)), 20):
        assert table.predict(arch) == 101000.5 + sum(arch.depths)


def test_in_context_calls_are_the_model_forward():
    space = SearchSpace.from_dict(DEEP)
    arch = space.sample(random.Random(1))
    model = AlphaNet(arch, space, num_classes=4).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    calls = _op_calls(model, arch)
    assert len(calls) == len(subnet_ops(arch, space, num_classes=4))
    h = x
    for call in calls:
        h = call(h)
    torch.testing.assert_close(h, model(x), rtol=0, atol=0)


def test_built_table_covers_its_space_and_round_trips(tmp_path):
    space = SearchSpace.from_dict(TINY)
    table = build_latency_table(space, threads=1, channels_last=True, num_classes=5, timing=FAST, progress=False)
    assert table.missing() == [] and all(v > 0 for k, v in table.entries.items() if k != OVERHEAD)
    assert table.device['threads'] == 1 and table.device['memory_format'] == 'channels_last'
    assert table.device['dtype'] == 'float32' and table.device['torch'] == torch.__version__
    table.save(tmp_path / 'lut.json')
    loaded = LatencyTable.load(tmp_path / 'lut.json')
    assert loaded.entries == table.entries and loaded.space == space and loaded.timing == FAST
    arch = space.max_config()
    ops = subnet_ops(arch, space, num_classes=5)
    assert loaded.predict(arch) == pytest.approx(sum(table.entries[op_signature(o)] for o in ops)
                                                 + table.entries[OVERHEAD], rel=1e-12)


def test_a_table_for_another_space_or_head_is_refused(tmp_path):
    table = build_latency_table(TINY, threads=1, num_classes=5, timing=FAST, progress=False)
    table.save(tmp_path / 'lut.json')
    table = LatencyTable.load(tmp_path / 'lut.json')
    other = SearchSpace.from_dict({**TINY, 'resolutions': [16, 24]})
    total = len(distinct_ops(other, 5))
    new = len(distinct_ops(SearchSpace.from_dict({**TINY, 'resolutions': [24]}), 5))  # every op at 24 px is new
    with pytest.raises(ValueError, match=rf'lut.json: lacks {new} of the {total} layer signatures of this space '
                                         r'\(5 classes\), e.g. StemOp\(in_chs=3,.*in_hw=24'):
        table.check_covers(other, num_classes=5)
    # 2 last-stage widths x 2 head widths x 2 resolutions: every head op names the classes
    with pytest.raises(ValueError, match=r'lacks 8 of the .* \(10 classes\), e.g. HeadOp\(.*num_classes=10'):
        table.check_covers(table.space, num_classes=10)
    table.check_covers(table.space, num_classes=5)  # its own space passes


def test_bad_files_and_devices_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match='latency table not found'):
        LatencyTable.load(tmp_path / 'none.json')
    (tmp_path / 'a.json').write_text('{"format": "other"}')
    with pytest.raises(ValueError, match=r"a.json: not a latency table \(format 'other'"):
        LatencyTable.load(tmp_path / 'a.json')
    (tmp_path / 'b.json').write_text('{"format": "timm_alphanet.latency/1", "entr')
    with pytest.raises(ValueError, match='b.json: not valid JSON'):
        LatencyTable.load(tmp_path / 'b.json')
    table = build_latency_table(DEEP, threads=1, num_classes=3, timing=FAST, progress=False)
    data = table.to_dict()
    data['entries'][next(iter(data['entries']))]['ms'] = -1
    (tmp_path / 'c.json').write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r'c.json: malformed latency table: entry .* has ms -1'):
        LatencyTable.load(tmp_path / 'c.json')
    table.device['name'] = 'Imaginary NPU 9000'
    with pytest.raises(ValueError, match=r"measured on cpu 'Imaginary NPU 9000'; this machine's cpu is"):
        table.check_device()


def test_validation_metrics_by_hand():
    v = LatencyValidation([None] * 4, predicted=[1.0, 2.0, 3.0, 4.0], measured=[1.0, 2.5, 2.0, 5.0])
    assert v.mape == pytest.approx(100 * (0 + 0.5 / 2.5 + 1 / 2 + 1 / 5) / 4)
    assert v.kendall_tau == pytest.approx((5 - 1) / 6)  # one discordant pair of six


def test_cli_build_and_validate(tmp_path, capsys):
    space_file = tmp_path / 'tiny.yaml'
    SearchSpace.from_dict(DEEP).to_yaml(space_file)
    out = tmp_path / 'lut.json'
    assert latency_main(['build', '--space', str(space_file), '--threads', '1', '--num-classes', '3', '--warmup', '0',
                         '--repeats', '2', '--output', str(out), '--no-progress']) == 0
    assert 'entries' in capsys.readouterr().out and LatencyTable.load(out).num_classes == 3
    assert latency_main(['validate', str(out), '--samples', '3', '--no-progress']) == 0
    text = capsys.readouterr().out
    assert 'MAPE' in text and 'Kendall tau' in text and text.count('| ') >= 3 * 6
    with pytest.raises(SystemExit) as e:
        latency_main(['build', '--space', str(tmp_path / 'none'), '--output', str(out)])
    assert e.value.code == 2
    assert "'alphanet', 'demo'" in capsys.readouterr().err
