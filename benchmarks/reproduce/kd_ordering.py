#!/usr/bin/env python3
"""Miniature of the paper's ordering claim: adaptive alpha-KD vs KL-KD vs no KD, per subnet and per student.

Every run goes through the library's trainer (`timm_alphanet.train.run` with a `TrainConfig`), so what is measured is
what ``train.py`` trains. Three methods, the same budget (data, epochs, batch, optimizer, schedule, augmentation) and
the same seeds for each; only the KD loss differs:

* **supernet** (AlphaNet, the sandwich rule on a small space): *no KD* = in-place KD off (the random and min subnets
  learn from the labels, like the max one); *KL* / *alpha* = in-place KD from the max subnet with that loss.
  Reported: top-1 of the BN-calibrated max, min and one fixed random subnet.
* **students** (the paper's standard-KD table): a MobileNetV2 1.0x teacher is trained first (labels only, with
  augmentation) on the training images the students never see, saved, and loaded by every KD run as ``local-dir:``;
  the students are MobileNetV2 0.5x and 0.35x and a small ViT (DeiT-tiny's architecture scaled to the images).
  *no KD* = label loss only; *KL* / *alpha* = ``(1 - l) label loss + l KD loss`` (``--kd-share`` l, default the
  paper's 0.9; temperature 1), so every method has the label loss's scale (weights 1 + 1 doubled the step size).

The protocol is `_protocol.py`'s (shared with the other reproductions); the report states the teacher's information
on the students' images, the hypotheses' one-sided tests and the smallest effect the seeds could detect, and, next to
top-1, each student's departure from the teacher on the validation images (`timm_alphanet.evaluation.kd_report`: KL,
D_-1, entropy gap, q - p on the teacher's top and secondary classes, agreement where the teacher is unsure).
Every supernet and student starts from a zero-initialised classifier (``head_init: zero``; the report gives the
initial logit scale, 0, next to timm's default). Each method's lr (per row: supernet, each student) is chosen with
`protocol.choose_lr` from the same grid, ``--lr`` x ``--lr-grid-factors`` (the protocol's 0.25, 0.5, 1, 2), by
held-out top-1 of tuning runs (``--tuning-seeds``, disjoint from ``--seeds``) that train on the students' fit part and
are scored on a held-out 20% of the students' training images: the same number of tuning runs for every method, the
validation images never used to choose. Tuning runs are recorded in ``results.jsonl`` like the others.
``--no-tune`` trains every run at ``--lr`` instead.

Default data: scikit-learn's bundled digits (no download), a fixed 30% of its training split (434 images, the same
for every run) at 12 px, without augmentation, for the students: 345 to train on, 89 held out to choose the lr;
the other 70% for the teacher; the 355 validation images give the top-1. Digits at full size are
nearly solved (~98%); few images and a low resolution keep the students well below that (60-85% measured), so
differences can show. The small supernet still reaches 96-98% at this size: its part is near the ceiling.
Budget: SGD (nesterov, lr 0.02, cosine, 1 warm-up epoch), batch 32, label smoothing 0.1, gradients clipped by value at
1.0, 30 epochs for every supernet and student run; the teacher gets 90 (its job is to be better than the students).

Outputs in ``--output``: ``kd_ordering.md`` (tables), ``kd_ordering.json`` (settings, machine, wall time and every
per-seed value), ``kd_ordering.png``; ``results.jsonl`` records each finished run, so a rerun with the same settings
continues where an interrupted one stopped; ``runs/<run>/`` holds each run's summary (the teacher's ``final/``
model too), ``logs/<run>.txt`` its output.

    python benchmarks/reproduce/kd_ordering.py                     # the miniature (5 seeds x 3 methods x 4 rows)

The default is 109 runs: the teacher, 48 tuning runs (4 rows x 3 methods x 4 lrs x 1 tuning seed) and 60 reported
ones (4 rows x 3 methods x 5 seeds), about an hour of CPU time (half an hour of wall time on 2 free cores, 1 thread
per run, 2 in parallel); the report states each run's CPU time.
    python benchmarks/reproduce/kd_ordering.py --parts students --seeds 0 1 2 3 4 5 6 7 8 9 --epochs 60
    # full scale: each run is distributed over the launched processes, runs follow one another
    accelerate launch --multi_gpu --num_processes 8 benchmarks/reproduce/kd_ordering.py --parts students \\
        --students-config train_configs/kd_mobilenetv2_050_in1k.yaml --students mobilenetv2_050 mobilenetv2_035 \\
        --trained-teacher mobilenetv2_100.ra_in1k --data-dir /data/imagenet --dataset '' --resolution 224 \\
        --tune-data-dir /data/imagenet-heldout   # train/: part of ImageNet's training set, validation/: the rest of it
    (the DeiT row likewise: --students-config train_configs/kd_deit_tiny_in1k.yaml --students
    deit_tiny_distilled_patch16_224 --trained-teacher regnety_160.deit_in1k)
"""
import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import random
import shutil
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/: the shared machine description
sys.path.insert(0, str(HERE.parent.parent))  # the repository: run without installing
sys.path.insert(0, str(HERE))  # reproduce/: the shared protocol

import _protocol as protocol  # noqa: E402

from _machine import machine_info, machine_line  # noqa: E402
from _stats import mean_std, t_quantile_975  # noqa: E402
from _timing import timed  # noqa: E402

from timm_alphanet.utils import staged_directory, write_atomic  # noqa: E402

METHODS = ('none', 'kl', 'alpha')
# `kd_report`'s figures the students' table shows (means over the validation images, then over seeds)
MECHANISM_COLUMNS = ('kl', 'd_minus1', 'entropy_gap', 'top_gap', 'secondary_gap', 'agree_unsure')
METHOD_NAMES = {'none': 'no KD', 'kl': 'KL-KD', 'alpha': 'alpha-KD'}
PARTS = ('supernet', 'students')
VIT = 'vit'  # the small ViT student: DeiT-tiny's architecture scaled to the images (see `vit_student`)
PLACEHOLDER_TEACHER = 'test_efficientnet'  # tiny; its logits get weight 0 (see `label_only`)

def mini_space(resolution: int) -> Dict[str, Any]:
    """The trainer's demo space (`DEMO_SPACE`, made for 32 px) for `resolution` px inputs: stride-1 stem, resolutions
    `resolution` and 2 px less; 15-60k parameters."""
    from timm_alphanet.archs import DEMO_SPACE
    space = json.loads(json.dumps(DEMO_SPACE))  # a deep copy
    space['first_conv']['s'] = 1  # three stride-2 stages are enough for ~12 px
    space['resolutions'] = sorted({max(4, resolution - 2), resolution})
    return space


