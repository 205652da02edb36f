"""The pieces of a training run, each built from a `TrainConfig` (and the run's `Accelerator`), each testable alone.

Nothing here checks model names: `build_model` creates the model and `is_supernet` (the runtime `Supernet`
protocol) decides between sandwich training (`SandwichTask`) and teacher KD (`AlphaDistillationTask`).
Datasets come first (they give the number of classes); their transforms follow from the model's data config.
"""
import contextlib
import datetime
import difflib
import logging
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import timm
import torch
import torch.nn as nn
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs, InitProcessGroupKwargs
from accelerate.utils import is_tensorboard_available
from timm.data import resolve_data_config
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2, list_optimizers
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader

from ..archs import ARCH_NAMES, DEMO_SPACE
from ..data import num_classes_of
from ..layers.dynamic import compile_norm_act
from ..layers.sync_bn import convert_sync_dynamic_bn
from ..models import is_supernet
from ..processes import check_world_size, has_accelerator_device
from ..utils import bounded_repr
from ..task import AlphaDistillationTask, SandwichTask
from .config import HEAD_INITS, TrainConfig
from .data import create_datasets, create_loaders, set_transforms
from .epoch import seed_step

__all__ = ['TrainData', 'build_accelerator', 'build_data', 'build_ema', 'build_loaders', 'build_model',
           'build_optimizer', 'build_scheduler', 'build_task', 'compile_task', 'check_world_size', 'data_config_for',
           'init_classifier', 'learning_rate', 'model_is_supernet', 'validation_archs']

_HUB_PREFIXES = ('hf-hub:', 'local-dir:')
PREPROCESSING = ('input_size', 'interpolation', 'crop_pct', 'mean', 'std')  # what timm's eval pipeline reads
_logger = logging.getLogger(__name__)


def build_accelerator(cfg: TrainConfig, project_dir: Optional[str] = None) -> Accelerator:
    """The run's Accelerator: DDP with unused parameters, seedable sampler, TensorBoard when installed.

    Without any accelerator device it is built with ``cpu=True``, which makes torchrun / ``accelerate launch
    --multi_gpu`` processes on a CPU-only machine one gloo process group (otherwise each trains alone).

    Raises:
        ValueError: the launcher's WORLD_SIZE disagrees with the Accelerator's process count, or fp16 mixed
            precision without a GPU (Accelerate would silently train in float32).
    """
    device = has_accelerator_device()
    if cfg.mixed_precision == 'fp16' and not device:
        raise ValueError('mixed_precision: fp16 needs a GPU; on this machine Accelerate would silently train in '
                         'float32. Use --mixed-precision bf16 (CPU autocast) or no')
    accelerator = Accelerator(
        cpu=not device,
        mixed_precision=cfg.mixed_precision,
        log_with='tensorboard' if is_tensorboard_available() else None,
        project_dir=project_dir,
        # non_blocking: batches are copied to the GPU while the step before still runs (the loaders pin memory)
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=device),
        step_scheduler_with_optimizer=False,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True),  # subnets skip blocks
                         # the other processes wait in a collective while the main one prepares data or downloads
                         InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=cfg.dist_timeout))],
    )
    check_world_size(accelerator.num_processes)
    return accelerator


class TrainData(NamedTuple):
    """The run's datasets (transforms are set by `build_loaders`) and its number of classes."""
    train: Any
    val: Any
    num_classes: int


def build_data(cfg: TrainConfig, accelerator: Accelerator) -> TrainData:
    """Training and validation datasets of `cfg`, without transforms yet; the digits folder is written once."""
    with accelerator.main_process_first():
        train, val = create_datasets(cfg)
    return TrainData(train, val, cfg.num_classes or num_classes_of(train))


def _check_model_name(name: str, what: str) -> None:
    if name.startswith(_HUB_PREFIXES) or timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3)
    raise ValueError(f'{what}: unknown timm model {name!r}' + (f'; did you mean {close}?' if close else '')
                     + f'; allowed: a name from timm.list_models() or {" / ".join(_HUB_PREFIXES)}...')


