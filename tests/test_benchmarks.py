"""benchmarks/: the shared timing helper (order, warm-up, setup outside the timing, device sync; on a fake clock) and
a tiny run_all.py (the CI smoke test) whose report agrees with what each benchmark measured."""
import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / 'benchmarks'


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def fake_clock(monkeypatch):
    timing = _load('_timing')
    clock = {'now': 0.0}
    monkeypatch.setattr(timing.time, 'perf_counter', lambda: clock['now'])
    return timing, clock


def test_variants_interleave_in_rotating_order_after_warmup(fake_clock):
    timing, clock = fake_clock
    calls = []

    def variant(name, seconds):
        def fn():
            calls.append(name)
            clock['now'] += seconds
        return fn
    times = timing.time_interleaved({'a': variant('a', 1.0), 'b': variant('b', 3.0), 'c': variant('c', 0.5)},
                                    repeats=3, warmup=2)
    assert calls == ['a', 'b', 'c', 'b', 'c', 'a', 'c', 'a', 'b', 'a', 'b', 'c', 'b', 'c', 'a']
    assert times == {'a': [1.0] * 3, 'b': [3.0] * 3, 'c': [0.5] * 3}  # warm-up rounds are not in the samples


def test_setup_runs_outside_the_timing_and_number_averages(fake_clock):
    timing, clock = fake_clock

    def setup(name):
        clock['now'] += 100.0  # must not count
        return 2.0 if name == 'slow' else 1.0

    def fn(seconds):
        clock['now'] += seconds
    times = timing.time_interleaved({'fast': fn, 'slow': fn}, repeats=2, warmup=0, number=4, setup=setup)
    assert times == {'fast': [1.0, 1.0], 'slow': [2.0, 2.0]}
    assert timing.median_seconds(lambda: fn(0.25), repeats=5) == 0.25
    with pytest.raises(ValueError, match='repeats'):
        timing.time_interleaved({'a': lambda: None}, repeats=0)


def test_gpu_timing_syncs_before_and_after_every_call(fake_clock, monkeypatch):
    timing, clock = fake_clock
    events = []
    monkeypatch.setattr(timing.torch.cuda, 'synchronize', lambda device=None: events.append(('sync', str(device))))
    timing.time_interleaved({'a': lambda: events.append('a')}, repeats=2, warmup=1, device='cuda:0')
    assert events == [('sync', 'cuda:0'), 'a', ('sync', 'cuda:0')] * 3
    events.clear()
    assert timing.timed(lambda: events.append('b') or 7, 'cpu') == (7, 0.0)
    assert events == ['b']  # no sync on CPU


