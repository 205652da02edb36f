import json
import random

import pytest
import yaml

from timm_alphanet import ALPHANET_ARCHS, ALPHANET_SPACE, SearchSpace, StageSpace, SubnetConfig

# The `supernet_config` of the original configs/train_alphanet_models.yml, written in its own schema.
ORIGINAL_YAML = """
arch: 'attentive_nas_dynamic_model'
bn_momentum: 0
supernet_config:
    use_v3_head: True
    resolutions: [192, 224, 256, 288]
    first_conv: {c: [16, 24], act_func: 'swish', s: 2}
    mb1: {c: [16, 24], d: [1, 2], k: [3, 5], t: [1], s: 1, act_func: 'swish', se: False}
    mb2: {c: [24, 32], d: [3, 4, 5], k: [3, 5], t: [4, 5, 6], s: 2, act_func: 'swish', se: False}
    mb3: {c: [32, 40], d: [3, 4, 5, 6], k: [3, 5], t: [4, 5, 6], s: 2, act_func: 'swish', se: True}
    mb4: {c: [64, 72], d: [3, 4, 5, 6], k: [3, 5], t: [4, 5, 6], s: 2, act_func: 'swish', se: False}
    mb5: {c: [112, 120, 128], d: [3, 4, 5, 6, 7, 8], k: [3, 5], t: [4, 5, 6], s: 1, act_func: 'swish', se: True}
    mb6: {c: [192, 200, 208, 216], d: [3, 4, 5, 6, 7, 8], k: [3, 5], t: [6], s: 2, act_func: 'swish', se: True}
    mb7: {c: [216, 224], d: [1, 2], k: [3, 5], t: [6], s: 1, act_func: 'swish', se: True}
    last_conv: {c: [1792, 1984], act_func: 'swish'}
"""

# the original eval config's arch entry for A0, with its keys
ORIGINAL_A0 = {
    'net_id': 'a0', 'resolution': 192, 'width': [16, 16, 24, 32, 64, 112, 192, 216, 1792],
    'depth': [1, 3, 3, 3, 3, 3, 1], 'kernel_size': [3, 3, 3, 3, 3, 3, 3], 'expand_ratio': [1, 4, 4, 4, 4, 6, 6],
}


def test_original_yaml_schema_gives_the_alphanet_space(tmp_path):
    path = tmp_path / 'train_alphanet_models.yml'
    path.write_text(ORIGINAL_YAML)
    space = SearchSpace.from_yaml(path)
    assert space == ALPHANET_SPACE
    assert [s.name for s in space.stages] == [f'mb{i}' for i in range(1, 8)]
    assert [s.se for s in space.stages] == [False, False, True, False, True, True, True]
    assert [s.stride for s in space.stages] == [1, 2, 2, 2, 1, 2, 1]


def test_space_round_trips_through_yaml_and_json(tmp_path):
    space = ALPHANET_SPACE
    path = tmp_path / 'space.yml'
    space.to_yaml(path)
    assert SearchSpace.from_yaml(path) == space
    assert SearchSpace.from_dict(json.loads(json.dumps(space.to_dict()))) == space
    assert hash(SearchSpace.from_dict(space.to_dict())) == hash(space)


def test_original_arch_keys_accepted_and_round_trip():
    cfg = SubnetConfig.from_dict(ORIGINAL_A0)
    assert cfg == ALPHANET_ARCHS['a0']
    assert SubnetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert SubnetConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_original_dict()))) == cfg
    assert cfg.to_original_dict()['width'] == ORIGINAL_A0['width']


def test_configs_are_hashable_and_frozen():
    a = SubnetConfig.from_dict(ALPHANET_ARCHS['a3'].to_dict())
    assert len({a, ALPHANET_ARCHS['a3'], ALPHANET_ARCHS['a0']}) == 2
    with pytest.raises(AttributeError):
        a.resolution = 288