def _probe(cfg: TrainConfig) -> nn.Module:
    """An instance of `cfg.model` on the meta device (no memory, no init cost), to see what kind of model it is."""
    _check_model_name(cfg.model, 'model')
    try:
        with torch.device('meta'):
            return timm.create_model(cfg.model)
    except (RuntimeError, NotImplementedError):  # a model that reads tensor values while it is built
        return timm.create_model(cfg.model)


def model_is_supernet(cfg: TrainConfig) -> bool:
    """Whether `cfg.model` is a supernet (sandwich training) rather than a KD student; builds nothing real.

    Raises:
        ValueError: an unknown model name, a model that is not a supernet without a teacher (teacher KD), or
            sync_bn for a static model without a GPU.
    """
    return _check_mode(cfg, _probe(cfg))


def _check_mode(cfg: TrainConfig, probe: nn.Module) -> bool:
    supernet = is_supernet(probe)
    if not supernet and not cfg.teacher:
        raise ValueError(f'model {cfg.model!r} is not a supernet (timm_alphanet.models.Supernet): teacher KD '
                         'needs a teacher (--teacher, e.g. resnet50.a1_in1k or local-dir:<folder>)')
    if cfg.model_ema and supernet:
        raise ValueError(f'model_ema: model {cfg.model!r} is a supernet, whose subnets need BN calibration each; a '
                         'weight EMA is supported for KD students (validated each epoch, its weights written to '
                         'final/)')
    if not supernet and not cfg.inplace_kd:
        raise ValueError(f'inplace_kd: off (--no-inplace-kd) is for supernets; model {cfg.model!r} is a KD student of '
                         'the teacher')
    if cfg.sync_bn and not supernet and not torch.cuda.is_available():
        raise ValueError(f'sync_bn: model {cfg.model!r} would need torch SyncBatchNorm, which runs on GPUs only; '
                         'on CPU only supernets support it')
    return supernet


def _space_for(cfg: TrainConfig, probe: nn.Module) -> Optional[Any]:
    """`cfg.space` as the supernet's own space type (AlphaNet `SearchSpace`, slimmable `WidthSpace`, ...); None (the
    model's own space) when `cfg.space` is the demo default and the model's space is of another kind."""
    space_type = type(probe.space)
    try:
        return space_type.coerce(cfg.space)
    except (ValueError, TypeError) as e:
        if cfg.space == DEMO_SPACE:  # the default belongs to the demo's AlphaNet supernet, not to other kinds
            _logger.info(f'space: the demo AlphaNet space is not a {space_type.__name__}; {cfg.model} trains its own '
                         f'({bounded_repr(probe.space.to_dict())})')
            return None
        raise ValueError(f'space: not a {space_type.__name__}, the space of model {cfg.model!r} ({e}); give one '
                         "in that form, or none for the model's own") from None


def build_model(cfg: TrainConfig, accelerator: Accelerator, num_classes: int) -> nn.Module:
    """The timm model of `cfg` (a supernet gets `cfg.space` unless None), with sync BN and channels-last as asked.

    Raises:
        ValueError: see `model_is_supernet`; a space that is not the supernet's kind.
    """
    probe = _probe(cfg)
    supernet = _check_mode(cfg, probe)
    kwargs: Dict[str, Any] = dict(num_classes=num_classes, drop_rate=cfg.drop, pretrained=cfg.pretrained)
    for key, value in (('drop_path_rate', cfg.drop_path), ('bn_momentum', cfg.bn_momentum),
                       ('checkpoint_path', cfg.initial_checkpoint or None)):
        if value is not None:
            kwargs[key] = value
    space = _space_for(cfg, probe) if supernet and cfg.space is not None else None
    if space is not None:
        kwargs['space'] = space
    seed_step(cfg.seed, 0, 0)  # the same initial weights on every process (DDP broadcasts them too)
    try:
        model = timm.create_model(cfg.model, **kwargs)
    except RuntimeError as e:
        if not cfg.pretrained or 'pretrained' not in str(e):
            raise
        raise ValueError(f'pretrained: {" ".join(str(e).split())[:300]}') from None  # "No pretrained weights exist"
    init_classifier(model, cfg.head_init)
    if cfg.sync_bn and supernet:
        convert_sync_dynamic_bn(model)  # in place
    elif cfg.sync_bn:
        model = timm.layers.convert_sync_batchnorm(model)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
        model.register_state_dict_post_hook(_contiguous_state_dict)
    return model


