"""The `Space` protocol: both spaces follow it, and `resolve` is one arch grammar for both (names, dicts, JSON text,
arch files; widths only in a width space, paper names only in an AlphaNet space), refusing with the allowed values."""
import json
import random

import pytest
import yaml

from timm_alphanet.archs import ALPHANET_ARCHS, ALPHANET_SPACE, resolve_arch
from timm_alphanet.spaces import SearchSpace, Space, SubnetConfig, WidthConfig, WidthSpace, width_range

WIDTHS = WidthSpace(width_range(0.35, 1.0))
TWO_RESOLUTIONS = WidthSpace((0.5, 1.0), (160, 224))


def test_both_spaces_follow_the_protocol_and_nothing_else_does():
    assert isinstance(WIDTHS, Space) and isinstance(ALPHANET_SPACE, Space)
    assert not isinstance(WIDTHS.max_config(), Space) and not isinstance({'widths': [1.0]}, Space)
    rng = random.Random(0)
    for space in (WIDTHS, TWO_RESOLUTIONS, ALPHANET_SPACE):
        arch = space.sample(rng)
        assert space.contains(arch) and space.resolve(arch) == arch == space.validate(arch.to_dict())
        assert space.contains(space.mutate(arch, rng, 1.0, None)) and space.contains(space.crossover(arch, arch, rng))
        assert space.resolve('max') == space.max_config() and space.resolve(' min ') == space.min_config()
        assert type(space).from_dict(json.loads(json.dumps(space.to_dict()))) == space


def test_width_space_mutation_resolution_prob_none_means_prob_as_in_search_space():
    arch = TWO_RESOLUTIONS.min_config()
    for seed in range(5):
        a = TWO_RESOLUTIONS.mutate(arch, random.Random(seed), 0.3, None)
        assert a == TWO_RESOLUTIONS.mutate(arch, random.Random(seed), 0.3, 0.3)


@pytest.mark.parametrize('spec', [0.35, '0.35', ' 0.350 ', '{width: 0.35, resolution: 224}',
                                  '{"width": 0.35, "resolution": 224}', {'width': 0.35, 'resolution': 224},
                                  WidthConfig(0.35, 224), '{arch: {width: 0.35, resolution: 224}}'])
def test_width_space_resolves_widths_given_every_way(spec):
    assert WIDTHS.resolve(spec) == WidthConfig(0.35, 224) and WIDTHS.label(WIDTHS.resolve(spec)) == 'w0.35'


def test_arch_files_resolve_alike_in_both_spaces(tmp_path):
    (tmp_path / 'w.json').write_text(json.dumps({'arch': {'width': 0.5, 'resolution': 224}}))  # a pareto point
    (tmp_path / 'w.yaml').write_text(yaml.safe_dump({'width': 0.5, 'resolution': 224}))
    (tmp_path / 'config.json').write_text(json.dumps({'model_args': {'arch': {'width': 0.5, 'resolution': 224}}}))
    for name in ('w.json', 'w.yaml', 'config.json'):
        assert WIDTHS.resolve(str(tmp_path / name)) == WidthConfig(0.5, 224)
        assert WIDTHS.resolve(tmp_path / name) == WidthConfig(0.5, 224)
    a3 = ALPHANET_ARCHS['a3']
    (tmp_path / 'a3.json').write_text(json.dumps({'arch': a3.to_dict()}))
    assert ALPHANET_SPACE.resolve(str(tmp_path / 'a3.json')) == a3 == ALPHANET_SPACE.resolve('alphanet_a3')
    with pytest.raises(FileNotFoundError):
        WIDTHS.resolve(str(tmp_path / 'missing.json'))
    (tmp_path / 'bad.json').write_text(json.dumps({'width': 0.6123, 'resolution': 224}))
    with pytest.raises(ValueError, match=r'bad\.json: .*width 0\.6123 not allowed; allowed: \[0\.35'):
        WIDTHS.resolve(str(tmp_path / 'bad.json'))
    (tmp_path / 'list.json').write_text('[0.5]')
    with pytest.raises(ValueError, match=r'list\.json: expected a mapping with width, resolution; got list'):
        WIDTHS.resolve(str(tmp_path / 'list.json'))


def test_search_space_resolve_is_resolve_arch():
    space = SearchSpace.from_dict(ALPHANET_SPACE.to_dict())
    for spec in ('a0', 'alphanet_a6', 'max', json.dumps(ALPHANET_ARCHS['a2'].to_dict()),
                 ALPHANET_ARCHS['a1'].to_original_dict()):
        assert space.resolve(spec) == resolve_arch(spec, space)
    assert space.label(ALPHANET_ARCHS['a0']) is None and isinstance(space.resolve('a0'), SubnetConfig)


@pytest.mark.parametrize('space, spec, message', [
    (WIDTHS, 'a3', r"unknown arch 'a3' for a WidthSpace; allowed: max, min, a width of \[0\.35, 0\.4, .*\.\.\.\]"),
    (WIDTHS, '0.36', r'width 0\.36 not allowed; allowed: \[0\.35, 0\.4, '),
    (WIDTHS, 'nan', 'width must be a positive number'),
    (WIDTHS, '{width: 0.5}', r"WidthConfig is missing \['resolution'\]"),
    (WIDTHS, '{width: [', 'arch text: not valid YAML'),
    (WIDTHS, 'x' * 10_000, r"unknown arch 'x+\.\.\.x+' for a WidthSpace"),
    (WIDTHS, '9' * (1 << 21), r'an arch of 2097152 characters is too long \(at most 1048576\)'),
    (TWO_RESOLUTIONS, '0.5', r'a bare width \(0\.5\) is ambiguous in a space with resolutions \[160, 224\]'),
    (ALPHANET_SPACE, '0.35', r"unknown arch '0\.35'; allowed: a0, a1, .*, max, min"),
])
def test_refusals_name_the_value_and_the_allowed_ones(space, spec, message):
    with pytest.raises(ValueError, match=message) as e:
        space.resolve(spec)
    assert len(str(e.value)) < 1000


def test_labels():
    assert WIDTHS.label(1.0) == 'w1.0' and TWO_RESOLUTIONS.label(WidthConfig(0.5, 160)) == 'w0.5@160'
    with pytest.raises(ValueError, match='width 0.4 not allowed'):
        TWO_RESOLUTIONS.label({'width': 0.4, 'resolution': 160})