def test_searched_archs_are_in_the_space_and_a0_is_the_min():
    for name, arch in ALPHANET_ARCHS.items():
        assert ALPHANET_SPACE.contains(arch), name
    assert ALPHANET_SPACE.min_config() == ALPHANET_ARCHS['a0']
    mx = ALPHANET_SPACE.max_config()
    assert mx.resolution == 288 and mx.widths == (24, 24, 32, 40, 72, 128, 216, 224, 1984)
    assert mx.depths == (2, 5, 6, 6, 8, 8, 2) and set(mx.kernel_sizes) == {5}


def test_wrong_length_raises_naming_field():
    d = ALPHANET_ARCHS['a0'].to_dict()
    d['widths'] = d['widths'][:-1]
    with pytest.raises(ValueError, match=r'disagree on the number of stages.*\(8 entries\)'):
        SubnetConfig.from_dict(d)
    d = ALPHANET_ARCHS['a0'].to_dict()
    d['kernel_sizes'] = [3] * 6
    with pytest.raises(ValueError, match=r'disagree on the number of stages.*kernel_sizes \[3, 3, 3, 3, 3, 3\]'):
        SubnetConfig.from_dict(d)


def test_value_outside_space_names_field_stage_value_and_allowed():
    d = ALPHANET_ARCHS['a0'].to_dict()
    d['widths'][3] = 48
    d['depths'][4] = 2
    with pytest.raises(ValueError) as e:
        ALPHANET_SPACE.validate(d)
    msg = str(e.value)
    assert 'widths[3] (mb3) = 48 not allowed; allowed: [32, 40]' in msg
    assert 'depths[4] (mb5) = 2 not allowed; allowed: [3, 4, 5, 6, 7, 8]' in msg
    d = ALPHANET_ARCHS['a0'].to_dict()
    d['resolution'] = 200
    with pytest.raises(ValueError, match=r'resolution 200 not allowed; allowed: \[192, 224, 256, 288\]'):
        ALPHANET_SPACE.validate(d)


def test_unknown_and_missing_keys_raise():
    d = {**ALPHANET_ARCHS['a0'].to_dict(), 'widht': [1]}
    with pytest.raises(ValueError, match="unknown arch key 'widht'"):
        SubnetConfig.from_dict(d)
    d = ALPHANET_ARCHS['a0'].to_dict()
    del d['depths']
    with pytest.raises(ValueError, match=r"missing \['depths'\]"):
        SubnetConfig.from_dict(d)
    with pytest.raises(ValueError, match='given twice'):
        SubnetConfig.from_dict({**ALPHANET_ARCHS['a0'].to_dict(), 'width': ORIGINAL_A0['width']})
    with pytest.raises(ValueError, match='must contain ints'):
        SubnetConfig.from_dict({**ALPHANET_ARCHS['a0'].to_dict(), 'depths': [1, 3, 3, 3, 3, 'x', 1]})


def test_bad_space_definitions_raise():
    with pytest.raises(ValueError, match=r"stage mbx: stride 3 not supported; allowed: \[1, 2\]"):
        StageSpace('mbx', (16,), (1,), (3,), (1,), stride=3)
    with pytest.raises(ValueError, match=r"act_func 'gelu' not supported"):
        StageSpace('mbx', (16,), (1,), (3,), (1,), act='gelu')
    with pytest.raises(ValueError, match='kernel sizes must be odd'):
        StageSpace('mbx', (16,), (1,), (4,), (1,))
    bad = yaml.safe_load(ORIGINAL_YAML)
    bad['supernet_config']['mb2']['q'] = 1
    with pytest.raises(ValueError, match=r"supernet_config.mb2: unknown keys \['q'\]"):
        SearchSpace.from_dict(bad)
    bad = yaml.safe_load(ORIGINAL_YAML)
    del bad['supernet_config']['mb3']['c']
    with pytest.raises(ValueError, match=r"supernet_config.mb3 is missing 'c'"):
        SearchSpace.from_dict(bad)