def init_classifier(model: nn.Module, head_init: str) -> nn.Module:
    """`model` with its classifier (``model.get_classifier()``; every head of a tuple, e.g. DeiT's two) initialised
    per `head_init` (`HEAD_INITS`): 'default' leaves it as built, 'zero' sets its weights and biases to 0 in place.

    Raises:
        ValueError: `head_init` not in `HEAD_INITS`, or 'zero' for a model without a classifier with weights.
    """
    if head_init not in HEAD_INITS:
        raise ValueError(f'head_init: {head_init!r:.40} is not allowed; choose from {list(HEAD_INITS)}')
    if head_init == 'default':
        return model
    heads = model.get_classifier() if hasattr(model, 'get_classifier') else None
    heads = heads if isinstance(heads, (tuple, list)) else (heads,)
    params = [p for h in heads if isinstance(h, nn.Module)
              for p in (getattr(h, 'weight', None), getattr(h, 'bias', None)) if isinstance(p, torch.Tensor)]
    if not params:
        raise ValueError(f"head_init: 'zero' needs a classifier with weights (model.get_classifier()); "
                         f'{type(model).__name__} has none')
    with torch.no_grad():
        for p in params:
            p.zero_()
    return model


def _contiguous_state_dict(module: nn.Module, state_dict: Dict[str, Any], prefix: str, local_metadata: Any) -> None:
    # safetensors (Accelerate's checkpoints, save_pretrained) refuses channels-last tensors: save NCHW copies
    for key, value in state_dict.items():
        if key.startswith(prefix) and isinstance(value, torch.Tensor) and not value.is_contiguous():
            state_dict[key] = value.contiguous()


def data_config_for(cfg: TrainConfig, model: nn.Module) -> Dict[str, Any]:
    """timm's data config (input_size, interpolation, mean, std, crop_pct) of `model` with `cfg`'s overrides.

    A supernet trains and evaluates at its largest resolution with no centre crop (crop_pct 1.0); each subnet
    gets the batch resized to its own resolution inside the step.
    """
    overrides: Dict[str, Any] = dict(input_size=cfg.input_size, interpolation=cfg.interpolation or None,
                                     mean=cfg.mean, std=cfg.std, crop_pct=cfg.crop_pct)
    if is_supernet(model):
        res = max(model.space.resolutions)
        overrides['input_size'] = cfg.input_size or (3, res, res)
        overrides['crop_pct'] = cfg.crop_pct or 1.0
    return resolve_data_config({k: v for k, v in overrides.items() if v is not None}, model=model)


def build_loaders(cfg: TrainConfig, data: TrainData, model: nn.Module) -> Tuple[DataLoader, DataLoader]:
    """Train / validation loaders with the transforms of `model`'s data config (`data_config_for`).

    The model's ``pretrained_cfg`` takes the preprocessing the run uses (input size, interpolation, crop_pct, mean,
    std), so a teacher's input re-normalisation, the saved model and timm's eval pipeline of a reloaded model all
    see what training used.
    """
    data_config = data_config_for(cfg, model)
    model.pretrained_cfg = {**model.pretrained_cfg, **{k: data_config[k] for k in PREPROCESSING}}
    set_transforms(cfg, data.train, data.val, data_config)
    return create_loaders(cfg, data.train, data.val)


