"""WidthSpace / WidthConfig: validation naming the bad value, extremes, seeded sampling, mutation, crossover, dicts."""
import json
import random

import pytest

from timm_alphanet.spaces import WidthConfig, WidthSpace, width_range

SPACE = WidthSpace(width_range(0.35, 1.0), resolutions=(160, 192, 224))


def test_width_range_is_the_papers_grid():
    assert width_range(0.25, 1.0) == tuple(round(0.25 + 0.05 * i, 2) for i in range(16))
    assert width_range(0.35, 1.0)[:3] == (0.35, 0.4, 0.45) and len(width_range(0.35, 1.0)) == 14
    with pytest.raises(ValueError, match='not a whole number of steps of 0.05'):
        width_range(0.35, 1.01)


def test_configs_normalise_and_round_trip_through_json():
    arch = WidthConfig(0.35000000001, 224)
    assert arch == WidthConfig(0.35, 224) and hash(arch) == hash(WidthConfig(0.35, 224))
    assert WidthConfig.from_dict(json.loads(json.dumps(arch.to_dict()))) == arch
    assert WidthSpace.from_dict(json.loads(json.dumps(SPACE.to_dict()))) == SPACE
    assert WidthSpace.coerce({'widths': [1.0, 0.5, 0.5]}) == WidthSpace((0.5, 1.0), (224,))  # sorted, no repeats


@pytest.mark.parametrize('bad, message', [
    ({'width': 0.33, 'resolution': 224}, r'width 0.33 not allowed; allowed: \[0.35, 0.4, .*1.0\]'),
    ({'width': 0.5, 'resolution': 200}, r'resolution 200 not allowed; allowed: \[160, 192, 224\]'),
    ({'width': 0.5, 'resolution': 224, 'depth': 3}, r"unknown WidthConfig keys \['depth'\]"),
    ({'width': 0.5}, r"WidthConfig is missing \['resolution'\]"),
    ({'width': float('nan'), 'resolution': 224}, 'width must be a positive number'),
    ({'width': True, 'resolution': 224}, 'width must be a positive number'),
    ({'width': 0.5, 'resolution': 224.5}, 'resolution must be an int'),
    (0.5, r'a bare width \(0.5\) is ambiguous .* resolutions \[160, 192, 224\]'),
    ('0.5', 'must be a WidthConfig or a dict'),
])
def test_validate_names_the_bad_value_and_the_allowed_ones(bad, message):
    with pytest.raises(ValueError, match=message):
        SPACE.validate(bad)
    assert not SPACE.contains(bad)


def test_bare_width_in_a_single_resolution_space():
    space = WidthSpace((0.5, 1.0))
    assert space.validate(0.5) == WidthConfig(0.5, 224) and space.contains(1) and not space.contains(0.75)


@pytest.mark.parametrize('bad, message', [
    ({'widths': []}, 'widths needs at least one choice'),
    ({'widths': [0.5, -1]}, 'width must be a positive number .* got -1'),
    ({'widths': '0.5'}, 'widths must be a list'),
    ({'widths': [0.5], 'resolution': [224]}, r"unknown WidthSpace keys \['resolution'\]"),
    ({'resolutions': [224]}, r"WidthSpace is missing \['widths'\]"),
    ({'widths': [0.001 * i for i in range(1, 1200)]}, 'at most 1000 are allowed'),
])
def test_bad_spaces_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        WidthSpace.from_dict(bad)


def test_coerce_refuses_other_types():
    with pytest.raises(TypeError, match='a width space must be a WidthSpace or a dict'):
        WidthSpace.coerce([0.5, 1.0])


def test_extremes_and_seeded_sampling():
    assert SPACE.max_config() == WidthConfig(1.0, 224) and SPACE.min_config() == WidthConfig(0.35, 160)
    a = [SPACE.sample(random.Random(7)) for _ in range(3)]
    assert len(set(a)) == 1  # the same seed gives the same subnet
    rng = random.Random(0)
    draws = [SPACE.sample(rng) for _ in range(2000)]
    assert {d.width for d in draws} == set(SPACE.widths) and {d.resolution for d in draws} == set(SPACE.resolutions)
    with pytest.raises(TypeError, match='rng must be a random.Random'):
        SPACE.sample(7)


def test_mutation_changes_each_gene_to_a_different_choice_with_its_probability():
    rng = random.Random(1)
    arch = WidthConfig(0.5, 192)
    for _ in range(200):
        m = SPACE.mutate(arch, rng, prob=1.0, resolution_prob=1.0)
        assert m.width != arch.width and m.resolution != arch.resolution and SPACE.contains(m)
    assert all(SPACE.mutate(arch, rng, prob=0.0, resolution_prob=0.0) == arch for _ in range(50))
    width_only = [SPACE.mutate(arch, rng, prob=1.0, resolution_prob=0.0) for _ in range(50)]
    assert all(m.resolution == 192 and m.width != 0.5 for m in width_only)
    n = 4000
    changed = sum(SPACE.mutate(arch, rng, prob=0.25, resolution_prob=0.0).width != 0.5 for _ in range(n))
    assert abs(changed / n - 0.25) < 0.03
    with pytest.raises(ValueError, match=r'prob must be a probability in \[0, 1\], got 1.5'):
        SPACE.mutate(arch, rng, prob=1.5)
    with pytest.raises(ValueError, match='width 0.33 not allowed'):
        SPACE.mutate({'width': 0.33, 'resolution': 192}, rng)


def test_uniform_crossover_takes_each_gene_from_a_parent():
    rng = random.Random(2)
    a, b = WidthConfig(0.35, 160), WidthConfig(1.0, 224)
    children = [SPACE.crossover(a, b, rng) for _ in range(400)]
    assert {c.width for c in children} == {0.35, 1.0} and {c.resolution for c in children} == {160, 224}
    assert {(c.width, c.resolution) for c in children} == {(0.35, 160), (0.35, 224), (1.0, 160), (1.0, 224)}
    assert SPACE.crossover(a, a, rng) == a
