"""The optional accuracy predictor: exact one-hot encoding, it learns a known score (rank correlation on held-out
archs), its ranking puts predicted front-improvers first, and with it the evolution needs fewer evaluations."""
import random
import statistics

from scipy.stats import kendalltau

from test_search_evolution import ALL_TOY, TOY, analytic_top1, brute_front, costs
from timm_alphanet.search.evolution import EvolutionConfig, evolve
from timm_alphanet.search.pareto import hypervolume, objective_vector
from timm_alphanet.search.predictor import MIN_TRAIN, AccuracyPredictor, encode, make_prerank, rank_children


def test_encoding_is_one_hot_per_gene():
    arch = TOY.validate(dict(resolution=24, widths=(16, 8, 24, 32), depths=(2, 3), kernel_sizes=(3, 5),
                             expand_ratios=(1, 4)))
    row = encode(TOY, [arch])[0]
    # columns: res 16/24/32 | stem 8/16 | s1 8/16 | s2 16/24 | head 32/64 | d1 1/2 | d2 1/2/3 | k1 3/5 | k2 3/5 |
    #          t1 1 | t2 2/3/4
    expected = [0, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1]
    assert row.tolist() == expected


def test_predictor_ranks_held_out_archs():
    archs = random.Random(0).sample(ALL_TOY, 400)
    model = AccuracyPredictor(TOY, seed=0).fit(archs[:200], [analytic_top1(a) for a in archs[:200]])
    tau = kendalltau(model.predict(archs[200:]), [analytic_top1(a) for a in archs[200:]]).statistic
    assert tau > 0.9


def test_ranking_puts_children_that_would_join_the_front_first():
    records = [{'arch': a, 'top1': analytic_top1(a), **costs(a)} for a in random.Random(1).sample(ALL_TOY, 30)]
    children = random.Random(2).sample(ALL_TOY, 20)
    ranked = rank_children(children, [analytic_top1(a) for a in children], records, ('top1', 'mflops'), costs)
    assert sorted(map(str, ranked)) == sorted(map(str, children))
    joining = {r['arch'] for r in brute_front(records + [{'arch': a, 'top1': analytic_top1(a), **costs(a)}
                                                        for a in children], ['mflops'])} & set(children)
    assert joining and set(ranked[:len(joining)]) == joining


def test_prerank_waits_for_enough_scores_and_then_saves_evaluations():
    prerank = make_prerank(TOY, ('top1', 'mflops'), costs, seed=0)
    few = [{'arch': a, 'top1': 1.0, **costs(a)} for a in ALL_TOY[:MIN_TRAIN - 1]]
    assert prerank(ALL_TOY[100:110], few) == ALL_TOY[100:110]

    true = brute_front([{'arch': a, 'top1': analytic_top1(a), **costs(a)} for a in ALL_TOY], ['mflops'])
    ref = (-40.0, 2.0)
    full = hypervolume([objective_vector(r, ('top1', 'mflops')) for r in true], ref)

    def evaluations_to_99_percent(seed, predictor):
        seen = []

        def on_generation(gen):
            hv = hypervolume([objective_vector(r, ('top1', 'mflops')) for r in gen.front], ref)
            if hv >= 0.99 * full and not seen:
                seen.append(len(gen.archive))
        cfg = EvolutionConfig(population=30, generations=12, seed=seed, predictor_keep=0.5 if predictor else 1.0)
        evolve(TOY, lambda archs, g: [analytic_top1(a) for a in archs], costs, cfg, on_generation=on_generation,
               prerank=make_prerank(TOY, ('top1', 'mflops'), costs, seed) if predictor else None)
        return seen[0] if seen else float('inf')
    without = [evaluations_to_99_percent(s, False) for s in range(4)]
    with_predictor = [evaluations_to_99_percent(s, True) for s in range(4)]
    assert statistics.median(with_predictor) < statistics.median(without)
