"""The search runner: evolution (`evolution.evolve`) with honest, deterministic scores, sharded over processes,
cached in an append-only ``candidates.jsonl`` and resumable.

Every candidate is scored on the supernet itself (no extraction): its BN statistics are recalibrated on a fixed,
seeded subset of the *training* split (the same images on every process), then top-1 is counted on a disjoint,
seeded held-out subset of the training split. The validation split is used only once the search is done, for the
final Pareto points (``top1_val``), never for selection. Images are decoded once and kept as tensors at the
largest resolution; a candidate's resolution is reached with `resize_to`, as in training.

A generation's new candidates are sorted and dealt round-robin to the processes (any world size), each candidate
is evaluated entirely on one process, and the results are gathered as plain objects; since a score depends only
on the arch, 1 and N processes give identical searches. ``pareto.json``/``.md``/``.png`` are rewritten after every
generation; ``--resume`` replays the seeded evolution with the cached scores, so it ends with exactly the
pareto.json of an uninterrupted run.
"""
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..calibration import CalibrationRecipe, calibrate_bn, disjoint_subsets, load_images, resize_to
from ..cost.flops import count_macs_and_params
from ..cost.slimmable import width_macs_and_params
from ..models import is_supernet
from ..processes import check_world_size, has_accelerator_device
from ..spaces import SearchSpace, SubnetConfig
from ..utils import append_jsonl, read_json_file
from .evolution import EvolutionConfig, Generation, Limits, arch_key, check_limits, evolve
from .pareto import FORMAT, check_objectives, dumps, pareto_report, plot_pareto, write_atomic

__all__ = ['SearchConfig', 'SearchResult', 'run_search', 'default_image_counts', 'read_candidates', 'process_state',
           'CANDIDATES', 'PARETO_JSON']

CANDIDATES, PARETO_JSON, PARETO_MD, PARETO_PNG = 'candidates.jsonl', 'pareto.json', 'pareto.md', 'pareto.png'
MAX_LINE_BYTES = 1 << 16  # a candidate line is a few hundred bytes
MAX_PARETO_BYTES = 64 << 20
CALIB_DEFAULT, SELECTION_DEFAULT = 2048, 5000


