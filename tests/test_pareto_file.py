"""pareto.json's one module: what the writer writes the reader reads back; the reader refuses an unknown format,
an oversized or deeply nested file with one line naming the file; a resume names what differs; the format tag lives
in one place; and the one front plot labels a narrow MFLOPs range with distinct ticks."""
import json
import re
from pathlib import Path

import pytest

from timm_alphanet.calibration import CalibrationRecipe
from timm_alphanet.search import EvolutionConfig, Limits, pareto_file
from timm_alphanet.search.pareto_file import (
    FORMAT, FORMAT_NAME, check_resume, fingerprint_differences, front_point, pareto_document, pareto_header,
    progress_record, read_pareto, read_pareto_file, resume_fingerprint, write_pareto,
)
from timm_alphanet.search.pareto_report import front_figure, plot_front
from timm_alphanet.spaces import SearchSpace
from timm_alphanet.testing.tiny import TINY_SPACE

SPACE = SearchSpace.from_dict(TINY_SPACE)
SHA = 'ab' * 32
RECIPE = CalibrationRecipe(num_images=32, batch_size=16, seed=5, image_size=24)
PKG = Path(__file__).resolve().parent.parent / 'timm_alphanet'


def _header(**change):
    args = dict(supernet={'spec': 'runs/supernet', 'kind': 'local-dir', 'sha256': SHA}, dataset='sklearn/digits',
                space=SPACE.to_dict(), num_classes=10, objectives=('top1', 'mflops'), limits=Limits().to_dict(),
                search={**EvolutionConfig(population=8, generations=2).to_dict(), 'predictor': False},
                calibration=RECIPE.to_dict(), selection_images=64, batch_size=32, validation=('validation', 355),
                latency=None)
    return pareto_header(**{**args, **change})


def _document(header=None):
    records = [{'arch': a, 'mflops': m, 'params_m': 0.1, 'latency_ms': None, 'top1': t}
               for a, m, t in ((SPACE.min_config(), 0.5, 50.0), (SPACE.max_config(), 1.5, 60.25))]
    points = [front_point(r, top1_val=40.0 + i, latency_device=None, selection_images=64)
              for i, r in enumerate(records)]
    return pareto_document(header or _header(), points, progress_record(2, 2, 16, True))


def _one_line_naming(e, path):
    message = str(e.value)
    assert '\n' not in message and message.startswith(str(path)), message
    return message


def test_the_written_tag_is_the_one_files_in_the_wild_carry():
    assert FORMAT == 'timm_alphanet.pareto/2'


def test_the_format_tag_is_spelled_in_one_module():
    tag = re.compile(r'timm_alphanet\.pareto\b(?!_)')
    holders = sorted(str(p.relative_to(PKG)) for p in PKG.rglob('*.py') if tag.search(p.read_text()))
    assert holders == ['search/pareto_file.py']


def test_round_trip_writer_to_reader(tmp_path):
    doc = _document()
    path = tmp_path / 'pareto.json'
    write_pareto(path, doc)
    read = read_pareto_file(path)
    assert read.document == json.loads(json.dumps(doc)) and read.version == 2
    front = read_pareto(path, SPACE, SHA, CalibrationRecipe.from_dict)
    assert front.recipe == RECIPE and front.format == 2 and front.file_sha256 == read.sha256
    assert [p.arch for p in front.points] == [SPACE.min_config(), SPACE.max_config()]
    assert [p.record()['top1'] for p in front.points] == [50.0, 60.25]
    assert front.selection_split == 'train' and front.report_split == 'validation' and front.complete
    assert front.objectives == ('top1', 'mflops') and front.supernet['spec'] == 'runs/supernet'
    assert read_pareto(path, SPACE).recipe == RECIPE.to_dict()  # without a recipe reader: the mapping


@pytest.mark.parametrize('tag, shown', [('timm_alphanet.pareto/3', "'timm_alphanet.pareto/3'"), (3, '3'),
                                        ('other.pareto/1', "'other.pareto/1'"), (None, 'None'), (True, 'True')])