# The miniature's training settings, the same for every method (and for the teacher, except its epochs).
# Gradients are clipped by value at 1.0 as in the paper's supernet recipe: timm's MobileNetV2 init gives ~4.5-std
# logits for 10 classes, and without clipping the first epochs' loss spikes dominated the spread between seeds.
MINI_COMMON: Dict[str, Any] = dict(
    dataset='', batch_size=32, opt='sgd', lr=0.02, momentum=0.9, weight_decay=1e-5, sched='cosine', warmup_epochs=1,
    smoothing=0.1, no_aug=True, crop_pct=1.0, clip_grad=1.0, clip_mode='value', workers=0, bn_calib_batches=4)
MINI_EPOCHS = {'supernet': 30, 'students': 30, 'teacher': 90}  # a teacher trained longer: better than its students
# The protocol (`_protocol`): the miniature's teacher learns on the training images the students never see, with
# augmentation (random resized crops; no flips: a mirrored digit is another digit or none), so its soft labels carry
# information on the students' inputs; KD students train on (1 - l) CE + l KD, the label loss's scale.
TEACHER_AUG: Dict[str, Any] = dict(no_aug=False, scale=(0.6, 1.0), hflip=0.0)
KD_SHARE = 0.9  # l: the paper's only combined loss, 0.9 KD + 0.1 CE
HOLDOUT = 0.2  # the share of the students' training images held out to choose each method's lr
TUNING_SEEDS = (1000,)  # tuning runs per lr and method: disjoint from the reported seeds (0 .. 4)


@dataclasses.dataclass(frozen=True)
class Job:
    """One training run: `key` names it (``part/model/method/s<seed>``), `needs` the run it waits for."""
    key: str
    part: str
    model: str
    method: str
    seed: int
    cfg: Any  # TrainConfig
    inplace_kd: bool = True
    needs: Optional[str] = None
    keep_final: bool = False
    mechanism_teacher: Optional[str] = None  # a student's: measure `kd_mechanism` against this teacher after training
    tuning_lr: Optional[float] = None  # a tuning run's lr (trained on the fit part, scored on the held-out part)

    @property
    def row(self) -> str:
        """What gets one lr: ``<part>/<model>/<method>``."""
        return f'{self.part}/{self.model}/{self.method}'


# ---- data and models written once
def digits_subset(root: Path, fraction: float, size: int = 32, rest: bool = False) -> Path:
    """A fixed `fraction` of the digits training split (per class, `random.Random(0)`) and the whole validation split,
    as an image folder under `root` (written once, atomically). `rest`: the training images *not* in that fraction
    instead (the teacher's split: disjoint from the students')."""
    from timm_alphanet.data import build_digits_folder
    folder = root / (f'digits{size}_train{fraction:g}' + ('_rest' if rest else ''))
    if (folder / 'train').is_dir():
        return folder
    source = build_digits_folder(root / f'digits{size}', size=size)
    rng = random.Random(0)  # the subset never depends on the run's seed: every method sees the same images
    with staged_directory(folder, if_exists='keep') as tmp:  # another process may write it first: keep that one
        for split in ('train', 'validation'):
            for label in sorted(os.listdir(source / split)):
                files = sorted(os.listdir(source / split / label))
                if split == 'train':
                    chosen = set(rng.sample(files, max(1, round(fraction * len(files)))))
                    files = sorted(f for f in files if (f in chosen) != rest)
                (tmp / split / label).mkdir(parents=True)
                for name in files:
                    shutil.copyfile(source / split / label / name, tmp / split / label / name)
    return folder


def saved_model(root: Path, name: str, **kwargs: Any) -> str:
    """``local-dir:`` spec of a randomly initialised timm model `name` (with `kwargs`), written once under `root`.

    timm records the kwargs in config.json, so the trainer builds the same architecture from the folder (its weights
    are unused: students start from a seeded random init, and a placeholder teacher's logits get weight 0).
    """
    import timm
    from timm_alphanet.export import save_pretrained
    tag = hashlib.sha1(json.dumps([name, kwargs], sort_keys=True).encode()).hexdigest()[:8]
    folder = root / f'{name}-{tag}'
    if not (folder / 'config.json').is_file():
        save_pretrained(timm.create_model(name, **kwargs), folder, overwrite=True)
    return f'local-dir:{folder}'