def test_every_benchmark_uses_the_shared_helper_writes_json_and_is_known_to_run_all():
    run_all = _load('run_all')
    scripts = sorted(p for p in BENCH.glob('*.py') if not p.name.startswith('_') and p.stem != 'run_all')
    assert scripts
    for path in scripts:
        tree = ast.parse(path.read_text())
        imported = {(node.module, a.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    for a in node.names}
        assert any(module == '_timing' for module, _ in imported), f'{path.name} does not time with _timing'
        assert ('_results', 'add_json_argument') in imported, f'{path.name} has no --json'
        assert not any(isinstance(n, ast.Attribute) and n.attr == 'perf_counter' for n in ast.walk(tree)), \
            f'{path.name} times by hand'
        assert path.stem in run_all.BENCHMARKS, f'run_all.py has no small defaults for {path.name}'


def test_tiny_run_all_report_agrees_with_each_benchmark(tmp_path):
    p = subprocess.run([sys.executable, str(BENCH / 'run_all.py'), '--size', 'tiny', '--only', 'loss', 'inference',
                        '--threads', '1', '--output-dir', str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    report = json.loads((tmp_path / 'report.json').read_text())
    md = (tmp_path / 'report.md').read_text()
    machine = report['machine']
    import timm
    import torch
    assert (machine['torch'], machine['timm'], machine['torch_threads']) == (torch.__version__, timm.__version__, 1)
    assert machine['cpu'] in md and f"torch {torch.__version__}" in md
    by_name = {b['benchmark']: b for b in report['benchmarks']}
    assert set(by_name) == {'loss', 'inference'}

    loss = by_name['loss']  # the ratios are the benchmark's own medians, divided
    med = loss['details']['median_s']
    assert set(loss['ratios']) == {f'{n} / kl (median fwd+bwd)' for n in med if n != 'kl'}
    for name, value in loss['ratios'].items():
        assert value == pytest.approx(med[name.split(' / ')[0]] / med['kl'])
    inference = by_name['inference']
    assert set(inference['ratios']) == {'alphanet_a0 / mobilenetv3_large_100 (best img/s, 192 px)',
                                        'alphanet_a0 / efficientnet_b0 (best img/s, 192 px)'}
    rows = inference['details']
    for baseline in ('mobilenetv3_large_100', 'efficientnet_b0'):
        best = lambda r: max(r['eager'], r['channels_last'])  # noqa: E731 (tiny run: no compile)
        assert inference['ratios'][f'alphanet_a0 / {baseline} (best img/s, 192 px)'] == pytest.approx(
            best(rows['alphanet_a0@192']) / best(rows[f'{baseline}@192']))
    for b in report['benchmarks']:  # the markdown shows every command and ratio of the JSON
        assert b['returncode'] == 0 and f"`{b['command']}`" in md
        assert b['command'].startswith(f"python benchmarks/{b['benchmark']}.py ")
        for name, value in b['ratios'].items():
            assert f'| {name} | {value:.3f} |' in md


@pytest.mark.parametrize('size', ['small', 'tiny'])
def test_run_all_search_sizes_are_populations_the_search_accepts(size):
    """run_all's search arguments go to EvolutionConfig(population=...): each must pass its own check."""
    from timm_alphanet.search import EvolutionConfig
    args = _load('run_all').BENCHMARKS['search'][size]
    counts = [int(n) for n in args[args.index('--candidates') + 1:]]
    assert len(counts) == len(args[args.index('--spaces') + 1:args.index('--candidates')])  # one per space
    for n in counts:  # raises ValueError below the search's minimum
        assert EvolutionConfig(population=n, generations=0).population == n


def test_gpu_check_smoke_prints_every_variant_and_the_host_reads(tmp_path):
    """benchmarks/gpu_check.py --smoke (demo space, batch 4, 2 steps; on CPU here): a row per variant, none failed,
    host reads per step (the trainer reads the device once per step, the bare sandwich loop never)."""
    out = tmp_path / 'gpu_check.json'
    p = subprocess.run([sys.executable, str(BENCH / 'gpu_check.py'), '--smoke', '--threads', '1', '--json', str(out)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    gpu_check = _load('gpu_check')
    rows = {line.split('|')[1].strip(): line for line in p.stdout.splitlines() if line.startswith('| ')}
    for name in gpu_check.VARIANTS:
        assert name in rows and 'error' not in rows[name], (name, p.stdout[-3000:])
    assert '| host reads/step |' in p.stdout
    assert "compile_task compiles the supernet's BN + activation layers" in p.stdout
    assert str(ROOT) not in p.stdout  # no local path
    data = json.loads(out.read_text())
    variants = data['details']['variants']
    assert variants['trainer bf16+CL (train_one_epoch)']['host_reads_per_step'] > 0
    assert variants['bare loop bf16+CL']['host_reads_per_step'] == 0
    assert all(v['error'] is None and v['s_per_step'] > 0 for v in variants.values())
    assert {'trainer / bare loop (s per step: trainer overhead)',
            'supernet / static x4 (s per step: weight-sharing overhead)'} <= set(data['ratios'])


def test_op_shares_sorts_ops_by_kind_and_sums_to_100():
    tt = _load('train_throughput')
    shares = tt.op_shares({'aten::convolution_backward': 45.0, 'aten::mkldnn_convolution': 15.0,
                           'aten::native_batch_norm_backward': 8.0, 'aten::native_batch_norm': 6.0,
                           'aten::silu_backward': 6.0, 'aten::silu_': 4.0, 'aten::copy_': 4.0, 'aten::add_': 12.0})
    assert shares == {'convolution backward': 45.0, 'convolution forward': 15.0, 'batch norm': 14.0,
                      'activation': 10.0, 'copies': 4.0, 'rest': 12.0}


def test_profile_of_a_convolution_step_names_its_convolutions():
    import torch
    tt = _load('train_throughput')
    conv = torch.nn.Conv2d(3, 8, 3)
    x = torch.randn(2, 3, 16, 16)
    shares = tt._profile(lambda: conv(x).sum().backward(), 2)
    assert abs(sum(shares.values()) - 100.0) < 1e-6
    assert shares['convolution backward'] > 0 and shares['convolution forward'] > 0 and shares['batch norm'] == 0