def test_an_unknown_format_tag_is_refused_in_one_line_naming_the_file(tmp_path, tag, shown):
    path = tmp_path / 'pareto.json'
    path.write_text(json.dumps({**_document(), 'format': tag}))
    for read in (read_pareto_file, lambda p: read_pareto(p, SPACE, SHA), lambda p: check_resume(p, _header())):
        with pytest.raises(ValueError) as e:
            read(path)
        message = _one_line_naming(e, path)
        assert f'unknown pareto.json format {shown}; this version reads format {FORMAT_NAME}/1, {FORMAT}' in message


def test_an_oversized_file_is_refused_before_parsing(tmp_path, monkeypatch):
    path = tmp_path / 'pareto.json'
    write_pareto(path, _document())
    monkeypatch.setattr(pareto_file, 'MAX_PARETO_BYTES', 100)
    with pytest.raises(ValueError) as e:
        read_pareto_file(path)
    assert 'too large for a pareto.json' in _one_line_naming(e, path) and 'at most 100' in str(e.value)
    monkeypatch.setattr(pareto_file, 'MAX_PARETO_BYTES', 64 << 20)
    monkeypatch.setattr(pareto_file, 'MAX_PARETO_NODES', 50)
    with pytest.raises(ValueError) as e:
        read_pareto_file(path)
    assert 'more than 50 values' in _one_line_naming(e, path)


@pytest.mark.parametrize('text', ['[' * 100_000, '{"format": 1, "x": ' + '[' * 70 + ']' * 70 + '}'])
def test_deep_nesting_is_refused_in_one_line_naming_the_file(tmp_path, text):
    path = tmp_path / 'pareto.json'
    path.write_text(text)
    with pytest.raises(ValueError) as e:
        read_pareto_file(path)
    assert re.search(r': (nested deeper than 64 levels|not valid JSON)', _one_line_naming(e, path))


@pytest.mark.parametrize('text, match', [('[]', 'expected a JSON object, got list'),
                                         ('{"format": 1,', 'not valid JSON')])
def test_other_unreadable_files(tmp_path, text, match):
    path = tmp_path / 'pareto.json'
    path.write_text(text)
    with pytest.raises(ValueError) as e:
        read_pareto_file(path)
    assert match in _one_line_naming(e, path)
    with pytest.raises(FileNotFoundError):
        read_pareto_file(tmp_path / 'missing.json')


def test_resume_accepts_the_same_search_with_more_generations(tmp_path):
    path = tmp_path / 'pareto.json'
    write_pareto(path, _document())
    more = _header(search={**EvolutionConfig(population=8, generations=5).to_dict(), 'predictor': False})
    assert check_resume(path, more).document['progress']['generations'] == 2


def test_resume_names_every_difference(tmp_path):
    path = tmp_path / 'pareto.json'
    write_pareto(path, _document())
    other = _header(supernet={'sha256': 'cd' * 32}, search={**EvolutionConfig(population=8, seed=1).to_dict(),
                                                             'predictor': False})
    with pytest.raises(ValueError) as e:
        check_resume(path, other)
    message = _one_line_naming(e, f'cannot resume {path}')
    assert 'it records a different search: ' in message
    assert 'search.seed (0 there, 1 here); supernet.sha256 (abababab' in message and 'cdcdcdcd' in message
    many = _header(num_classes=3, objectives=('top1', 'params'), selection_images=1, batch_size=1,
                   calibration=CalibrationRecipe(num_images=2, image_size=8).to_dict(), supernet={'sha256': '0' * 64})
    with pytest.raises(ValueError, match=r' \(\+\d+ more\)$'):
        check_resume(path, many)


def test_resume_refuses_a_file_without_the_header(tmp_path):
    path = tmp_path / 'pareto.json'
    doc = _document()
    del doc['selection']
    write_pareto(path, doc)
    with pytest.raises(ValueError) as e:
        check_resume(path, _header())
    assert "not a readable pareto.json (KeyError: 'selection'); cannot resume from it" in _one_line_naming(e, path)


def test_fingerprint_and_differences():
    old = resume_fingerprint(_header())
    assert 'generations' not in old['search'] and old['supernet.sha256'] == SHA
    assert fingerprint_differences(old, old) == []
    assert fingerprint_differences({'a': {'b': 1, 'c': 2}}, {'a': {'b': 1, 'c': 3, 'd': 4}}) == [
        'a.c (2 there, 3 here)', 'a.d (None there, 4 here)']


