"""SearchSpace.mutate / crossover: always valid, prob 0 is the identity, prob 1 moves every movable gene,
crossover takes each gene from a parent, equal seeds give equal results (property tests over random spaces)."""
import random

import pytest
from hypothesis import given, settings, strategies as st

from timm_alphanet import ALPHANET_SPACE, SearchSpace, StageSpace, SubnetConfig


def _choices(values):
    return st.lists(st.sampled_from(values), min_size=1, max_size=3, unique=True)


@st.composite
def spaces(draw):
    stages = tuple(StageSpace(f's{i}', draw(_choices([8, 16, 24])), draw(_choices([1, 2, 3])),
                              draw(_choices([3, 5, 7])), draw(_choices([1, 3, 4])), stride=draw(st.sampled_from([1, 2])))
                   for i in range(draw(st.integers(1, 3))))
    return SearchSpace(resolutions=draw(_choices([16, 24, 32])), stem_widths=draw(_choices([8, 16])),
                       stages=stages, head_widths=draw(_choices([32, 64])))


def _genes(cfg: SubnetConfig):
    """Flat gene list, written independently of the space's own helper."""
    return [cfg.resolution, *cfg.widths, *cfg.depths, *cfg.kernel_sizes, *cfg.expand_ratios]


def _n_choices(space: SearchSpace):
    return [len(space.resolutions), len(space.stem_widths), *(len(s.widths) for s in space.stages),
            len(space.head_widths), *(len(s.depths) for s in space.stages),
            *(len(s.kernel_sizes) for s in space.stages), *(len(s.expand_ratios) for s in space.stages)]


@settings(max_examples=60, deadline=None)
@given(space=spaces(), seed=st.integers(0, 2**32), prob=st.floats(0, 1), res_prob=st.floats(0, 1))
def test_mutate_is_valid_and_deterministic(space, seed, prob, res_prob):
    parent = space.sample(random.Random(seed))
    child = space.mutate(parent, random.Random(seed + 1), prob, res_prob)
    assert space.contains(child)
    assert child == space.mutate(parent, random.Random(seed + 1), prob, res_prob)


@settings(max_examples=60, deadline=None)
@given(space=spaces(), seed=st.integers(0, 2**32))
def test_mutate_prob_0_changes_nothing_and_prob_1_every_movable_gene(space, seed):
    parent = space.sample(random.Random(seed))
    assert space.mutate(parent, random.Random(seed), 0.0, 0.0) == parent
    child = space.mutate(parent.to_original_dict(), random.Random(seed), 1.0, 1.0)
    for before, after, n in zip(_genes(parent), _genes(child), _n_choices(space)):
        assert (after != before) == (n > 1)


def test_resolution_prob_acts_on_the_resolution_only():
    parent = ALPHANET_SPACE.min_config()
    child = ALPHANET_SPACE.mutate(parent, random.Random(0), prob=0.0, resolution_prob=1.0)
    assert child.resolution != parent.resolution and _genes(child)[1:] == _genes(parent)[1:]
    # the default resolution_prob is prob
    assert ALPHANET_SPACE.mutate(parent, random.Random(0), prob=1.0).resolution != parent.resolution


def test_mutation_rate_matches_prob():
    # over many draws each movable gene moves with probability prob (binomial: 20000 x 0.3, sd ~65)
    rng, parent = random.Random(0), ALPHANET_SPACE.max_config()
    movable = [i for i, n in enumerate(_n_choices(ALPHANET_SPACE)) if n > 1]
    moved = sum(a != b for _ in range(20000 // len(movable) + 1)
                for i, (a, b) in enumerate(zip(_genes(parent), _genes(ALPHANET_SPACE.mutate(parent, rng, 0.3))))
                if i in movable)
    trials = (20000 // len(movable) + 1) * len(movable)
    assert abs(moved / trials - 0.3) < 0.015


@settings(max_examples=60, deadline=None)
@given(space=spaces(), seed=st.integers(0, 2**32))
def test_crossover_takes_each_gene_from_a_parent(space, seed):
    a, b = space.sample(random.Random(seed)), space.sample(random.Random(seed + 7))
    child = space.crossover(a, b, random.Random(seed))
    assert space.contains(child)
    assert all(c in (x, y) for c, x, y in zip(_genes(child), _genes(a), _genes(b)))
    assert child == space.crossover(a, b, random.Random(seed))
    assert space.crossover(a, a, random.Random(seed)) == a


def test_crossover_is_uniform():
    a, b = ALPHANET_SPACE.min_config(), ALPHANET_SPACE.max_config()
    rng = random.Random(1)
    from_a = [sum(x == ga for x, ga in zip(_genes(ALPHANET_SPACE.crossover(a, b, rng)), _genes(a)))
              for _ in range(500)]
    n = len(_genes(a))  # min and max differ in every gene with more than one choice
    distinct = sum(x != y for x, y in zip(_genes(a), _genes(b)))
    share = (sum(from_a) - 500 * (n - distinct)) / (500 * distinct)
    assert abs(share - 0.5) < 0.02


def test_operators_refuse_bad_input():
    cfg = ALPHANET_SPACE.min_config()
    with pytest.raises(ValueError, match=r'mutation prob must be a number in \[0, 1\], got 1.5'):
        ALPHANET_SPACE.mutate(cfg, random.Random(0), 1.5)
    with pytest.raises(ValueError, match='resolution_prob'):
        ALPHANET_SPACE.mutate(cfg, random.Random(0), 0.1, -1)
    with pytest.raises(TypeError, match='rng must be a random.Random, got int'):
        ALPHANET_SPACE.crossover(cfg, cfg, 3)
    with pytest.raises(ValueError, match=r'resolution 100 not allowed'):
        ALPHANET_SPACE.mutate({**cfg.to_dict(), 'resolution': 100}, random.Random(0), 0.1)


def test_size_and_enumeration_list_every_arch_once():
    import itertools
    from timm_alphanet.spaces import WidthSpace
    space = SearchSpace.from_dict({'resolutions': [16, 24], 'first_conv': {'c': [8, 16]},
                                   'mb1': {'c': [8], 'd': [1, 2], 'k': [3, 5], 't': [1]},
                                   'mb2': {'c': [8, 16], 'd': [1], 'k': [3], 't': [2, 3], 's': 2},
                                   'last_conv': {'c': [32]}})
    archs = list(space.enumerate_configs())
    # resolution 2 x stem 2 x (mb1: c1 d2 k2 t1) x (mb2: c2 d1 k1 t2) x head 1, counted by hand
    assert space.size == len(archs) == 2 * 2 * 4 * 4 and len(set(archs)) == len(archs)
    assert all(space.contains(a) for a in archs)
    rng = random.Random(0)
    assert {space.sample(rng) for _ in range(2000)} <= set(archs)
    widths = WidthSpace(widths=(0.5, 0.75, 1.0), resolutions=(160, 224))
    assert widths.size == 6 and set(widths.enumerate_configs()) == {
        widths.validate({'width': w, 'resolution': r}) for w, r in itertools.product((0.5, 0.75, 1.0), (160, 224))}
