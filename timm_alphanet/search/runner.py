"""The search runner: evolution (`evolution.evolve`) with honest, deterministic scores (`scoring`), sharded over
processes, cached in an append-only ``candidates.jsonl`` (`candidates`) and resumable.

The validation split is used only once the search is done, for the final Pareto points (``top1_val``), never for
selection. A generation's new candidates are sorted and dealt round-robin to the processes (any world size), each
candidate is evaluated entirely on one process, and the results are gathered as plain objects; since a score
depends only on the arch, 1 and N processes give identical searches. ``pareto.json`` (`pareto_file`) and its
``.md``/``.png`` (`pareto_report`) are rewritten after every generation; ``--resume`` replays the seeded evolution
with the cached scores, so it ends with exactly the pareto.json of an uninterrupted run.
"""
import contextlib
import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..calibration import CalibrationRecipe, disjoint_subsets
from ..models import is_supernet
from ..processes import check_world_size, has_accelerator_device
from ..spaces import SearchSpace, SubnetConfig
from ..utils import append_jsonl, check_writable_folder, claim_folder, display_path, import_optional, write_atomic
from .candidates import CANDIDATES, end_torn_line, read_candidates, selection_line, validation_line
from .evolution import EvolutionConfig, Generation, Limits, arch_key, check_limits, evolve
from .pareto import check_objectives
from .pareto_file import (
    PARETO_JSON, check_resume, device_text, front_point, latency_record, pareto_document, pareto_header,
    progress_record, write_pareto,
)
from .pareto_report import pareto_report, plot_front
from .scoring import Scorer, SubnetCosts, validation_top1

__all__ = ['SearchConfig', 'SearchResult', 'run_search', 'default_image_counts', 'process_state']

PARETO_MD, PARETO_PNG = 'pareto.md', 'pareto.png'
CALIB_DEFAULT, SELECTION_DEFAULT = 2048, 5000