def vit_student(root: Path, resolution: int) -> str:
    """DeiT-tiny's architecture (``deit_tiny_patch16_224``) scaled to `resolution` px: a 4x4 patch grid, width 96,
    6 blocks, 3 heads (~0.68 M parameters, about MobileNetV2 0.5x)."""
    patch = max(1, resolution // 4)
    return saved_model(root, 'deit_tiny_patch16_224', num_classes=10, img_size=resolution, patch_size=patch,
                       embed_dim=96, depth=6, num_heads=3)


# ---- the run plan
def _base_config(path: Optional[str], defaults: Dict[str, Any]):
    from timm_alphanet.train import TrainConfig
    return TrainConfig.from_yaml(path) if path else TrainConfig(**defaults)


def _overrides(args: argparse.Namespace, data_dir: Optional[str], epochs: Optional[int]) -> Dict[str, Any]:
    out: Dict[str, Any] = dict(args.set)
    out.setdefault('head_init', 'zero')  # the protocol's start: every logit 0 (`--set head_init=default`: timm's)
    out.update(no_progress=True, checkpoint_hist=1, output=str(args.output / 'runs'))
    for key, value in (('data_dir', data_dir), ('dataset', args.dataset), ('batch_size', args.batch_size),
                       ('epochs', epochs), ('lr', args.lr)):
        if value is not None:
            out[key] = value
    return out


def without_distillation_token(model: str) -> str:
    """DeiT's no-KD baseline for a distilled DeiT (``deit_*_distilled_*``): the same model without the distillation
    token and head (with KD weight 0 that head would learn nothing, yet count half of every prediction)."""
    import timm
    plain = model.replace('_distilled', '')
    return plain if plain != model and timm.is_model(plain) else model


def label_only(cfg, placeholder: str):
    """`cfg` training its model from the labels alone.

    The trainer has no plain-classification path for a static model (it asks for a teacher), so this is its KD path
    with KD weight 0 and a tiny placeholder teacher: the loss is exactly the label loss (0 x a finite KD term), and
    the placeholder's forward costs time, not accuracy.
    """
    return cfg.replace(teacher=placeholder, kd_weight=0.0, task_weight=None)


def _world_size() -> int:
    return int(os.environ.get('WORLD_SIZE', '1'))


def lr_grid(args: argparse.Namespace, cfg) -> List[float]:
    """The lrs every method is tuned over: the run's lr (``cfg.lr``, or the recipe's rule, lr_base x the global
    batch over the launched processes) x ``--lr-grid-factors`` (the protocol's grid)."""
    from timm_alphanet.train import learning_rate
    return [round(learning_rate(cfg, _world_size()) * f, 12) for f in args.lr_grid_factors]


def _tuning_jobs(args: argparse.Namespace, job: Job, tune_dir: Optional[str]) -> List[Job]:
    """`job`'s tuning runs: every lr of the grid x every tuning seed, on the tuning folder (fit part -> held-out
    part); the same number for every method and row. None without tuning."""
    if not args.tune:
        return []
    out = []
    for lr in lr_grid(args, job.cfg):
        for seed in args.tuning_seeds:
            cfg = job.cfg.replace(lr=lr, seed=seed, data_dir=tune_dir, dataset='',
                                  experiment=f'tune-{job.cfg.experiment.rsplit("-s", 1)[0]}-lr{lr:g}-s{seed}')
            out.append(dataclasses.replace(job, key=f'tune/{job.row}/lr{lr:g}/s{seed}', seed=seed, cfg=cfg,
                                           mechanism_teacher=None, tuning_lr=lr))
    return out


def plan(args: argparse.Namespace, lrs: Optional[Dict[str, float]] = None) -> List[Job]:
    """All runs: the teacher first (students need it), the tuning runs, the supernet runs, then the student runs.

    A reported run's lr is ``lrs[job.row]`` (`choose_lrs`, once the tuning runs are done), else the base lr."""
    import timm_alphanet  # noqa: F401  (registers the supernet)
    from timm_alphanet.spaces import SearchSpace
    from timm_alphanet.train import TrainConfig

    models = args.output / 'models'
    models.mkdir(parents=True, exist_ok=True)
    data_dir, tune_dir = args.data_dir, args.tune_data_dir
    if data_dir is None and args.dataset in (None, '') and args.tune:  # students: fit part (reported) + held-out
        fit, tune = protocol.holdout_folders(digits_subset(args.output / 'data', args.train_fraction),
                                             args.holdout_fraction)
        data_dir, tune_dir = str(fit), tune_dir or str(tune)
    elif data_dir is None and args.dataset in (None, ''):  # --no-tune: nothing to hold out
        data_dir = str(digits_subset(args.output / 'data', args.train_fraction))
    lrs = lrs or {}
    tuning: List[Job] = []
    mini = dict(MINI_COMMON, input_size=(3, args.resolution, args.resolution))
    jobs: List[Job] = []

    if 'supernet' in args.parts:
        if args.supernet_config:
            base = TrainConfig.from_yaml(args.supernet_config)
        else:
            base = TrainConfig(model='alphanet_supernet', space=mini_space(args.resolution), num_subnets=4,
                               **{k: v for k, v in mini.items() if k != 'input_size'}, epochs=MINI_EPOCHS['supernet'])
        base = base.replace(**_overrides(args, data_dir, args.supernet_epochs))
        space = SearchSpace.coerce(base.space) if base.space is not None else None
        if space is not None and not base.eval_archs:  # max and min always; one fixed random subnet in between
            base = base.replace(eval_archs=(space.sample(random.Random(0)).to_dict(),))
        for seed in args.seeds:
            for method in METHODS:
                cfg = base.replace(seed=seed, kd_loss='kl' if method == 'kl' else 'alpha', teacher='',
                                   experiment=f'supernet-{method}-s{seed}')
                job = Job(f'supernet/{method}/s{seed}', 'supernet', 'supernet', method, seed, cfg,
                          inplace_kd=method != 'none')
                if seed == args.seeds[0]:
                    tuning += _tuning_jobs(args, job, tune_dir)
                jobs.append(dataclasses.replace(job, cfg=cfg.replace(lr=lrs.get(job.row, cfg.lr))))

    if 'students' in args.parts:
        base = _base_config(args.students_config, dict(mini, epochs=MINI_EPOCHS['students']))
        if args.students_config is None or args.resolution_given:
            base = base.replace(input_size=(3, args.resolution, args.resolution))
        base = base.replace(**_overrides(args, data_dir, args.epochs))
        placeholder = saved_model(models, PLACEHOLDER_TEACHER, num_classes=10)
        needs = None
        teacher_spec = args.trained_teacher
        if teacher_spec is None:  # train the teacher first, from the labels
            teacher_cfg = label_only(base.replace(model=args.teacher, seed=args.teacher_seed, experiment='teacher'),
                                     placeholder)
            if args.teacher_epochs is not None or args.students_config is None:
                teacher_cfg = teacher_cfg.replace(epochs=args.teacher_epochs or MINI_EPOCHS['teacher'])
            if args.students_config is None:  # the miniature: the protocol's teacher (augmented, disjoint images)
                teacher_cfg = teacher_cfg.replace(**TEACHER_AUG)
            if args.data_dir is None and args.dataset in (None, ''):
                teacher_cfg = teacher_cfg.replace(data_dir=str(digits_subset(args.output / 'data', args.train_fraction,
                                                                             rest=True)))
            jobs.insert(0, Job('teacher', 'teacher', args.teacher, 'none', args.teacher_seed, teacher_cfg,
                               keep_final=True))
            needs, teacher_spec = 'teacher', f'local-dir:{args.output / "runs" / "teacher" / "final"}'
        for student in args.students:
            model = vit_student(models, args.resolution) if student == VIT else student
            for seed in args.seeds:
                for method in METHODS:
                    cfg = base.replace(model=model, seed=seed, experiment=f'{student}-{method}-s{seed}')
                    if method == 'none':
                        cfg = label_only(cfg.replace(model=without_distillation_token(model)), placeholder)
                    else:  # (1 - l) CE + l KD: the loss scale of the label loss alone
                        task_weight, kd_weight = protocol.convex_weights(args.kd_share)
                        cfg = cfg.replace(teacher=teacher_spec, kd_loss=method, kd_weight=kd_weight,
                                          task_weight=round(task_weight, 12))
                    job = Job(f'students/{student}/{method}/s{seed}', 'students', student, method, seed, cfg,
                              needs=needs, mechanism_teacher=teacher_spec)
                    if seed == args.seeds[0]:
                        tuning += _tuning_jobs(args, job, tune_dir)
                    jobs.append(dataclasses.replace(job, cfg=cfg.replace(lr=lrs.get(job.row, cfg.lr))))
    first = 1 if jobs and jobs[0].part == 'teacher' else 0
    return jobs[:first] + tuning + jobs[first:]


def choose_lrs(jobs: List[Job], done: Dict[str, Dict[str, Any]]) -> Tuple[Dict[str, float], Dict[str, Any]]:
    """Each row's lr (`protocol.choose_lr` over its tuning runs' held-out top-1; a supernet's: the mean over its
    validated subnets) and, per row, the grid, the tuning seeds and each lr's mean held-out top-1."""
    rows: Dict[str, Dict[Tuple[float, int], Job]] = {}
    for job in jobs:
        if job.tuning_lr is not None:
            rows.setdefault(job.row, {})[(job.tuning_lr, job.seed)] = job
    lrs, tuning = {}, {}
    for row, runs in rows.items():
        grid = sorted({lr for lr, _ in runs})
        seeds = sorted({seed for _, seed in runs})

        def score(lr: float, seed: int, runs: Dict[Tuple[float, int], Job] = runs) -> float:
            return statistics.fmean(done[runs[(lr, seed)].key]['top1'].values())
        lrs[row], means = protocol.choose_lr(grid, score, seeds)
        tuning[row] = {'grid': grid, 'tuning_seeds': seeds, 'runs': len(runs), 'chosen': lrs[row],
                       'held_out_top1': {f'{lr:g}': v for lr, v in means.items()}}
    return lrs, tuning


def fingerprint(job: Job, done: Dict[str, Dict[str, Any]]) -> str:
    """What makes a finished run reusable: its config (without where it is written), its switches and, for a student,
    the teacher's fingerprint."""
    cfg = {k: v for k, v in job.cfg.to_dict().items() if k not in ('output', 'no_progress')}
    parts = [json.dumps(cfg, sort_keys=True, default=str), str(job.inplace_kd)]
    if job.needs:
        parts.append(done.get(job.needs, {}).get('fingerprint', ''))
    return hashlib.sha1('\n'.join(parts).encode()).hexdigest()


# ---- running one job (in this process or in a worker process)
@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors, so logging and C code too) to `path`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, 'a') as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _run_without_inplace_kd(cfg):
    """`run(cfg)` with in-place KD off (the supernet's no-KD baseline)."""
    from timm_alphanet.train import run
    return run(cfg.replace(inplace_kd=False))