def default_image_counts(num_train: int, calib: Optional[int] = None, selection: Optional[int] = None,
                         names: Tuple[str, str] = ('calibration images', 'selection images')) -> Tuple[int, int]:
    """(calibration, selection) image counts for a training split of `num_train` images.

    Defaults: 2048 calibration images or half the split, whichever is smaller; 5000 selection images or 10 % of the
    split, whichever is smaller. Explicit counts are used as given, and refused (naming `names`) if the split
    cannot hold both disjointly.
    """
    if calib is None:
        calib = min(CALIB_DEFAULT, num_train // 2)
    if selection is None:
        selection = min(SELECTION_DEFAULT, num_train // 10)
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


# ---- scoring one subnet (entirely on one process)
class _Scorer:
    """BN-calibrate the supernet for an arch on the calibration images, then count top-1 on the selection images.

    The images stay at the largest resolution; the resized copies of the current resolution are kept, so a process
    that scores its candidates grouped by resolution resizes each set once per group.
    """

    def __init__(self, supernet: nn.Module, calib: torch.Tensor, images: torch.Tensor, targets: torch.Tensor,
                 calib_batch: int, batch_size: int):
        self.supernet, self.calib, self.images, self.targets = supernet, calib, images, targets
        self.calib_batch, self.batch_size = calib_batch, batch_size
        self._resolution, self._calib_at, self._images_at = None, None, None

    def _at(self, resolution: int) -> Tuple[torch.Tensor, torch.Tensor]:
        if resolution != self._resolution:
            self._calib_at = self._images_at = None  # free the previous resolution first
            self._calib_at, self._images_at = resize_to(self.calib, resolution), resize_to(self.images, resolution)
            self._resolution = resolution
        return self._calib_at, self._images_at

    def calibrate(self, arch: SubnetConfig) -> None:
        calib, _ = self._at(arch.resolution)
        self.supernet.set_subnet(arch)
        batches = list(calib.split(self.calib_batch))
        # distributed=False: each process calibrates its own candidate; all use the same images
        calibrate_bn(self.supernet, batches, num_batches=len(batches), distributed=False, progress=False)

    @torch.no_grad()
    def top1(self, arch: SubnetConfig) -> float:
        self.calibrate(arch)
        _, images = self._at(arch.resolution)
        self.supernet.eval()
        correct = 0
        for x, y in zip(images.split(self.batch_size), self.targets.split(self.batch_size)):
            correct += int((self.supernet(x).argmax(-1) == y).sum())
        return 100.0 * correct / len(self.targets)  # an exact count: the same float on every process


def _bn_state(model: nn.Module) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    return [(m.running_mean.clone(), m.running_var.clone()) for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def _load_bn_state(model: nn.Module, state: List[Tuple[torch.Tensor, torch.Tensor]]) -> None:
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m, (mean, var) in zip(bns, state):
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)


# ---- candidates.jsonl: the cache
def _arch_json(arch: Any) -> Dict[str, Any]:
    """An arch as pareto.json and candidates.jsonl hold it: AlphaNet archs with the original keys."""
    return arch.to_original_dict() if hasattr(arch, 'to_original_dict') else arch.to_dict()


def read_candidates(path: str, space: SearchSpace, warn: Callable[[str], None]) -> Tuple[Dict, Dict]:
    """(selection records, validation records) keyed by arch from a candidates.jsonl; corrupt lines are skipped
    with a warning naming the line. A first occurrence wins (later duplicates are ignored)."""
    selection: Dict[SubnetConfig, Dict[str, Any]] = {}
    validation: Dict[Tuple[SubnetConfig, str, int], float] = {}
    if not os.path.exists(path):
        return selection, validation
    with open(path, 'rb') as f:
        for number, raw in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b''), start=1):
            problem = None
            if len(raw) > MAX_LINE_BYTES:
                problem = f'longer than {MAX_LINE_BYTES} bytes'
                while raw and not raw.endswith(b'\n'):  # skip the rest of the long line
                    raw = f.readline(MAX_LINE_BYTES + 1)
            elif not raw.endswith(b'\n'):
                problem = 'truncated (no newline: the run was killed while writing it)'
            else:
                try:
                    rec = json.loads(raw.decode('utf-8'))
                except (ValueError, UnicodeDecodeError) as e:
                    problem = f'not JSON: a write cut short by a kill? {str(e)[:80]}'
            if not problem:
                try:
                    arch = space.validate(rec['arch'])
                    if rec.get('kind') == 'validation':
                        val = _finite(rec['top1_val'])
                        validation.setdefault((arch, str(rec['val_split']), int(rec['val_images'])), val)
                    else:
                        row = {'arch': arch, 'top1': _finite(rec['top1'])}
                        selection.setdefault(arch, row)
                except (ValueError, KeyError, TypeError, AttributeError) as e:
                    problem = f'{type(e).__name__}: {str(e)[:120]}'
            if problem:
                warn(f'{path}: line {number} skipped ({problem})')
    return selection, validation


def _finite(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f'not a finite number: {value!r:.40}')
    return float(value)


def _ends_with_newline(path: str) -> bool:
    with open(path, 'rb') as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b'\n'


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


def _fingerprint(header: Mapping[str, Any]) -> Dict[str, Any]:
    """What must match to resume: everything that changes a score or the search's path (not the generation count,
    so a finished search can be extended)."""
    search = {k: v for k, v in header['search'].items() if k != 'generations'}
    latency = header['latency'] and {k: header['latency'][k] for k in ('sha256', 'device')}
    return {'supernet.sha256': header['supernet']['sha256'], 'space': header['space'],
            'num_classes': header['num_classes'], 'objectives': header['objectives'], 'limits': header['limits'],
            'search': search, 'calibration': header['calibration'], 'selection': header['selection'],
            'latency': latency}


def _read_header(path: str) -> Dict[str, Any]:
    doc = read_json_file(path, MAX_PARETO_BYTES, what='pareto.json')
    try:
        if doc.get('format') != FORMAT:
            raise ValueError(f'format {str(doc.get("format"))[:40]!r}, expected {FORMAT!r}')
        _fingerprint(doc)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f'{path[:300]}: not a readable pareto.json ({str(e)[:200]}); cannot resume from it') from None
    return doc