def default_image_counts(num_train: int, calib: Optional[int] = None, selection: Optional[int] = None,
                         names: Tuple[str, str] = ('calibration images', 'selection images')) -> Tuple[int, int]:
    """(calibration, selection) image counts for a training split of `num_train` images.

    Defaults: 2048 calibration images or half the split, whichever is smaller; 5000 selection images or every image
    the calibration leaves, whichever is smaller. The selection set decides the front, and one image is 100/N
    points of top-1 (a tenth of the demo's 1442 images made a step of 0.69 points, more than the gaps it had to
    rank), so a small split gives it all it can. Explicit counts are used as given, and refused (naming `names`)
    if the split cannot hold both disjointly.
    """
    if calib is None:
        calib = min(CALIB_DEFAULT, num_train // 2)
    if selection is None:
        selection = max(1, min(SELECTION_DEFAULT, num_train - calib)) if isinstance(calib, int) else SELECTION_DEFAULT
    for name, value in zip(names, (calib, selection)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f'{name} must be a positive integer, got {value!r:.40} (the training split has '
                             f'{num_train} images)')
    if calib + selection > num_train:
        raise ValueError(f'the training split has {num_train} images, too few for {calib} {names[0]} + {selection} '
                         f'{names[1]} (disjoint); lower them or use a larger split')
    return calib, selection


@dataclass(frozen=True)
class SearchConfig:
    """Everything that decides a search's result; recorded in pareto.json, and a resumed search must match it.

    Args:
        objectives: ``top1`` and one or more of ``mflops``, ``params``, ``latency`` (needs a latency table).
        limits: hard limits (MFLOPs range, max params in millions, max latency in ms).
        evolution: population, parents, mutation, crossover, generations, seed.
        calibration: BN calibration recipe: split, image count, batch size, index seed and the eval transform.
        selection_images: held-out training images (disjoint from the calibration ones) that score candidates.
        batch_size: images per forward when scoring.
        predictor: pre-rank children with an accuracy predictor trained on the scores so far (fewer evaluations).
    """
    objectives: Tuple[str, ...] = ('top1', 'mflops')
    limits: Limits = Limits()
    evolution: EvolutionConfig = EvolutionConfig()
    calibration: CalibrationRecipe = CalibrationRecipe()
    selection_images: int = SELECTION_DEFAULT
    batch_size: int = 256
    predictor: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, 'objectives', check_objectives(self.objectives))
        for name, cls in (('limits', Limits), ('evolution', EvolutionConfig), ('calibration', CalibrationRecipe)):
            if not isinstance(getattr(self, name), cls):
                raise TypeError(f'SearchConfig.{name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}')
        for name in ('selection_images', 'batch_size'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be a positive integer, got {value!r:.40}')


@dataclass
class SearchResult:
    """The final front (pareto.json points) and where the files are."""
    points: List[Dict[str, Any]]
    evaluated: int
    output_dir: str
    document: Dict[str, Any] = field(repr=False, default_factory=dict)


# ---- the run
def process_state() -> Any:
    """Accelerate's process state for a search, checked against the launcher.

    On a machine without an accelerator device it is created with ``cpu=True``: that is what makes torchrun /
    ``accelerate launch --multi_gpu`` processes on CPUs one gloo group instead of N lone searches.
    """
    from accelerate import PartialState

    state = PartialState(cpu=not has_accelerator_device())
    check_world_size(state.num_processes, work='search')
    return state


def _weights_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def run_search(
        supernet: nn.Module,
        train_data: Any,
        output_dir: str,
        config: SearchConfig = SearchConfig(),
        *,
        val_data: Any = None,
        val_split: str = 'validation',
        dataset: Optional[str] = None,
        source: Optional[Mapping[str, Any]] = None,
        latency_table: Any = None,
        resume: bool = False,
        workers: int = 0,
        progress: bool = True,
        log: Callable[[str], None] = print,
) -> SearchResult:
    """Search `supernet` for its Pareto front and write it to `output_dir`.

    Args:
        supernet: a weight-sharing supernet (`Supernet` protocol) with `num_classes`.
        train_data: the training split as a dataset of (image tensor, target) with the eval transform of
            ``config.calibration`` (see `CalibrationRecipe.transform`); calibration and selection images come from it.
        output_dir: where pareto.json, pareto.md, pareto.png and candidates.jsonl go.
        config: objectives, limits, evolution, calibration recipe, selection images.
        val_data: the validation split, same transform; only the final front is evaluated on it (``top1_val``).
        val_split: its name, for the record.
        dataset: what the data is (e.g. ``sklearn/digits`` or a folder), for the record and model cards.
        source: where the supernet came from (`SupernetSource.to_dict()`: spec, kind, path, sha256); default: a
            digest of its weights.
        latency_table: a `LatencyTable` covering the space (needed for the latency objective or limit).
        resume: continue the search in `output_dir` (its recorded supernet and config must match).
        workers: data loader processes decoding the images.
        progress: progress bars (main process).
        log: where the main process reports.

    Returns:
        The front as pareto.json points. The supernet is left on the process's device, running the last subnet
        scored, with that subnet's calibrated BN statistics.

    Raises:
        ValueError / FileNotFoundError: a non-supernet model, a split too small for the image counts, limits no
            subnet meets, a latency table that lacks layers of the space, an output folder holding another search
            (without `resume`) or in use by another one (`claim_folder`), a ``candidates.jsonl`` that is a symbolic
            link, or a resume that does not match the recorded search.
    """
    if not is_supernet(supernet):
        raise ValueError(f'{type(supernet).__name__} is not a supernet (it has no search space)')
    state = process_state()
    say = log if state.is_main_process else (lambda msg: None)
    space: SearchSpace = supernet.space
    check_writable_folder(output_dir, 'search output folder')  # before any subnet is calibrated and scored
    _check_request(supernet, config, latency_table)
    recipe = config.calibration
    calib_idx, sel_idx = disjoint_subsets(len(train_data), [recipe.num_images, config.selection_images], recipe.seed)
    header = _header(supernet, config, source, val_data, val_split, latency_table, dataset)
    costs = SubnetCosts(supernet, latency_table)
    check_limits(space, config.limits, costs)  # before anything is written
    _check_image_shape(train_data, calib_idx[0], recipe, getattr(supernet, 'in_chans', 3))
    paths = _Paths.of(output_dir)
    with contextlib.ExitStack() as claims:  # the output folder, claimed by the main process for the whole search
        return _search(supernet, train_data, config, val_data, val_split, latency_table, resume, workers, progress,
                       state, say, header, costs, paths, (calib_idx, sel_idx), claims)


def _search(supernet: nn.Module, train_data: Any, config: SearchConfig, val_data: Any, val_split: str,
            latency_table: Any, resume: bool, workers: int, progress: bool, state: Any, say: Callable[[str], None],
            header: Dict[str, Any], costs: SubnetCosts, paths: '_Paths', indices: Tuple[Any, Any],
            claims: contextlib.ExitStack) -> SearchResult:
    """`run_search` once its request is checked: claim and open the output folder, evolve, validate, write."""
    space, recipe, objectives = supernet.space, config.calibration, config.objectives
    calib_idx, sel_idx = indices
    cached, cached_val = _open_output(paths, header, space, resume, state, say, claims)

    supernet.to(state.device)
    scorer = Scorer.from_data(supernet, train_data, calib_idx, sel_idx, recipe.batch_size, config.batch_size,
                              state.device, workers, progress=progress and state.is_main_process)
    search = _Search(space, scorer, costs, header, paths, cached, cached_val, state, config.evolution.generations,
                     latency_table, workers, progress, say)
    prerank = None
    if config.predictor:
        from .predictor import make_prerank
        prerank = make_prerank(space, objectives, costs, seed=config.evolution.seed, main=state.is_main_process,
                               world=state.num_processes)
    result = evolve(space, search.evaluate, costs, config.evolution, config.limits, objectives, search.on_generation,
                    prerank)
    search.records.update(result.archive)
    val = {}
    if val_data is not None and result.front:
        val = search.validate([r['arch'] for r in result.front], val_data, val_split, config.batch_size)
    doc = search.write(result.front, config.evolution.generations, complete=True, val=val)
    return SearchResult(doc['points'], len(search.records), paths.output_dir, doc)


def _check_request(supernet: nn.Module, config: SearchConfig, latency_table: Any) -> None:
    """Refuse a latency table or predictor the space cannot use, objectives or limits without their table, and a
    missing plotting extra (before any work, not at the first generation's pareto.png)."""
    import_optional('matplotlib.figure', 'the search (its pareto.png front plot)')
    space, objectives = supernet.space, config.objectives
    num_classes, in_chans = supernet.num_classes, getattr(supernet, 'in_chans', 3)
    if not isinstance(space, SearchSpace) and (latency_table is not None or config.predictor):
        raise ValueError(f'latency tables and the accuracy predictor need an AlphaNet search space; this supernet '
                         f'has a {type(space).__name__}')
    if latency_table is not None:
        latency_table.check_covers(space, num_classes, in_chans)
    elif 'latency' in objectives or config.limits.max_latency_ms is not None:
        raise ValueError('the latency objective and the latency limit need a latency table')
    if config.predictor and config.evolution.predictor_keep == 1.0:
        raise ValueError('predictor=True needs evolution.predictor_keep < 1 (the fraction of children evaluated)')


def _check_image_shape(data: Any, index: int, recipe: CalibrationRecipe, in_chans: int) -> None:
    expected, first = (in_chans, recipe.image_size, recipe.image_size), data[index][0]
    if tuple(getattr(first, 'shape', ())) != expected:
        raise ValueError(f'the training images are {list(getattr(first, "shape", [type(first).__name__]))}, the '
                         f'calibration recipe says {list(expected)}: give the dataset the recipe\'s transform')


def _header(supernet: nn.Module, config: SearchConfig, source: Optional[Mapping[str, Any]], val_data: Any,
            val_split: str, latency_table: Any, dataset: Optional[str]) -> Dict[str, Any]:
    """pareto.json's header (`pareto_header`) for this supernet and config."""
    latency = None
    if latency_table is not None:
        latency = latency_record(latency_table.to_dict(), latency_table.source, latency_table.device)
    return pareto_header(
        supernet=dict(source) if source is not None else {'spec': None, 'sha256': _weights_digest(supernet)},
        dataset=dataset, space=supernet.space.to_dict(), num_classes=supernet.num_classes,
        objectives=config.objectives, limits=config.limits.to_dict(),
        search={**config.evolution.to_dict(), 'predictor': config.predictor},
        calibration=config.calibration.to_dict(), selection_images=config.selection_images,
        batch_size=config.batch_size, validation=None if val_data is None else (val_split, len(val_data)),
        latency=latency)


@dataclass(frozen=True)
class _Paths:
    """The files of a search's output folder."""
    output_dir: str
    pareto_json: str
    pareto_md: str
    pareto_png: str
    candidates: str

    @classmethod
    def of(cls, output_dir: str) -> '_Paths':
        return cls(output_dir, *(os.path.join(output_dir, n) for n in (PARETO_JSON, PARETO_MD, PARETO_PNG, CANDIDATES)))


def _open_output(paths: _Paths, header: Mapping[str, Any], space: SearchSpace, resume: bool, state: Any,
                 say: Callable[[str], None], claims: contextlib.ExitStack) -> Tuple[Dict, Dict]:
    """The cached (selection, validation) records: main claims the folder (`claim_folder`, held by `claims` until
    the search ends) and checks it against `resume`, and every process gets the same cache or the same error (else
    the others would wait forever)."""
    from accelerate.utils import broadcast_object_list

    outcome: List[Any] = [None]
    if state.is_main_process:
        try:
            if not resume or os.path.isdir(paths.output_dir):  # a resume of nothing fails below, creating nothing
                claims.enter_context(claim_folder(paths.output_dir, 'search output folder'))
            outcome[0] = ('ok', _prepare_output(paths, header, space, resume, say))
        except FileNotFoundError as e:
            outcome[0] = ('error', 'FileNotFoundError', str(e))
        except (ValueError, OSError) as e:
            outcome[0] = ('error', 'ValueError', str(e) if isinstance(e, ValueError) else
                          f'{paths.output_dir[:300]}: cannot write the search there ({e})')
    if state.num_processes > 1:
        broadcast_object_list(outcome)
    if outcome[0][0] == 'error':
        raise {'ValueError': ValueError, 'FileNotFoundError': FileNotFoundError}[outcome[0][1]](outcome[0][2])
    cached, cached_val = outcome[0][1]
    if cached:
        say(f'resuming: {len(cached)} subnets already evaluated in {paths.candidates}')
    return cached, cached_val


def _prepare_output(paths: _Paths, header: Mapping[str, Any], space: SearchSpace, resume: bool,
                    say: Callable[[str], None]) -> Tuple[Dict, Dict]:
    """Check the output folder against `resume`; return the cached (selection, validation) records."""
    output_dir = paths.output_dir
    if os.path.islink(paths.candidates):  # dangling or not: append_jsonl never writes through it
        raise ValueError(f'{display_path(paths.candidates)}: is a symbolic link; a search writes its own '
                         f'{CANDIDATES}')
    existing = [n for n, p in ((PARETO_JSON, paths.pareto_json), (CANDIDATES, paths.candidates)) if os.path.exists(p)]
    if not resume:
        if existing:
            raise ValueError(f'{output_dir[:300]} already holds a search ({", ".join(existing)}); resume it or '
                             'choose another output folder')
        os.makedirs(output_dir, exist_ok=True)
        write_pareto(paths.pareto_json, pareto_document(header, []))
        return {}, {}
    if PARETO_JSON not in existing:
        raise FileNotFoundError(f'nothing to resume in {output_dir[:300]}: no {PARETO_JSON}')
    check_resume(paths.pareto_json, header)
    end_torn_line(paths.candidates)
    return read_candidates(paths.candidates, space, say)


class _Search:
    """One process's part of a search: scores a generation's new archs (its share of them, cached and logged to
    candidates.jsonl), rewrites the outputs after each generation, and measures the final front on validation."""

    def __init__(self, space: SearchSpace, scorer: Scorer, costs: SubnetCosts, header: Mapping[str, Any],
                 paths: _Paths, cached: Dict, cached_val: Dict, state: Any, generations: int, latency_table: Any,
                 workers: int, progress: bool, say: Callable[[str], None]):
        self.space, self.scorer, self.costs, self.header, self.paths = space, scorer, costs, header, paths
        self.cached, self.cached_val, self.generations = cached, cached_val, generations
        self.rank, self.world, self.main = state.process_index, state.num_processes, state.is_main_process
        self.latency_device = None if latency_table is None else device_text(latency_table.device)
        self.workers, self.progress, self.say = workers, progress and self.main, say
        self.records: Dict[SubnetConfig, Dict[str, Any]] = {}  # every evaluated arch, for the plot and the count

    def evaluate(self, archs: List[SubnetConfig], generation: int) -> List[float]:
        """`evolve`'s evaluation: top-1 of each arch; new ones are dealt round-robin to the processes (sorted, so
        the deal is the same everywhere), each process scores its share grouped by resolution, all gather."""
        from accelerate.utils import gather_object

        todo = sorted((a for a in archs if a not in self.cached), key=arch_key)
        mine = sorted(todo[self.rank::self.world], key=lambda a: (a.resolution, arch_key(a)))
        bar = tqdm(total=len(mine), desc=f'generation {generation}/{self.generations}', leave=False,
                   disable=not self.progress)
        lines = []
        for arch in mine:
            t0 = time.perf_counter()
            top1 = self.scorer.top1(arch)
            line = selection_line(arch, top1, self.costs(arch), generation, self.rank, time.perf_counter() - t0)
            if self.main:  # main's own results are on disk at once; the others' after the gather
                append_jsonl(self.paths.candidates, line)
            lines.append(line)
            bar.update()
        bar.close()
        for line in (gather_object(lines) if self.world > 1 else lines):
            arch = self.space.validate(line['arch'])
            self.cached[arch] = {'arch': arch, 'top1': line['top1']}
            if self.main and line['process'] != self.rank:
                append_jsonl(self.paths.candidates, line)
        return [self.cached[a]['top1'] for a in archs]

    def on_generation(self, gen: Generation) -> None:
        """`evolve`'s callback: rewrite the outputs, so an interrupted search leaves its front so far."""
        self.records.update(gen.archive)
        self.write(gen.front, gen.index, complete=False)
        if gen.front:
            best = max(gen.front, key=lambda r: r['top1'])
            self.say(f'generation {gen.index}/{self.generations}: {len(gen.evaluated)} new, {len(self.records)} '
                     f'evaluated, front of {len(gen.front)} (best top-1 {best["top1"]:.2f} at {best["mflops"]:.2f} '
                     'MFLOPs)')

    def write(self, front: List[Dict[str, Any]], generation: int, complete: bool,
              val: Optional[Mapping[SubnetConfig, float]] = None) -> Dict[str, Any]:
        """pareto.json, pareto.md and pareto.png of `front` (main writes them); returns the document."""
        points = [front_point(r, (val or {}).get(r['arch']), self.latency_device,
                              self.header['selection']['num_images']) for r in front]
        doc = pareto_document(self.header, points,
                              progress_record(generation, self.generations, len(self.records), complete))
        if self.main:
            write_pareto(self.paths.pareto_json, doc)
            write_atomic(self.paths.pareto_md, pareto_report(doc))
            write_atomic(self.paths.pareto_png, plot_front(
                doc['points'], doc['objectives'], evaluated=list(self.records.values()),
                title=f'{doc["supernet"].get("spec") or "supernet"}: generation {generation} of {self.generations}',
                latency_device=doc['latency']['device'] if doc.get('latency') else None))
        return doc

    def validate(self, archs: List[SubnetConfig], data: Any, split: str, batch_size: int
                 ) -> Dict[SubnetConfig, float]:
        """top1_val of each front arch: from the cache, else measured (`validation_top1`) and logged."""
        n = len(data)
        out = {a: self.cached_val[(a, split, n)] for a in archs if (a, split, n) in self.cached_val}
        todo = [a for a in archs if a not in out]
        if todo:
            measured = validation_top1(self.scorer, todo, data, batch_size, self.rank, self.world, self.workers,
                                       self.progress)
            if self.main:
                for arch in todo:
                    append_jsonl(self.paths.candidates, validation_line(arch, measured[arch], split, n))
            out.update(measured)
        return out