def learning_rate(cfg: TrainConfig, num_processes: int) -> float:
    """`cfg.lr`, or when None ``lr_base * global batch / lr_base_size`` (the global batch spans all processes)."""
    if cfg.lr is not None:
        return cfg.lr
    return cfg.lr_base * cfg.batch_size * num_processes / cfg.lr_base_size


def build_optimizer(cfg: TrainConfig, accelerator: Accelerator, model: nn.Module) -> torch.optim.Optimizer:
    """timm's optimizer `cfg.opt` at `learning_rate` (no weight decay on BN and bias)."""
    known = list_optimizers()
    if cfg.opt.lower().split('_')[-1] not in known:
        close = difflib.get_close_matches(cfg.opt.lower(), known, n=3)
        raise ValueError(f'opt: unknown optimizer {cfg.opt!r}' + (f'; did you mean {close}?' if close else '')
                         + '; allowed: timm.optim.list_optimizers()')
    extra = {} if cfg.opt_eps is None else {'eps': cfg.opt_eps}
    return create_optimizer_v2(model, opt=cfg.opt, lr=learning_rate(cfg, accelerator.num_processes),
                               weight_decay=cfg.weight_decay, momentum=cfg.momentum, **extra)


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> Tuple[Any, int]:
    """timm's scheduler (per update unless ``sched_on_updates`` is off) and the number of epochs it spans."""
    return create_scheduler_v2(
        optimizer, sched=cfg.sched, num_epochs=cfg.epochs, min_lr=cfg.min_lr, warmup_lr=cfg.warmup_lr,
        warmup_epochs=cfg.warmup_epochs, step_on_epochs=not cfg.sched_on_updates, updates_per_epoch=steps_per_epoch)


def build_ema(cfg: TrainConfig, model: nn.Module, device: Optional[torch.device] = None) -> Optional[ModelEmaV3]:
    """timm's weight EMA of the (unwrapped, prepared) student on `device` when `cfg.model_ema`, else None."""
    if not cfg.model_ema:
        return None
    return ModelEmaV3(model, decay=cfg.model_ema_decay, use_warmup=cfg.model_ema_warmup, device=device)


def build_task(cfg: TrainConfig, accelerator: Accelerator, model: nn.Module) -> nn.Module:
    """The timm task that trains `model` (as `accelerator.prepare` returned it).

    A supernet gets `SandwichTask` (max subnet on labels, the others distilled in place; `cfg.teacher`, if any,
    also teaches the max subnet); any other model `AlphaDistillationTask` from `cfg.teacher`. With mixup/cutmix
    the label loss takes soft targets; `cfg.torchcompile` compiles what keeps its shapes (`compile_task`); with
    `cfg.channels_last` the teacher runs channels-last like the student.
    """
    kd = dict(kd_loss=cfg.kd_loss, alpha_min=cfg.alpha_min, alpha_max=cfg.alpha_max, clip=cfg.alpha_clip,
              temperature=cfg.kd_temperature, teacher_pretrained_path=cfg.teacher_pretrained_path,
              device=accelerator.device, verbose=False)
    if cfg.teacher:
        _check_model_name(cfg.teacher, 'teacher')
    # a teacher named by the Hub is downloaded once, by the main process, while the others wait (--dist-timeout)
    with accelerator.main_process_first() if cfg.teacher else contextlib.nullcontext():
        task = _create_task(cfg, accelerator, model, kd)
    if task.teacher is not None:
        for p in task.teacher.parameters():
            p.requires_grad = False
        # the training loop checks the teacher's rows only when a loss is non-finite: no host read per step for it
        task.defer_teacher_check = True
    if cfg.mixup > 0 or cfg.cutmix > 0:
        task.criterion = SoftTargetCrossEntropy()
    task.to(accelerator.device)
    if cfg.channels_last and task.teacher is not None:
        task.teacher.model.to(memory_format=torch.channels_last)
    if cfg.torchcompile:
        compile_task(task, cfg.torchcompile, cfg.torchcompile_mode)
    return task