def test_sampling_uses_only_the_explicit_rng():
    a = [ALPHANET_SPACE.sample(random.Random(7)) for _ in range(3)]
    random.seed(123)  # the global RNG must not matter
    b = [ALPHANET_SPACE.sample(random.Random(7)) for _ in range(3)]
    assert a == b
    rng = random.Random(0)
    samples = [ALPHANET_SPACE.sample(rng) for _ in range(200)]
    assert all(ALPHANET_SPACE.contains(s) for s in samples)
    assert len(set(samples)) == 200
    # every choice of a field shows up: sampling covers the space
    assert {s.resolution for s in samples} == set(ALPHANET_SPACE.resolutions)
    assert {s.depths[4] for s in samples} == set(ALPHANET_SPACE.stages[4].depths)
    with pytest.raises(TypeError):
        ALPHANET_SPACE.sample(None)


def test_block_specs_follow_the_design_rules():
    specs = ALPHANET_SPACE.block_specs(ALPHANET_ARCHS['a3'])
    assert [len(s) for s in specs] == list(ALPHANET_ARCHS['a3'].depths)
    b = specs[0][0]  # mb1: t=1 keeps the input width, no SE
    assert (b.in_chs, b.mid_chs, b.se_chs, b.stride) == (16, 16, 0, 1)
    b = specs[2][0]  # mb3 first block: 24 -> 32, t=4, SE on 96 -> make_divisible(24) = 24, stride 2
    assert (b.in_chs, b.out_chs, b.mid_chs, b.se_chs, b.stride) == (24, 32, 96, 24, 2)
    assert specs[2][1].in_chs == 32 and specs[2][1].stride == 1 and not specs[2][1].has_shortcut_conv
    b = specs[5][0]  # mb6: 112 * 6 = 672, SE 168
    assert (b.mid_chs, b.se_chs) == (672, 168)


# ---- booleans, strides and ratios are what they say; numpy numbers are numbers

def _space_dict():
    return yaml.safe_load(ORIGINAL_YAML)['supernet_config']


@pytest.mark.parametrize('value', ['false', 'False', 'true', 0, 1, None, [True]])
def test_se_accepts_only_real_booleans(value):
    d = _space_dict()
    d['mb3']['se'] = value
    with pytest.raises(ValueError, match=r'stage mb3: se must be true or false, got'):
        SearchSpace.from_dict(d)
    with pytest.raises(ValueError, match='se must be true or false'):
        StageSpace('mbx', (16,), (1,), (3,), (1,), se=value)


def test_se_false_in_yaml_text_is_off_and_quoted_false_is_refused(tmp_path):
    off = ORIGINAL_YAML.replace("mb3: {c: [32, 40], d: [3, 4, 5, 6], k: [3, 5], t: [4, 5, 6], s: 2, act_func: 'swish', "
                                "se: True}", "mb3: {c: [32, 40], d: [3, 4, 5, 6], k: [3, 5], t: [4, 5, 6], s: 2, "
                                "act_func: 'swish', se: false}")
    assert off != ORIGINAL_YAML
    path = tmp_path / 'space.yml'
    path.write_text(off)
    assert SearchSpace.from_yaml(path).stages[2].se is False
    path.write_text(off.replace('se: false}', 'se: "false"}'))
    with pytest.raises(ValueError, match="se must be true or false, got 'false'"):
        SearchSpace.from_yaml(path)


@pytest.mark.parametrize('stride', [3, 0, '2', 2.5, True, [2, 2]])
def test_stem_stride_is_validated(stride):
    d = _space_dict()
    d['first_conv']['s'] = stride
    with pytest.raises(ValueError, match=r'first_conv\.s|stem stride'):
        SearchSpace.from_dict(d)


@pytest.mark.parametrize('ratio', [0, -6, 2.5, '6', True, None])
def test_head_expand_ratio_is_validated(ratio):
    d = {**_space_dict(), 'head_expand_ratio': ratio}
    with pytest.raises(ValueError, match='head_expand_ratio must be an int >= 1'):
        SearchSpace.from_dict(d)


