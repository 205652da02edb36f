"""pareto.json for export: the reader accepts format 1 and refuses what would export the wrong models (another
supernet, an unknown version, archs outside the space, bad numbers, out-of-range --points)."""
import json
import math
import re

import pytest

from timm_alphanet.calibration import CalibrationRecipe
from timm_alphanet.search import pareto_file
from timm_alphanet.search.pareto_file import select_points
from timm_alphanet.spaces import SearchSpace
from timm_alphanet.testing.pareto import pareto_dict
from timm_alphanet.testing.tiny import TINY_SPACE

SPACE = SearchSpace.from_dict(TINY_SPACE)
SHA = 'ab' * 32
RECIPE = CalibrationRecipe(num_images=32, batch_size=16, seed=5, image_size=24)
ARCHS = [SPACE.min_config(), SPACE.max_config()]


def _write(tmp_path, data, name='pareto.json'):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def read_pareto(path, space, sha):
    """As alphanet-export reads it: the recipe as a CalibrationRecipe."""
    return pareto_file.read_pareto(path, space, sha, CalibrationRecipe.from_dict)


def test_reads_a_format_1_file(tmp_path):
    data = pareto_dict(SPACE, SHA, ARCHS, RECIPE.to_dict(), a_later_key={'ignored': True})
    front = read_pareto(_write(tmp_path, data), SPACE, SHA)
    assert front.format == 1 and front.recipe == RECIPE and front.supernet_sha256 == SHA and front.complete
    assert read_pareto(_write(tmp_path, {**data, 'format': 1}, 'int.json'), SPACE, SHA).format == 1
    assert [p.arch for p in front.points] == ARCHS
    assert front.points[0].latency_ms == 1.5 and front.points[0].latency_device == 'test CPU'
    assert front.points[1].latency_ms is None and front.points[1].top1_val == 50.0
    assert front.selection_split == 'train' and front.report_split == 'validation'
    assert math.isclose(front.points[1].mflops, data['points'][1]['mflops'])


@pytest.mark.parametrize('change, match', [
    ({'format': 'timm_alphanet.pareto/3'}, "unknown pareto.json format 'timm_alphanet.pareto/3'"),
    ({'format': 3}, 'unknown pareto.json format 3'),
    ({'format': '1'}, 'unknown pareto.json format'),
    ({'format': 'other.pareto/1'}, 'unknown pareto.json format'),
    ({'format': True}, 'unknown pareto.json format'),
    ({'supernet': {'sha256': 'cd' * 32}}, 'made from another supernet'),
    ({'supernet': {'sha256': 'not a hash'}}, 'no valid supernet sha256'),
    ({'calibration': {'num_image': 3}}, 'bad calibration recipe.*num_image'),
    ({'calibration': None}, 'no calibration recipe'),
    ({'points': []}, 'non-empty list'),
])
def test_refuses_bad_files(tmp_path, change, match):
    data = pareto_dict(SPACE, SHA, ARCHS, RECIPE.to_dict(), **change)
    with pytest.raises(ValueError, match=match):
        read_pareto(_write(tmp_path, data), SPACE, SHA)


def test_refuses_points_outside_the_space_naming_point_gene_and_allowed_values(tmp_path):
    data = pareto_dict(SPACE, SHA, ARCHS, RECIPE.to_dict())
    data['points'][1]['arch']['kernel_size'] = [3, 7]
    with pytest.raises(ValueError, match=r'point 1: .*kernel_sizes\[1\] \(mb2\) = 7 not allowed; allowed: \[3, 5\]'):
        read_pareto(_write(tmp_path, data), SPACE, SHA)
    for bad in (101.0, float('nan'), '75'):
        data = pareto_dict(SPACE, SHA, ARCHS, RECIPE.to_dict())
        data['points'][0]['top1'] = bad
        with pytest.raises(ValueError, match='point 0: top1 must be a finite number'):
            read_pareto(_write(tmp_path, data), SPACE, SHA)
    other = SearchSpace.from_dict({**TINY_SPACE, 'resolutions': [16, 24, 32]})
    with pytest.raises(ValueError, match='search space differs'):
        read_pareto(_write(tmp_path, pareto_dict(SPACE, SHA, ARCHS, RECIPE.to_dict())), other, SHA)


def test_refuses_missing_huge_and_non_json_files(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError):
        read_pareto(tmp_path / 'nope.json', SPACE, SHA)
    (tmp_path / 'bad.json').write_text('{"format": 1,')
    with pytest.raises(ValueError, match='not valid JSON'):
        read_pareto(tmp_path / 'bad.json', SPACE, SHA)
    monkeypatch.setattr(pareto_file, 'MAX_PARETO_BYTES', 10)
    with pytest.raises(ValueError, match='too large'):
        read_pareto(_write(tmp_path, pareto_dict(SPACE, SHA, ARCHS, RECIPE.to_dict())), SPACE, SHA)


def test_select_points(tmp_path):
    front = read_pareto(_write(tmp_path, pareto_dict(SPACE, SHA, ARCHS * 3, RECIPE.to_dict())), SPACE, SHA)
    assert [p.index for p in select_points(front, 'all')] == [0, 1, 2, 3, 4, 5]
    assert [p.index for p in select_points(front, '5, 0,3,0')] == [5, 0, 3]
    with pytest.raises(ValueError, match='index 6 out of range.*6 points \\(0..5\\)'):
        select_points(front, '0,6')
    with pytest.raises(ValueError, match="'x' is not an index"):
        select_points(front, 'x')


@pytest.mark.parametrize('text', ['[' * 100_000, '{"points": ' * 50_000 + '[]' + '}' * 50_000,
                                  '{"format": 1, "x": ' + '[' * 70 + ']' * 70 + '}'])
def test_deeply_nested_files_are_refused_in_one_line(tmp_path, text):
    (tmp_path / 'deep.json').write_text(text)
    start = re.escape(str(tmp_path / 'deep.json'))
    with pytest.raises(ValueError, match=rf'^{start}: (nested deeper than 64 levels|not valid JSON)'):
        read_pareto(tmp_path / 'deep.json', SPACE, SHA)


def test_the_file_sha256_is_of_the_bytes_read(tmp_path):
    import hashlib
    path = _write(tmp_path, pareto_dict(SPACE, SHA, ARCHS, RECIPE.to_dict()))
    assert read_pareto(path, SPACE, SHA).file_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_alphanet_export_refuses_a_deep_pareto_json_with_exit_2(tmp_path, capsys):
    import timm
    from timm_alphanet import save_pretrained
    from timm_alphanet.cli.export import main as export_main
    save_pretrained(timm.create_model('alphanet_supernet', space=TINY_SPACE, num_classes=4), tmp_path / 'supernet')
    (tmp_path / 'pareto.json').write_text('[' * 100_000)
    with pytest.raises(SystemExit) as e:
        export_main([str(tmp_path / 'supernet'), '--pareto', str(tmp_path / 'pareto.json'), '--output',
                     str(tmp_path / 'out'), '--no-calib', '--device', 'cpu', '--no-progress'])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    assert 'pareto.json: nested deeper than 64 levels' in err