def _differences(old: Any, new: Any, prefix: str = '') -> List[str]:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(k), new.get(k), f'{prefix}.{k}' if prefix else str(k))
        return out
    return [] if old == new else [f'{prefix} ({str(old)[:60]} there, {str(new)[:60]} here)']


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
            (without `resume`), or a resume that does not match the recorded search.
    """
    from accelerate.utils import broadcast_object_list, gather_object

    if not is_supernet(supernet):
        raise ValueError(f'{type(supernet).__name__} is not a supernet (it has no search space)')
    state = process_state()
    rank, world, main = state.process_index, state.num_processes, state.is_main_process
    say = log if main else (lambda msg: None)
    space: SearchSpace = supernet.space
    recipe, objectives = config.calibration, config.objectives
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
    calib_idx, sel_idx = disjoint_subsets(len(train_data), [recipe.num_images, config.selection_images], recipe.seed)

    header = _header(supernet, config, source, val_data, val_split, latency_table, dataset)
    paths = {name: os.path.join(output_dir, name) for name in (CANDIDATES, PARETO_JSON, PARETO_MD, PARETO_PNG)}

    macs_params: Dict[SubnetConfig, Tuple[int, int]] = {}

    def costs(arch: SubnetConfig) -> Dict[str, Optional[float]]:
        if arch not in macs_params:  # AlphaNet spaces are counted from their specs, width spaces from timm's model
            macs_params[arch] = count_macs_and_params(arch, space, num_classes, in_chans) \
                if isinstance(space, SearchSpace) else width_macs_and_params(supernet, arch)
        macs, params = macs_params[arch]
        latency = latency_table.predict(arch, space) if latency_table is not None else None
        return {'mflops': macs / 1e6, 'params_m': params / 1e6, 'latency_ms': latency}

    check_limits(space, config.limits, costs)  # before anything is written
    expected, first = (in_chans, recipe.image_size, recipe.image_size), train_data[calib_idx[0]][0]
    if tuple(getattr(first, 'shape', ())) != expected:
        raise ValueError(f'the training images are {list(getattr(first, "shape", [type(first).__name__]))}, the '
                         f'calibration recipe says {list(expected)}: give the dataset the recipe\'s transform')

    # ---- the output folder (main decides; every process gets the same cache or the same error)
    outcome: List[Any] = [None]
    if main:
        try:
            outcome[0] = ('ok', _prepare_output(output_dir, paths, header, space, resume, say))
        except FileNotFoundError as e:
            outcome[0] = ('error', 'FileNotFoundError', str(e))
        except (ValueError, OSError) as e:  # every error goes to all processes, or they would wait forever
            outcome[0] = ('error', 'ValueError', str(e) if isinstance(e, ValueError) else
                          f'{output_dir[:300]}: cannot write the search there ({e})')
    if world > 1:
        broadcast_object_list(outcome)
    if outcome[0][0] == 'error':
        raise {'ValueError': ValueError, 'FileNotFoundError': FileNotFoundError}[outcome[0][1]](outcome[0][2])
    cached, cached_val = outcome[0][1]
    if cached:
        say(f'resuming: {len(cached)} subnets already evaluated in {paths[CANDIDATES]}')

    # ---- images: decoded once, same indices on every process
    device = state.device
    supernet.to(device)
    calib_x, _ = load_images(train_data, calib_idx, recipe.batch_size, workers, progress=progress and main,
                             desc='calibration images')
    sel_x, sel_y = load_images(train_data, sel_idx, config.batch_size, workers, progress=progress and main,
                               desc='selection images')
    scorer = _Scorer(supernet, calib_x.to(device), sel_x.to(device), sel_y.to(device), recipe.batch_size,
                     config.batch_size)

    generations = config.evolution.generations
    records: Dict[SubnetConfig, Dict[str, Any]] = {}

    def evaluate(archs: List[SubnetConfig], generation: int) -> List[float]:
        todo = sorted((a for a in archs if a not in cached), key=arch_key)
        mine = sorted(todo[rank::world], key=lambda a: (a.resolution, arch_key(a)))
        bar = tqdm(total=len(mine), desc=f'generation {generation}/{generations}', leave=False,
                   disable=not (progress and main))
        results = []
        for arch in mine:
            t0 = time.perf_counter()
            top1 = scorer.top1(arch)
            line = {'kind': 'selection', 'arch': _arch_json(arch), 'top1': top1, **costs(arch),
                    'generation': generation, 'process': rank, 'eval_s': round(time.perf_counter() - t0, 4)}
            if main:  # main's own results are on disk at once; the others' after the gather
                append_jsonl(paths[CANDIDATES], line)
            results.append(line)
            bar.update()
        bar.close()
        gathered = gather_object(results) if world > 1 else results
        for line in gathered:
            arch = space.validate(line['arch'])
            cached[arch] = {'arch': arch, 'top1': line['top1']}
            if main and line['process'] != rank:
                append_jsonl(paths[CANDIDATES], line)
        return [cached[a]['top1'] for a in archs]

    device = None if latency_table is None else _device_text(latency_table.device)

    def write(front: List[Dict[str, Any]], generation: int, complete: bool, val: Mapping = None) -> Dict[str, Any]:
        doc = {**header, 'progress': {'generations_done': generation, 'generations': generations,
                                      'evaluated': len(records), 'complete': complete},
               'points': [_point(r, (val or {}).get(r['arch']), device) for r in front]}
        if main:
            write_atomic(paths[PARETO_JSON], dumps(doc))
            write_atomic(paths[PARETO_MD], pareto_report(doc))
            plot_pareto(paths[PARETO_PNG], doc, list(records.values()))
        return doc

    def on_generation(gen: Generation) -> None:
        records.update(gen.archive)
        write(gen.front, gen.index, complete=False)
        if gen.front:
            best = max(gen.front, key=lambda r: r['top1'])
            say(f'generation {gen.index}/{generations}: {len(gen.evaluated)} new, {len(records)} evaluated, front of '
                f'{len(gen.front)} (best top-1 {best["top1"]:.2f} at {best["mflops"]:.2f} MFLOPs)')

    prerank = None
    if config.predictor:
        from .predictor import make_prerank
        prerank = make_prerank(space, objectives, costs, seed=config.evolution.seed, main=main, world=world)
    result = evolve(space, evaluate, costs, config.evolution, config.limits, objectives, on_generation, prerank)
    records.update(result.archive)

    val = {}
    if val_data is not None and result.front:
        val = _validate_front(scorer, [r['arch'] for r in result.front], val_data, val_split, cached_val,
                              config.batch_size, rank, world, main, paths[CANDIDATES], workers, progress)
    doc = write(result.front, generations, complete=True, val=val)
    return SearchResult(doc['points'], len(records), output_dir, doc)


def _header(supernet: nn.Module, config: SearchConfig, source: Optional[Mapping[str, Any]], val_data: Any,
            val_split: str, latency_table: Any, dataset: Optional[str]) -> Dict[str, Any]:
    """pareto.json without progress and points: the supernet, the space, and everything that decides the scores."""
    recipe = config.calibration
    latency = None
    if latency_table is not None:
        digest = hashlib.sha256(json.dumps(latency_table.to_dict(), sort_keys=True).encode()).hexdigest()
        latency = {'source': latency_table.source, 'device': latency_table.device, 'sha256': digest}
    return {
        'format': FORMAT,
        'supernet': dict(source) if source is not None else {'spec': None, 'sha256': _weights_digest(supernet)},
        'dataset': dataset,
        'space': supernet.space.to_dict(), 'num_classes': supernet.num_classes, 'objectives': list(config.objectives),
        'limits': config.limits.to_dict(),
        'search': {**config.evolution.to_dict(), 'predictor': config.predictor},
        'calibration': recipe.to_dict(),
        'selection': {'split': recipe.split, 'num_images': config.selection_images, 'seed': recipe.seed,
                      'disjoint_from': 'calibration', 'batch_size': config.batch_size, 'metric': 'top-1 %'},
        'validation': {'split': val_split, 'num_images': len(val_data)} if val_data is not None else None,
        'latency': latency,
    }


def _device_text(device: Mapping[str, Any]) -> str:
    return (f'{device["type"]} {device["name"]}, {device["threads"]} threads, {device["dtype"]}, '
            f'{device["memory_format"]}, batch {device["batch_size"]}')


def _point(record: Mapping[str, Any], top1_val: Optional[float], latency_device: Optional[str]) -> Dict[str, Any]:
    return {'arch': _arch_json(record['arch']), 'mflops': record['mflops'], 'params_m': record['params_m'],
            'latency_ms': record['latency_ms'], 'latency_device': latency_device, 'top1': record['top1'],
            'top1_val': top1_val}


def _prepare_output(output_dir: str, paths: Mapping[str, str], header: Mapping[str, Any], space: SearchSpace,
                    resume: bool, say: Callable[[str], None]) -> Tuple[Dict, Dict]:
    """Check the output folder against `resume`; return the cached (selection, validation) records."""
    existing = [n for n in (PARETO_JSON, CANDIDATES) if os.path.exists(paths[n])]
    if not resume:
        if existing:
            raise ValueError(f'{output_dir[:300]} already holds a search ({", ".join(existing)}); resume it or '
                             'choose another output folder')
        os.makedirs(output_dir, exist_ok=True)
        write_atomic(paths[PARETO_JSON], dumps({**header, 'progress': None, 'points': []}))
        return {}, {}
    if PARETO_JSON not in existing:
        raise FileNotFoundError(f'nothing to resume in {output_dir[:300]}: no {PARETO_JSON}')
    old = _read_header(paths[PARETO_JSON])
    diff = _differences(_fingerprint(old), _fingerprint(header))
    if diff:
        raise ValueError(f'cannot resume {paths[PARETO_JSON][:300]}: it records a different search: '
                         + '; '.join(diff[:5]) + (f' (+{len(diff) - 5} more)' if len(diff) > 5 else ''))
    if os.path.exists(paths[CANDIDATES]) and not _ends_with_newline(paths[CANDIDATES]):
        with open(paths[CANDIDATES], 'a') as f:  # end the torn line, so the next record starts a line of its own
            f.write('\n')
    return read_candidates(paths[CANDIDATES], space, say)


def _validate_front(scorer: _Scorer, archs: List[SubnetConfig], val_data: Any, val_split: str,
                    cached: Mapping[Tuple[SubnetConfig, str, int], float], batch_size: int, rank: int, world: int,
                    main: bool, candidates: str, workers: int, progress: bool) -> Dict[SubnetConfig, float]:
    """top1 on the whole validation split for each front arch: one pass over the data (sharded by process), every
    arch with its own calibrated BN statistics; integer counts are summed, so any world size gives the same value."""
    from accelerate.utils import gather_object
    from torch.utils.data import DataLoader, Subset

    n = len(val_data)
    out = {a: cached[(a, val_split, n)] for a in archs if (a, val_split, n) in cached}
    todo = [a for a in archs if a not in out]
    if not todo:
        return out
    states = {}
    for arch in todo:  # every process calibrates every arch: same images, same statistics
        scorer.calibrate(arch)
        states[arch] = _bn_state(scorer.supernet)
    model, device = scorer.supernet, scorer.images.device
    model.eval()
    correct = {a: 0 for a in todo}
    loader = DataLoader(Subset(val_data, range(rank, n, world)), batch_size=batch_size, shuffle=False,
                        num_workers=workers)
    with torch.no_grad():
        for x, y in tqdm(loader, desc='validating the front', leave=False, disable=not (progress and main)):
            x, y = x.to(device), torch.as_tensor(y).to(device)
            for arch in todo:
                model.set_subnet(arch)
                _load_bn_state(model, states[arch])
                correct[arch] += int((model(resize_to(x, arch.resolution)).argmax(-1) == y).sum())
    counts = [[_arch_json(a), correct[a]] for a in todo]
    gathered = gather_object(counts) if world > 1 else counts
    totals: Dict[SubnetConfig, int] = {}
    for arch_dict, c in gathered:
        arch = scorer.supernet.space.validate(arch_dict)
        totals[arch] = totals.get(arch, 0) + c
    for arch in todo:
        out[arch] = 100.0 * totals[arch] / n
        if main:
            append_jsonl(candidates, {'kind': 'validation', 'arch': _arch_json(arch), 'top1_val': out[arch],
                                     'val_split': val_split, 'val_images': n})
    return out