def _log_path(job: Job) -> Path:
    """Where a run's output goes: ``<output>/logs/<run>.txt``."""
    return Path(job.cfg.output).parent / 'logs' / f'{job.cfg.experiment}.txt'


def train_job(job: Job, threads: int, keep: bool) -> Dict[str, Any]:
    """Train `job` through the trainer; returns {'key', 'top1': {subnet or student: top-1}, 'seconds' (wall),
    'cpu_seconds'}."""
    import torch

    from timm_alphanet.train import run
    if threads:
        torch.set_num_threads(threads)
    run_dir = Path(job.cfg.output) / job.cfg.experiment
    shutil.rmtree(run_dir, ignore_errors=True)  # a run interrupted before: start it again, whole
    log = _log_path(job)  # outside the run folder: the trainer starts a new run only in an empty one
    log.parent.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    cpu0 = time.process_time()  # this process's CPU time (all its threads): the run's cost whatever the load
    with _output_to(log):
        results, seconds = timed(lambda: run(job.cfg) if job.inplace_kd else _run_without_inplace_kd(job.cfg))
    cpu_seconds = time.process_time() - cpu0
    mechanism = None
    if job.mechanism_teacher and _world_size() == 1:  # before the final model is removed
        mechanism = mechanism_figures(run_dir / 'final', job.mechanism_teacher, job.cfg)
    if not keep:  # the result is recorded; checkpoints are only needed to resume this run
        shutil.rmtree(run_dir / 'checkpoints', ignore_errors=True)
        if not job.keep_final:
            shutil.rmtree(run_dir / 'final', ignore_errors=True)
    names = {'arch0': 'random'}
    top1 = {(job.model if n == 'student' else names.get(n, n)): r['top1'] for n, r in results.items()}
    out = {'key': job.key, 'top1': top1, 'seconds': seconds, 'cpu_seconds': cpu_seconds}
    if mechanism is not None:
        out['mechanism'] = mechanism
    return out


def mechanism_figures(student_dir: Path, teacher: str, cfg) -> Dict[str, float]:
    """`timm_alphanet.evaluation.kd_report` of a trained student against `teacher` on the validation images (the
    student's eval pipeline, the teacher loaded and fed as in training): the paper's mechanism next to top-1, for
    every method (no KD too: how far the labels alone leave the student from the teacher)."""
    import timm
    import torch
    from accelerate import Accelerator

    from timm_alphanet.data import open_image_dataset
    from timm_alphanet.evaluation import kd_report_model
    from timm_alphanet.task import AlphaDistillationTask
    student = timm.create_model(f'local-dir:{student_dir}', pretrained=True).eval()
    task = AlphaDistillationTask(student, teacher, verbose=False)
    dataset = open_image_dataset(cfg.dataset or '', cfg.data_dir, cfg.val_split)
    report = kd_report_model(Accelerator(cpu=not torch.cuda.is_available()), student, task.teacher_logits, dataset,
                             batch_size=cfg.batch_size)
    return {k: v for k, v in report.items() if isinstance(v, float)}


def _worker_init(threads: int) -> None:
    import torch
    torch.set_num_threads(max(1, threads))


def execute(jobs: List[Job], done: Dict[str, Dict[str, Any]], n_jobs: int, threads: int, keep: bool,
            record: Callable[[Job, Dict[str, Any]], None]) -> List[str]:
    """Run the jobs not in `done` (each after the one it needs), `n_jobs` at a time (worker processes; in this process
    when 1); `record(job, result)` is called as each finishes. Returns a message per failed or skipped run."""
    from tqdm.auto import tqdm
    todo = [j for j in jobs if j.key not in done]
    failed: Dict[str, str] = {}
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc='runs', unit='run', dynamic_ncols=True)

    def finish(job: Job, get_result: Callable[[], Dict[str, Any]]) -> None:
        try:
            result = get_result()
        except Exception as e:  # noqa: BLE001 - reported with the run's log; the other runs go on
            log = _log_path(job)
            failed[job.key] = f'{job.key}: {type(e).__name__}: {str(e)[:300]} (log: {log})'
            return
        result['fingerprint'] = fingerprint(job, done)
        done[job.key] = result
        record(job, result)
        bar.set_postfix_str(f'{job.key}: ' + ', '.join(f'{k} {v:.1f}' for k, v in result['top1'].items()))
        bar.update(1)

    def next_ready(limit: int) -> List[Job]:
        for job in [j for j in todo if j.needs in failed]:  # its teacher failed: nothing to distil from
            todo.remove(job)
            failed[job.key] = f'{job.key}: skipped, {job.needs} failed'
        ready = [j for j in todo if j.needs is None or j.needs in done][:limit]
        for job in ready:
            todo.remove(job)
        return ready

    if n_jobs <= 1:
        while todo:
            ready = next_ready(1)
            if not ready:  # cannot happen with plan()'s order; never loop forever
                failed.update({j.key: f'{j.key}: {j.needs} never ran' for j in todo})
                break
            finish(ready[0], lambda: train_job(ready[0], threads, keep))
    else:
        import multiprocessing
        with ProcessPoolExecutor(n_jobs, mp_context=multiprocessing.get_context('spawn'), initializer=_worker_init,
                                 initargs=(threads,)) as pool:
            running: Dict[Any, Job] = {}
            while todo or running:
                for job in next_ready(n_jobs - len(running)):
                    running[pool.submit(train_job, job, threads, keep)] = job
                if not running:
                    continue
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    finish(running.pop(future), future.result)
    bar.close()
    return list(failed.values())