def _tick_labels(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig).draw()
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    return [t.get_text() for t in ax.get_xticklabels() if lo <= t.get_position()[0] <= hi]


def test_the_plot_labels_a_narrow_mflops_range_with_distinct_ticks():
    # the hand-written SVG this plot replaced labelled both ends of such a front '0'
    points = [{'top1': 60.0 + 40 * (m - 0.2), 'mflops': m} for m in (0.20, 0.21, 0.23, 0.25)]
    labels = _tick_labels(front_figure(points, ('top1', 'mflops')))
    assert len(labels) >= 3 and len(set(labels)) == len(labels) and all(labels), labels
    values = [float(t.replace('\u2212', '-')) for t in labels]  # no offset: the labels are the MFLOPs themselves
    assert all(0.19 <= v <= 0.26 for v in values), labels


def test_the_plot_marks_the_exported_point_and_shows_text_as_given():
    points = [{'top1': 50.0, 'mflops': 1.0}, {'top1': 70.0, 'mflops': 2.0, 'latency_ms': None}, {'top1': None,
                                                                                                  'mflops': 3.0}]
    fig = front_figure(points, ('top1', 'mflops', 'latency'), highlight=1, title='runs/$x$_1 {bad $\\frac',
                       top1_label='top-1 on the $y selection images (%)')
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert 'this model (point 1)' in legend and 'Pareto front (2)' in legend  # the point without top-1 is left out
    assert len(fig.axes) == 2 and fig.axes[1].get_legend().get_texts()[0].get_text() == 'Pareto front (0)'
    png = plot_front(points, ('top1', 'mflops'), highlight=1, title='runs/$x$_1 {bad $\\frac')  # draws: no formula
    assert png[:8] == b'\x89PNG\r\n\x1a\n'


# ---- the writer refuses what the reader refuses; candidates.jsonl is bounded like pareto.json

@pytest.mark.parametrize('field, value', [('top1', 150.0), ('top1', -1.0), ('top1_val', 100.5),
                                          ('mflops', float('nan')), ('params_m', -0.1)])
def test_the_writer_refuses_a_point_the_reader_would_refuse(tmp_path, field, value):
    """A top-1 of 150 % was written into pareto.json (and refused only by export); now front_point and write_pareto
    refuse it with the reader's own check (`point_numbers`) and nothing is written."""
    record = {'arch': SPACE.min_config(), 'mflops': 0.5, 'params_m': 0.1, 'latency_ms': None, 'top1': 50.0}
    top1_val = value if field == 'top1_val' else 40.0
    with pytest.raises(ValueError, match=rf'^front point .*: {field} must be a finite number in \[0, '):
        front_point({**record, field: value} if field != 'top1_val' else record, top1_val, None)
    doc = _document()
    doc['points'][1][field] = value
    path = tmp_path / 'pareto.json'
    with pytest.raises(ValueError, match=rf'^\S*pareto.json: point 1: {field} must be a finite number in \[0, '):
        write_pareto(path, doc)
    assert not path.exists()
    # what the reader says of the same point, written by hand
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=rf'point 1: {field} must be a finite number in \[0, '):
        read_pareto(path, SPACE)
    assert pareto_file.check_top1(100, 'top1') == 100.0 and pareto_file.check_top1(0, 'top1') == 0.0


def _candidates(tmp_path, *lines):
    from timm_alphanet.search.candidates import validation_line, selection_line
    good = [selection_line(SPACE.min_config(), 50.0, {'mflops': 0.5}, 0, 0, 0.1),
            validation_line(SPACE.min_config(), 40.0, 'validation', 355)]
    path = tmp_path / 'candidates.jsonl'
    path.write_text(''.join(json.dumps(r) + '\n' for r in good) + ''.join(line + '\n' for line in lines))
    return path