def _create_task(cfg: TrainConfig, accelerator: Accelerator, model: nn.Module, kd: Dict[str, Any]) -> nn.Module:
    if is_supernet(accelerator.unwrap_model(model)):
        return SandwichTask(model, num_subnets=cfg.num_subnets, seed=cfg.seed, smoothing=cfg.smoothing,
                            inplace_kd=cfg.inplace_kd,
                            teacher=cfg.teacher or None, teacher_weight=1.0 if cfg.kd_weight is None else cfg.kd_weight,
                            **kd)
    if cfg.teacher:
        return AlphaDistillationTask(model, cfg.teacher, criterion_kwargs=dict(smoothing=cfg.smoothing),
                                     distill_loss_weight=cfg.kd_weight, task_loss_weight=cfg.task_weight, **kd)
    raise ValueError(f'model {cfg.model!r} is not a supernet: teacher KD needs a teacher (--teacher)')


def compile_task(task: nn.Module, backend: str, mode: Optional[str] = None) -> None:
    """torch.compile what keeps its shapes: a KD student and any teacher whole; a supernet's BN + activations.

    Every subnet of a supernet has other channel counts, depths and resolution, so compiling it whole gives one graph
    per subnet (the demo space: a new graph for nearly every step); importing timm.optim raises dynamo's recompile
    limit to 1,000,000, so nothing would stop hours of compiling. Its BN + activation layers are compiled instead
    (`compile_norm_act`: a few graphs with dynamic shapes for the whole space); convolutions stay eager. The run says
    so in one line.
    """
    if isinstance(task, SandwichTask):
        layers = compile_norm_act(task.supernet, backend=backend, mode=mode)
        _logger.info('torchcompile: the supernet compiles its %d BN + activation layers (a few shared graphs with '
                     'dynamic shapes for every subnet), not whole (a graph per subnet); %s', layers,
                     'its teacher is compiled whole' if task.teacher is not None else 'no teacher')
        if task.teacher is not None:
            task.teacher.compile(backend=backend, mode=mode, compile_model=True, compile_features=False)
        return
    task.compile(backend=backend, mode=mode)


def validation_archs(cfg: TrainConfig, model: nn.Module) -> List[Tuple[str, Any]]:
    """(name, arch) validated each epoch: a supernet's max, min and `cfg.eval_archs`; [] for other models.

    The eval archs are resolved by the model's space (`Space.resolve`, the one arch grammar: max, min, an arch or
    its dict, JSON text, arch files; AlphaNet's names a0..a6 in an AlphaNet space; a width such as ``0.35`` or
    ``{width: 0.5, resolution: 160}`` in a slimmable `WidthSpace`). An arch is named by the space's `label` where it
    has one (``w0.35``, ``w1.0``; ``@<resolution>`` added when a width space has several), a paper arch by its name,
    any other arch ``arch<i>``.

    Raises:
        ValueError: an eval arch that is not in the supernet's space (naming it and what is allowed).
    """
    if not is_supernet(model):
        return []
    space = model.space
    named = [('max', space.max_config()), ('min', space.min_config())]
    for i, arch in enumerate(cfg.eval_archs):
        name = arch.strip().removeprefix('alphanet_') if isinstance(arch, str) and len(arch) < 40 else f'arch{i}'
        try:
            resolved = space.resolve(arch)
        except (ValueError, TypeError) as e:
            raise ValueError(f'eval_archs: {e}') from None
        label = space.label(resolved)
        if name not in ('max', 'min') and label is not None:
            name = label
        elif name not in ARCH_NAMES:
            name = f'arch{i}'
        named.append((name, resolved))
    return named