def teacher_information(jobs: List[Job]) -> Optional[Dict[str, float]]:
    """The protocol's check that the trained teacher has something to teach the students: its top-1 and KL to the
    smoothed labels on the students' training images (eval transform, as KD sees them up to augmentation); None
    without a trained teacher or an image folder."""
    teacher = next((j for j in jobs if j.part == 'teacher'), None)
    student = next((j for j in jobs if j.part == 'students' and j.tuning_lr is None), None)
    if teacher is None or student is None or student.cfg.dataset not in (None, '') or not student.cfg.data_dir:
        return None
    import timm
    import torch
    from torch.utils.data import DataLoader

    from timm_alphanet.data import open_image_dataset
    from timm_alphanet.evaluation import eval_pipeline
    model = timm.create_model(f'local-dir:{Path(teacher.cfg.output) / teacher.cfg.experiment / "final"}',
                              pretrained=True).eval()
    dataset = open_image_dataset('', student.cfg.data_dir, 'train')
    dataset.transform, _ = eval_pipeline(model)
    logits, labels = [], []
    with torch.no_grad():
        for x, y in DataLoader(dataset, batch_size=128):
            logits.append(model(x))
            labels.append(y)
    return protocol.teacher_information(torch.cat(logits), torch.cat(labels), student.cfg.smoothing)


def initial_logit_scales(jobs: List[Job]) -> Dict[str, Dict[str, float]]:
    """Per row (supernet, each student): `protocol.logit_scale` of the model as the trainer builds it (seed and
    ``head_init`` of its first reported run) on one batch of its training images, and with timm's default head for
    comparison. 0 for a zero-initialised classifier."""
    out: Dict[str, Dict[str, float]] = {}
    for job in jobs:
        name = 'supernet' if job.part == 'supernet' else job.model
        if job.part != 'teacher' and job.tuning_lr is None and name not in out:
            out[name] = protocol.initial_logit_scale(job.cfg)
    return out


# ---- statistics and reports
def summarize(done: Dict[str, Dict[str, Any]], jobs: List[Job]) -> Dict[str, Any]:
    """Per part and row (subnet or student): per-seed top-1 of each method, mean +- std, and the paired per-seed
    differences alpha - KL (mean, std, 95% t-interval, wins) and KL - none, alpha - none (mean, std)."""
    per: Dict[Tuple[str, str], Dict[str, Dict[int, float]]] = {}
    mech: Dict[Tuple[str, str], Dict[str, List[Dict[str, float]]]] = {}
    for job in jobs:
        if job.part == 'teacher' or getattr(job, 'tuning_lr', None) is not None or job.key not in done:
            continue
        if done[job.key].get('mechanism'):
            mech.setdefault((job.part, job.model), {}).setdefault(job.method, []).append(done[job.key]['mechanism'])
        for row, top1 in done[job.key]['top1'].items():
            per.setdefault((job.part, row), {m: {} for m in METHODS})[job.method][job.seed] = top1
    rows = []
    for (part, row), by_method in per.items():
        entry: Dict[str, Any] = {'part': part, 'row': row, 'per_seed': {m: {str(s): v for s, v in sorted(d.items())}
                                                                        for m, d in by_method.items()}}
        for m, d in by_method.items():
            if d:
                entry[m] = dict(zip(('mean', 'std'), mean_std(list(d.values()))), n=len(d))
        figures = mech.get((part, row), {})
        if figures:  # per method: each mechanism figure's mean over seeds
            entry['mechanism'] = {m: {k: statistics.fmean(r[k] for r in rs) for k in MECHANISM_COLUMNS}
                                  for m, rs in figures.items() if rs}
        for a, b in (('alpha', 'kl'), ('kl', 'none'), ('alpha', 'none')):
            seeds = sorted(set(by_method[a]) & set(by_method[b]))
            if not seeds:
                continue
            diffs = [by_method[a][s] - by_method[b][s] for s in seeds]
            mean, std = mean_std(diffs)
            half = t_quantile_975(len(diffs)) * std / math.sqrt(len(diffs))
            entry[f'{a}_minus_{b}'] = {'per_seed': {str(s): d for s, d in zip(seeds, diffs)}, 'mean': mean, 'std': std,
                                       'ci95': [mean - half, mean + half], 'wins': sum(d > 0 for d in diffs),
                                       'ties': sum(d == 0 for d in diffs), 'n': len(diffs)}
        rows.append(entry)
    order = {p: i for i, p in enumerate(PARTS)}
    row_order = {'max': 0, 'random': 1, 'min': 2}
    rows.sort(key=lambda r: (order[r['part']], row_order.get(r['row'], 3)))
    return {'rows': rows, 'teacher': done.get('teacher', {}).get('top1')}


def _mean_pm_std(stats: Optional[Dict[str, float]], signed: bool = False) -> str:
    if not stats:
        return 'n/a'
    fmt = '{:+.2f}' if signed else '{:.2f}'
    std = 'n/a' if math.isnan(stats['std']) else f"{stats['std']:.2f}"
    return f"{fmt.format(stats['mean'])} ± {std}"