def test_forged_candidate_lines_are_skipped_with_a_warning(tmp_path):
    """A deeply nested line (RecursionError), val_images 1e400 (OverflowError) and a top-1 of 150 % crashed
    --resume with a traceback; each is skipped with a warning naming the line, the good lines are kept."""
    from timm_alphanet.search.candidates import read_candidates
    arch = pareto_file.arch_json(SPACE.max_config())
    forged = ['[' * 30000 + ']' * 30000,
              '{"a":' * 100 + '1' + '}' * 100,
              json.dumps({'kind': 'validation', 'arch': arch, 'top1_val': 40.0, 'val_split': 'validation',
                          'val_images': 1}).replace('"val_images": 1', '"val_images": 1e400'),
              json.dumps({'kind': 'selection', 'arch': arch, 'top1': 150.0}),
              json.dumps({'kind': 'validation', 'arch': arch, 'top1_val': -3, 'val_split': 'validation',
                          'val_images': 355}),
              json.dumps({'kind': 'validation', 'arch': arch, 'top1_val': 40.0, 'val_split': ['x'],
                          'val_images': 355}),
              json.dumps([1, 2])]
    path = _candidates(tmp_path, *forged)
    warnings = []
    selection, validation = read_candidates(str(path), SPACE, warnings.append)
    assert list(selection) == [SPACE.min_config()] and selection[SPACE.min_config()]['top1'] == 50.0
    assert validation == {(SPACE.min_config(), 'validation', 355): 40.0}
    assert len(warnings) == len(forged), warnings
    for number, (warning, needle) in enumerate(zip(warnings, (
            'nested deeper than 64 levels', 'nested deeper than 64 levels',
            'val_images must be an integer in [0, 1099511627776], got inf',
            'top1 must be a finite number in [0, 100], got 150.0',
            'top1_val must be a finite number in [0, 100], got -3',
            "val_split must be a split name", 'a line must be a JSON object, got a list')), start=3):
        assert warning.startswith(f'{path}: line {number} skipped (') and needle in warning, warning
        assert '\n' not in warning


def test_an_oversized_candidates_file_is_refused_in_one_line(tmp_path, monkeypatch):
    from timm_alphanet.search import candidates
    path = _candidates(tmp_path)
    size = path.stat().st_size
    monkeypatch.setattr(candidates, 'MAX_CANDIDATES_BYTES', size - 1)
    with pytest.raises(ValueError, match=rf'^\S*candidates.jsonl: {size} bytes, over the limit of {size - 1} bytes '
                                         r'\(MAX_CANDIDATES_BYTES\)') as e:
        candidates.read_candidates(str(path), SPACE, lambda m: pytest.fail(m))
    assert '\n' not in str(e.value)
    monkeypatch.setattr(candidates, 'MAX_CANDIDATES_BYTES', size)
    assert len(candidates.read_candidates(str(path), SPACE, lambda m: pytest.fail(m))[0]) == 1


# ---- uncertainty: the Wilson interval of each point's top-1 on the selection images
@pytest.mark.parametrize('k, n', [(0, 1), (1, 1), (0, 10), (10, 10), (3, 10), (130, 144), (72, 144), (1, 5000),
                                  (4321, 5000), (999_999, 1_000_000)])
def test_wilson_interval_matches_scipy(k, n):
    stats = pytest.importorskip('scipy.stats')
    ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method='wilson')
    low, high = pareto_file.wilson_interval(k, n)
    assert low == pytest.approx(float(ref.low), abs=1e-12) and high == pytest.approx(float(ref.high), abs=1e-12)


def test_wilson_interval_golden_values():
    """Closed forms of the Wilson bounds at the edges, z = 1.959963984540054 (norm.ppf(0.975)), z^2 =
    3.841458820694124: with no success the upper bound is z^2 / (n + z^2), with all successes the lower bound is
    n / (n + z^2); for n = 10 these are 3.8414588/13.8414588 = 0.2775327998628892 and 10/13.8414588 =
    0.7224672001371108. A Wald interval would give [0, 0] and [1, 1] there."""
    assert pareto_file.wilson_interval(0, 10) == (0.0, pytest.approx(0.2775327998628892, abs=1e-15))
    assert pareto_file.wilson_interval(10, 10) == pytest.approx((0.7224672001371108, 1.0), abs=1e-15)
    # in %, from a score: 130 of 144 = 90.2777...%, [84.34, 94.12] (scipy.stats.binomtest(130, 144), Wilson)
    low, high = pareto_file.top1_interval(100 * 130 / 144, 144)
    assert low == pytest.approx(84.34233449655235, abs=1e-9) and high == pytest.approx(94.12009473359191, abs=1e-9)
    # more images, a narrower interval around the same top-1
    low2, high2 = pareto_file.top1_interval(90.0, 5000)
    assert high2 - low2 < (high - low) / 4 and low2 < 90.0 < high2