def test_use_v3_head_must_be_a_boolean_and_sections_mappings():
    with pytest.raises(ValueError, match='use_v3_head must be true or false'):
        SearchSpace.from_dict({**_space_dict(), 'use_v3_head': 'false'})
    with pytest.raises(ValueError, match='first_conv must be a mapping'):
        SearchSpace.from_dict({**_space_dict(), 'first_conv': [16, 24]})
    with pytest.raises(ValueError, match=r"act_func 'x' not supported"):
        StageSpace('mbx', (16,), (1,), (3,), (1,), act='x')
    with pytest.raises(ValueError, match=r'act_func \[.swish.\] not supported'):  # unhashable: still a ValueError
        StageSpace('mbx', (16,), (1,), (3,), (1,), act=['swish'])


def test_integral_floats_and_numpy_numbers_are_accepted():
    np = pytest.importorskip('numpy')
    d = _space_dict()
    d['first_conv']['s'] = 2.0
    d['mb2']['s'] = np.int64(2)
    d['mb3']['c'] = [np.int64(32), np.int32(40)]
    d['resolutions'] = [np.int16(192), 224.0, np.float32(256), 288]
    d['head_expand_ratio'] = np.int64(6)
    space = SearchSpace.from_dict(d)
    assert space == ALPHANET_SPACE and hash(space) == hash(ALPHANET_SPACE)
    assert type(space.stem_stride) is int and type(space.stages[1].stride) is int
    arch = {k: [np.int64(v) for v in vs] if isinstance(vs, list) else np.int64(vs)
            for k, vs in ORIGINAL_A0.items() if k != 'net_id'}
    cfg = SubnetConfig.from_dict(arch)
    assert cfg == ALPHANET_ARCHS['a0'] and all(type(v) is int for v in cfg.widths) and type(cfg.resolution) is int
    assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()
    for bad in (np.float64(192.5), np.bool_(True), True):
        with pytest.raises(ValueError, match='resolution must be an int'):
            SubnetConfig.from_dict({**arch, 'resolution': bad})


def test_error_messages_quote_bounded_values():
    huge = 'x' * 100_000
    attempts = [
        lambda: SubnetConfig.from_dict({**ALPHANET_ARCHS['a0'].to_dict(), huge: 1}),
        lambda: SubnetConfig.from_dict({**ALPHANET_ARCHS['a0'].to_dict(), 'widths': list(range(-5000, 0))}),
        lambda: SearchSpace.from_dict({**_space_dict(), 'mb2': huge}),
        lambda: SearchSpace.from_dict({**_space_dict(), 'mb2': {**_space_dict()['mb2'], 'se': huge}}),
        lambda: SearchSpace.from_dict({**_space_dict(), 'mb2': {**_space_dict()['mb2'], huge: 1}}),
        lambda: SearchSpace.from_dict({**_space_dict(), huge: {'c': [1]}}),
        lambda: SearchSpace.from_dict({**_space_dict(), 'head_expand_ratio': -10 ** 5000}),
    ]
    for attempt in attempts:
        with pytest.raises(ValueError) as e:
            attempt()
        assert len(str(e.value)) < 600, str(e.value)[:300]


def test_arch_file_errors_quote_a_bounded_path(tmp_path):
    from timm_alphanet.archs import resolve_arch
    long_name = 'd' * 3000
    with pytest.raises((FileNotFoundError, ValueError)) as e:  # ENAMETOOLONG: cannot exist, cannot be read
        resolve_arch(str(tmp_path / f'{long_name}.json'))
    assert len(str(e.value)) < 400 and '.json' in str(e.value)
    bad = tmp_path / 'bad.yaml'
    bad.write_text('resolution: [')
    with pytest.raises(ValueError, match=r'bad\.yaml: not valid YAML'):
        resolve_arch(str(bad))