def table(summary: Dict[str, Any], part: str) -> str:
    """The markdown table of one part: top-1 mean ± std per method, alpha - KL paired per seed."""
    head = ['subnet' if part == 'supernet' else 'student', *(f'{METHOD_NAMES[m]} top-1' for m in METHODS),
            'alpha − KL (mean ± std)', '95% CI', 'alpha > KL', 'alpha − KL per seed', 'KL − none']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in (r for r in summary['rows'] if r['part'] == part):
        d = r.get('alpha_minus_kl')
        ci = 'n/a' if not d or math.isnan(d['ci95'][0]) else f"[{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]"
        seeds = ', '.join(f'{v:+.1f}' for v in d['per_seed'].values()) if d else 'n/a'
        wins = f"{d['wins']}/{d['n']}" if d else 'n/a'
        cells = [r['row'], *(_mean_pm_std(r.get(m)) for m in METHODS), _mean_pm_std(d, signed=True), ci, wins, seeds,
                 _mean_pm_std(r.get('kl_minus_none'), signed=True)]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def mechanism_table(summary: Dict[str, Any]) -> str:
    """The students' mechanism figures against the teacher (validation images; mean over seeds) per method."""
    head = ['student: method', 'KL(p‖q)', 'D₋₁(p‖q)', 'H(q) − H(p)', 'q − p, top class', 'q − p, secondary',
            'agreement, teacher unsure']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in summary['rows']:
        for m, f in r.get('mechanism', {}).items():
            lines.append(f"| {r['row']}: {METHOD_NAMES[m]} | {f['kl']:.4f} | {f['d_minus1']:.4f} | "
                         f"{f['entropy_gap']:+.4f} | {f['top_gap']:+.4f} | {f['secondary_gap']:+.4f} | "
                         f"{100 * f['agree_unsure']:.1f} % |")
    return '\n'.join(lines) if len(lines) > 2 else ''