@pytest.mark.parametrize('k, n, match', [(1, 0, 'trials must be an integer in'), (-1, 5, 'successes must be'),
                                         (6, 5, 'successes must be'), (1.0, 5, 'successes must be'),
                                         (True, 5, 'successes must be')])
def test_wilson_interval_refuses_bad_counts(k, n, match):
    with pytest.raises(ValueError, match=match):
        pareto_file.wilson_interval(k, n)


def test_points_carry_their_interval_and_the_reader_reads_it(tmp_path):
    doc = _document()
    for p in doc['points']:
        low, high = p['top1_ci']
        assert low < p['top1'] < high and (low, high) == pareto_file.top1_interval(p['top1'], 64)
    assert doc['intervals']['num_images'] == 64 and doc['intervals']['confidence'] == 0.95
    path = tmp_path / 'pareto.json'
    write_pareto(path, doc)
    front = read_pareto(path, SPACE, SHA)
    assert [pt.top1_ci for pt in front.points] == [tuple(p['top1_ci']) for p in doc['points']]
    assert front.points[0].record()['top1_ci'] == front.points[0].top1_ci


def test_a_version_1_file_is_still_read_without_intervals(tmp_path):
    from timm_alphanet.testing.pareto import pareto_dict
    path = tmp_path / 'pareto.json'
    path.write_text(json.dumps(pareto_dict(SPACE, SHA, [SPACE.min_config(), SPACE.max_config()], RECIPE.to_dict())))
    front = read_pareto(path, SPACE, SHA)
    assert front.format == 1 and [pt.top1_ci for pt in front.points] == [None, None]


@pytest.mark.parametrize('value, match', [([10.0, 20.0], 'low <= top1 <= high'), ([60.0, 40.0], 'low <= top1'),
                                          ([40.0, 101.0], r'finite number in \[0, 100\]'), ([40.0], r'\[low, high\]'),
                                          ('40-60', r'\[low, high\]')])
def test_the_writer_and_reader_refuse_a_bad_interval(tmp_path, value, match):
    doc = _document()
    doc['points'][0]['top1_ci'] = value  # point 0 has top1 50
    path = tmp_path / 'pareto.json'
    with pytest.raises(ValueError, match=rf'point 0: top1_ci .*{match}|point 0: top1_ci must'):
        write_pareto(path, doc)
    assert not path.exists()
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match='point 0: top1_ci'):
        read_pareto(path, SPACE)


def test_unseparated_neighbours_are_named_in_the_report():
    from timm_alphanet.search.pareto_report import pareto_report, separation_note
    doc = _document()
    # 50 and 60.25 % on 64 images: intervals of about +-12 points overlap
    assert pareto_file.unseparated_neighbours(doc['points']) == [(0, 1)]
    note = separation_note(doc)
    assert 'too small to separate 1 of 1 neighbouring pairs' in note and '0-1' in note and '64 images' in note
    report = pareto_report(doc)
    assert note in report and '95 % CI' in report
    low, high = doc['points'][1]['top1_ci']
    assert f'| {low:.1f}-{high:.1f} |' in report
    # far apart on many images: separated, and the report says so
    header = _header(selection_images=5000)
    records = [{'arch': a, 'mflops': m, 'params_m': 0.1, 'latency_ms': None, 'top1': t}
               for a, m, t in ((SPACE.min_config(), 0.5, 50.0), (SPACE.max_config(), 1.5, 60.0))]
    far = pareto_document(header, [front_point(r, None, None, 5000) for r in records], progress_record(2, 2, 16, True))
    assert pareto_file.unseparated_neighbours(far['points']) == []
    assert 'do not overlap' in separation_note(far)


def test_the_plot_draws_the_intervals_as_error_bars():
    pytest.importorskip('matplotlib')
    doc = _document()
    fig = front_figure(doc['points'])
    ax = fig.axes[0]
    bars = [c for c in ax.containers if type(c).__name__ == 'ErrorbarContainer']
    assert len(bars) == 1
    segments = bars[0].lines[2][0].get_segments()
    spans = sorted(float(y) for s in segments for y in (s[0][1], s[1][1]))
    assert spans == pytest.approx(sorted(y for p in doc['points'] for y in p['top1_ci']))