def plot(summary: Dict[str, Any], path: Path) -> None:
    """Top-1 per row and method (mean ± std, seeds as dots) and the per-seed alpha - KL differences, per part."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    parts = [p for p in PARTS if any(r['part'] == p for r in summary['rows'])]
    fig, axes = plt.subplots(2, max(1, len(parts)), figsize=(6 * max(1, len(parts)), 8), squeeze=False)
    colors = {'none': 'tab:gray', 'kl': 'tab:blue', 'alpha': 'tab:red'}
    for col, part in enumerate(parts):
        rows = [r for r in summary['rows'] if r['part'] == part]
        top, bottom = axes[0][col], axes[1][col]
        for i, r in enumerate(rows):
            for k, m in enumerate(METHODS):
                if m not in r:
                    continue
                x = i + (k - 1) * 0.25
                values = list(r['per_seed'][m].values())
                top.scatter([x] * len(values), values, s=10, color=colors[m], alpha=0.4)
                top.errorbar(x, r[m]['mean'], yerr=0 if math.isnan(r[m]['std']) else r[m]['std'], fmt='o',
                             color=colors[m], capsize=4, label=METHOD_NAMES[m] if i == 0 else None)
            d = r.get('alpha_minus_kl')
            if d:
                values = list(d['per_seed'].values())
                bottom.scatter([i] * len(values), values, s=14, color='tab:red', alpha=0.5)
                lo, hi = d['ci95']
                err = None if math.isnan(lo) else [[d['mean'] - lo], [hi - d['mean']]]
                bottom.errorbar(i, d['mean'], yerr=err, fmt='D', color='black', capsize=5)
        for ax in (top, bottom):
            ax.set_xticks(range(len(rows)))
            ax.set_xticklabels([r['row'] for r in rows])
        top.set_title(f'{part}: top-1 (mean ± std over seeds; dots: seeds)')
        top.set_ylabel('top-1 (%)')
        top.legend()
        bottom.axhline(0.0, color='gray', lw=1)
        bottom.set_title(f'{part}: alpha − KL per seed (diamond: mean, 95% CI)')
        bottom.set_ylabel('top-1 difference (points)')
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=110)
    plt.close(fig)
    write_atomic(path, buffer.getvalue())


def report(summary: Dict[str, Any], meta: Dict[str, Any]) -> str:
    """The markdown report: what ran where, then one table per part."""
    s = meta['settings']
    lines = [
        '# KD ordering (miniature): no KD vs KL-KD vs adaptive alpha-KD', '',
        f"{meta['date']}; {machine_line(meta['machine'])}; {meta['jobs']} parallel run(s); wall time "
        f"{meta['wall_s'] / 60:.1f} min; {_cpu_line(meta)}.", '',
        f"Command: `{meta['command']}`", '',
        f"Data: {s['data']}. Seeds {s['seeds']} (the same for every method; differences are paired per seed). "
        f"Budget per run: {s['budget']}.", '',
    ]
    lines += [protocol.PROTOCOL, '', f"Here: KD students train on (1 - l) CE + l KD with l = "
              f"{s.get('kd_share', KD_SHARE):g}; the supernet's in-place KD trains the random and min subnets on KD "
              "alone (weight 1, as the original), so every method has the label loss's scale.", '']
    lines += protocol.logit_scale_lines(summary.get('initial_logit_scale') or {}, 'as the trainer builds each model')
    tuning = summary.get('lr_tuning') or {}
    if tuning:
        any_row = next(iter(tuning.values()))
        lines += [f"lr per method: chosen by `protocol.choose_lr` from the base lr x {s['lr_grid_factors']} on the "
                  f"held-out part of the students' training images (never the validation images), "
                  f"{any_row['runs']} tuning runs per method and row ({len(any_row['grid'])} lrs x tuning seeds "
                  f"{any_row['tuning_seeds']}, disjoint from the reported seeds).", '']
        lines += protocol.tuning_table(  # a row is part/model/method, and a model (hf-hub:org/name) may hold '/'
            tuning, lambda row: f"{row.split('/', 1)[1].rsplit('/', 1)[0]}: {METHOD_NAMES[row.rsplit('/', 1)[1]]}",
            'row: method')
        lines += ['', 'Held-out top-1 (%) per lr: mean over the tuning seeds (a supernet: over its validated '
                  'subnets too).', '']
    elif s.get('lr'):
        lines += ['No lr tuning (--no-tune): lr ' + ', '.join(sorted({f'{v:g}' for v in s['lr'].values()}))
                  + ' for every method.', '']
    if summary.get('teacher'):
        t = summary['teacher']
        lines += [f"Teacher ({s['teacher']}, trained first from the labels, seed {s['teacher_seed']}): top-1 "
                  + ', '.join(f'{v:.2f}' for v in t.values()) + '.', '']
        if not s.get('teacher_disjoint', True):
            lines += ["NOT the protocol's teacher: with given data it learned on the students' own training images "
                      '(and the held-out part); its soft labels then say little beyond the labels.', '']
        info = summary.get('teacher_information')
        if info:
            lines += [f"On the students' {info['num_images']} training images the teacher has top-1 {info['top1']:.2f} "
                      f"% and KL to the smoothed labels {info['kl_to_smoothed']:.3f} nats (0: nothing to teach).", '']
    elif s.get('trained_teacher'):
        lines += [f"Teacher: {s['trained_teacher']} (given, not trained here).", '']
    for part in PARTS:
        if any(r['part'] == part for r in summary['rows']):
            what = ('AlphaNet supernet, sandwich rule (no KD = in-place KD off)' if part == 'supernet' else
                    'standard KD from the teacher (no KD = label loss only)')
            lines += [f'## {part}: {what}', '', table(summary, part), '']
            if part == 'students':
                lines += [mechanism_table(summary), '']
            for r in (r for r in summary['rows'] if r['part'] == part):
                if r.get('kl_minus_none') and r.get('alpha_minus_kl'):
                    lines += [f"{r['row']}:", *protocol.hypotheses_lines(
                        list(r['kl_minus_none']['per_seed'].values()),
                        list(r['alpha_minus_kl']['per_seed'].values())), '']
    lines += ['Top-1 in % on the validation images, at the last epoch; mean ± sample std over seeds; "alpha > KL" '
              'counts the seeds where alpha-KD beat KL-KD; 95% CI: Student-t interval of the mean paired difference.']
    return '\n'.join(lines) + '\n'


def _cpu_line(meta: Dict[str, Any]) -> str:
    """The runs' summed CPU time and the wall time it means on free cores: the run's size whatever the machine's
    load (the wall time above counts other processes' share of the cores)."""
    cpu = meta['settings'].get('run_cpu_seconds', {})
    if not cpu:
        return 'CPU time not recorded'
    cores = meta['jobs'] * meta['threads_per_run']
    return (f"CPU time of the {len(cpu)} run(s) {sum(cpu.values()) / 60:.1f} min (about "
            f"{sum(cpu.values()) / cores / 60:.1f} min of wall time on {cores} free core(s))")


def _describe_budget(jobs: List[Job], tuned: bool) -> Dict[str, str]:
    budget = {}
    for part in ('supernet', 'students', 'teacher'):
        job = next((j for j in jobs if j.part == part and j.tuning_lr is None), None)
        if job is None:
            continue
        c = job.cfg
        extra = f', {c.num_subnets} subnets/step' if part == 'supernet' else ''
        lr = 'lr per method (the lr table)' if tuned and part != 'teacher' else f'lr {c.lr}'
        budget[part] = (f'{c.epochs} epochs, batch {c.batch_size}, {c.opt} {lr} {c.sched} (warm-up '
                        f'{c.warmup_epochs:g}), wd {c.weight_decay:g}, label smoothing {c.smoothing:g}, '
                        f'{"no augmentation" if c.no_aug else "augmentation"}{extra}')
    return budget


# ---- command line
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--output', type=Path, default=Path('output/kd_ordering'), help='folder of the outputs')
    p.add_argument('--parts', nargs='+', default=list(PARTS), choices=PARTS)
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2, 3, 4])
    p.add_argument('--data-dir', default=None, help='image folder with train/ and validation/ (default: the digits '
                   'subset); with --dataset, any timm dataset')
    p.add_argument('--dataset', default=None, help="timm dataset name ('' = image folder; default: the digits subset)")
    p.add_argument('--train-fraction', type=float, default=0.3, help='digits only: fraction of the training split')
    p.add_argument('--resolution', type=int, default=None, help='input size in px (default 12; the supernet space '
                   'uses this and 2 px less)')
    p.add_argument('--teacher', default='mobilenetv2_100', help='timm name of the teacher trained first')
    p.add_argument('--teacher-seed', type=int, default=0)
    p.add_argument('--kd-share', type=float, default=KD_SHARE, help='l of the KD students\' (1 - l) CE + l KD '
                   f'(default {KD_SHARE:g}, the paper\'s 0.9 KD + 0.1 CE)')
    p.add_argument('--trained-teacher', default=None, help='use this teacher instead of training one (a timm name '
                   'with pretrained weights, hf-hub:..., local-dir:...), e.g. mobilenetv2_100.ra_in1k at full scale')
    p.add_argument('--students', nargs='+', default=['mobilenetv2_050', 'mobilenetv2_035', VIT],
                   help=f'timm names, or "{VIT}" (a small ViT: DeiT-tiny scaled to the resolution)')
    p.add_argument('--epochs', type=int, default=None, help=f"student epochs (default {MINI_EPOCHS['students']})")
    p.add_argument('--teacher-epochs', type=int, default=None, help=f"default {MINI_EPOCHS['teacher']}")
    p.add_argument('--supernet-epochs', type=int, default=None, help=f"default {MINI_EPOCHS['supernet']}")
    p.add_argument('--batch-size', type=int, default=None, help=f"default {MINI_COMMON['batch_size']}")
    p.add_argument('--lr', type=float, default=None, help=f"base lr of the tuning grid (--no-tune: the lr of "
                   f"every run); default {MINI_COMMON['lr']}")
    protocol.add_tuning_arguments(p, HOLDOUT, TUNING_SEEDS)
    p.add_argument('--students-config', default=None, help='TrainConfig YAML for teacher and students (e.g. '
                   'train_configs/kd_mobilenetv2_050_in1k.yaml) instead of the miniature settings')
    p.add_argument('--supernet-config', default=None, help='TrainConfig YAML for the supernet (e.g. '
                   'train_configs/alphanet_supernet_in1k.yaml) instead of the miniature settings')
    p.add_argument('--set', nargs='+', default=[], metavar='KEY=VALUE', help='TrainConfig values for every run '
                   '(YAML values, e.g. opt=adamw lr=0.002 no_aug=false scale=[0.7,1.0])')
    p.add_argument('--jobs', type=int, default=None, help='runs in parallel (processes); default: 2 on a CPU-only '
                   'machine, 1 with a GPU or under a launcher')
    p.add_argument('--threads', type=int, default=None, help='torch threads per run (default: cores / jobs)')
    p.add_argument('--keep-checkpoints', action='store_true', help='keep every run\'s checkpoints and final model')
    args = p.parse_args(argv)
    args.set = dict(_key_value(p, item) for item in args.set)
    args.output = args.output.resolve()  # run folders and the teacher's local-dir: path hold it
    args.resolution_given = args.resolution is not None
    args.resolution = args.resolution or 12
    distributed = _world_size() > 1
    if args.jobs is None:
        import torch
        args.jobs = 1 if distributed or torch.cuda.is_available() else min(2, os.cpu_count() or 1)
    if distributed and args.jobs > 1:
        p.error('--jobs > 1 under a launcher: each run already uses every launched process')
    if args.threads is None:
        args.threads = max(1, (len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else
                               os.cpu_count() or 1) // args.jobs)
    if not 0 <= args.kd_share <= 1:
        p.error(f'--kd-share must be in [0, 1], got {args.kd_share}')
    if not 0 < args.train_fraction <= 1:
        p.error(f'--train-fraction must be in (0, 1], got {args.train_fraction}')
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f'--seeds must be distinct, got {args.seeds}')
    protocol.check_tuning_arguments(p, args, given_data=args.data_dir is not None or args.dataset not in (None, ''),
                                    data_dir=args.data_dir)
    return args


def _key_value(parser: argparse.ArgumentParser, item: str) -> Tuple[str, Any]:
    import yaml
    key, sep, value = item.partition('=')
    if not sep or not key:
        parser.error(f'--set takes KEY=VALUE, got {item!r:.60}')
    return key.strip(), yaml.safe_load(value)


def _is_main_process() -> bool:
    return int(os.environ.get('RANK', '0')) == 0


def _read_records(text: str) -> List[Dict[str, Any]]:
    """The JSON lines of `text`; a line cut short (a run killed while writing it) is skipped with a warning."""
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            print(f'WARNING: skipping a damaged results line ({line[:60]!r}...); its run is trained again',
                  file=sys.stderr)
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault('HF_HUB_OFFLINE', '1')  # every model here is local or randomly initialised
    args.output.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()  # the invocation's wall time, for the report
    jobs = plan(args)
    results_path = args.output / 'results.jsonl'
    done: Dict[str, Dict[str, Any]] = {}
    previous: Dict[str, Dict[str, Any]] = {}
    reused: set = set()
    if results_path.is_file():  # finished runs of an interrupted invocation: reused when their settings match
        with open(results_path) as f:
            previous = {r['key']: r for r in _read_records(f.read(64 << 20)) if 'key' in r}

    def reuse(jobs: List[Job]) -> None:
        for job in jobs:  # in plan order, so a student sees the teacher's fingerprint
            r = previous.get(job.key)
            if job.key not in done and r and r.get('fingerprint') == fingerprint(job, done) and (
                    not job.keep_final or (Path(job.cfg.output) / job.cfg.experiment / 'final').is_dir()):
                done[job.key] = r
                reused.add(job.key)

    def record(job: Job, result: Dict[str, Any]) -> None:
        if _is_main_process():
            with open(results_path, 'a') as f:
                f.write(json.dumps(result) + '\n')

    # first the teacher and the tuning runs (recorded and reused like the others), then the reported runs at each
    # method's chosen lr: their configs, so their fingerprints, hold it
    first = [j for j in jobs if j.part == 'teacher' or j.tuning_lr is not None]
    reuse(first)
    failed = execute(first, done, args.jobs, args.threads, args.keep_checkpoints, record)
    tuning: Dict[str, Any] = {}
    if not failed:
        lrs, tuning = choose_lrs(jobs, done)
        jobs = plan(args, lrs)
        reuse(jobs)
        if reused:
            print(f'reusing {len(reused)} finished run(s) from {results_path}')
        failed = execute(jobs, done, args.jobs, args.threads, args.keep_checkpoints, record)
    wall = time.monotonic() - t0
    if failed:
        print('failed runs (finished ones are kept; rerun the same command to continue):\n  ' + '\n  '.join(failed),
              file=sys.stderr)
        return 1
    import torch
    torch.set_num_threads(args.threads)
    scales = initial_logit_scales(jobs)  # every process: building the data waits for all of them
    if not _is_main_process():
        return 0
    from timm_alphanet.train import learning_rate
    summary = summarize(done, jobs)
    summary['teacher_information'] = teacher_information(jobs)
    summary['lr_tuning'] = tuning
    summary['initial_logit_scale'] = scales
    if args.dataset not in (None, '') or args.data_dir:
        data = f'{args.dataset!r} at {args.data_dir}'
    else:  # counted, not assumed: the split is the library's
        students = next(j for j in jobs if j.part != 'teacher' and j.tuning_lr is None)  # the teacher: other images
        n = {split: sum(len(files) for _, _, files in os.walk(Path(students.cfg.data_dir) / split))
             for split in ('train', 'validation')}
        tune_job = next((j for j in jobs if j.tuning_lr is not None), None)
        held = 0 if tune_job is None else sum(len(files) for _, _, files in
                                              os.walk(Path(tune_job.cfg.data_dir) / 'validation'))
        data = (f"scikit-learn digits, a fixed {args.train_fraction:g} of the training split ({n['train']} images "
                f"for training, {held} more held out to choose the lr), all {n['validation']} validation images, "
                f"{args.resolution} px")
    meta = {
        'date': time.strftime('%Y-%m-%d %H:%M %Z'), 'machine': machine_info(), 'jobs': args.jobs,
        'threads_per_run': args.threads, 'wall_s': wall, 'command': ' '.join(['python', *sys.argv]) if argv is None
        else 'kd_ordering.main(' + repr(list(argv)) + ')',
        'settings': {'data': data, 'seeds': args.seeds, 'teacher': args.teacher, 'teacher_seed': args.teacher_seed,
                     'kd_share': args.kd_share, 'tune': args.tune, 'lr_grid_factors': list(args.lr_grid_factors),
                     'tuning_seeds': list(args.tuning_seeds), 'holdout_fraction': args.holdout_fraction,
                     'lr': {j.row: learning_rate(j.cfg, _world_size()) for j in jobs
                            if j.part != 'teacher' and j.tuning_lr is None},
                     'trained_teacher': args.trained_teacher,
                     'teacher_disjoint': not (args.dataset not in (None, '') or args.data_dir),
                     'students': args.students, 'budget': _describe_budget(jobs, args.tune),
                     'run_seconds': {k: round(v['seconds'], 1) for k, v in done.items()},
                     'run_cpu_seconds': {k: round(v['cpu_seconds'], 1) for k, v in done.items()
                                         if 'cpu_seconds' in v}},
    }
    write_atomic(args.output / 'kd_ordering.json', json.dumps({'meta': meta, **summary}, indent=2) + '\n')
    write_atomic(args.output / 'kd_ordering.md', report(summary, meta))
    plot(summary, args.output / 'kd_ordering.png')
    print(report(summary, meta))
    print(f'written: {args.output / "kd_ordering.md"}, kd_ordering.json, kd_ordering.png')
    return 0


if __name__ == '__main__':
    sys.exit(main())
