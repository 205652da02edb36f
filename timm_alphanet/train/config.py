"""`TrainConfig`: every option of a training run in one frozen dataclass whose defaults ARE the demo run.

Each option is defined once, as a field: its type, its default (the demo: the small `DEMO_SPACE` supernet on
scikit-learn's digits, a few minutes on two CPU cores) and, in the field metadata, timm's flag names, help and
allowed choices; ``alphanet-train`` derives its command line from them. A config round-trips through YAML
(`to_yaml` / `from_yaml`; a run writes it as ``args.yaml``). Keys are the long flag names with underscores
(``batch_size`` for ``--batch-size``); unknown keys, wrong types and out-of-range values raise `ValueError` /
`TypeError` naming the key and what is allowed.
"""
import copy
import dataclasses
import difflib
import math
import os
import reprlib
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Mapping, Optional, Tuple, Union, get_args, get_origin, get_type_hints

import yaml

from ..archs import DEMO_SPACE
from ..data import DIGITS
from ..utils import MAX_TEXT_BYTES, read_yaml_file

__all__ = ['HEAD_INITS', 'MAX_CONFIG_BYTES', 'SCHEDULERS', 'TrainConfig']

# loss.KD_LOSSES, named here because loss imports torch and the command line builds its parser from this class
# without it (tests/test_cli_startup.py checks they match)
KD_LOSSES = ('alpha', 'kl')

MAX_CONFIG_BYTES = MAX_TEXT_BYTES  # 1 MiB: a training config is a few KiB; refuse anything that is clearly not one

# timm schedulers that step per epoch/update without a metric ('plateau' needs one)
SCHEDULERS = ('cosine', 'tanh', 'step', 'multistep', 'constant', 'poly', 'wsd', 'rsqrt')
# classifier initialisations (`head_init`): the model's own, or weights and bias 0 (every logit starts at 0)
HEAD_INITS = ('default', 'zero')
_INTERPOLATIONS = ('bilinear', 'bicubic', 'nearest', 'box', 'hamming', 'lanczos')


def _read_yaml(path: Union[str, os.PathLike], what: str = 'training config') -> Any:
    """The trainer's one YAML reader (configs and search-space files): size, alias and depth bounded, one-line errors.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a regular file, larger than `MAX_CONFIG_BYTES`, not UTF-8, not valid YAML, or too large
            once aliases are expanded; the message names the file.
    """
    return read_yaml_file(path, max_bytes=MAX_CONFIG_BYTES, what=what)


def _option(default: Any, help: str, group: str, *, flags: Tuple[str, ...] = (), choices: Tuple[Any, ...] = (),
         const: Any = None, factory: Any = None) -> Any:
    """A TrainConfig field: its default plus what the command line needs (flags, help, choices)."""
    meta = {'help': help, 'group': group, 'flags': flags, 'choices': choices, 'const': const}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


_DATA, _MODEL, _KD, _OPT, _AUG, _EMA, _RUN = ('Dataset', 'Model', 'Teacher / distillation', 'Optimizer / schedule',
                                             'Augmentation', 'EMA', 'Run')


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults are the demo; `train_configs/*.yaml` hold the paper's recipes.

    Example:
        ```python
        cfg = TrainConfig.from_yaml('train_configs/demo.yaml')
        results = timm_alphanet.train.run(dataclasses.replace(cfg, epochs=2, output='/tmp/runs'))
        ```
    """
    # ---- dataset
    data_dir: Optional[str] = _option(None, 'dataset root (default: a cache folder for sklearn/digits)', _DATA)
    dataset: str = _option(DIGITS, 'timm create_dataset name ("" = image folder, "hfds/<name>", '
                        '"torch/<name>", ...) or "sklearn/digits" (written once as an image folder)', _DATA)
    train_split: str = _option('train', 'training split', _DATA)
    val_split: str = _option('validation', 'validation split', _DATA)
    dataset_download: bool = _option(False, 'let timm download torch/ datasets', _DATA)
    class_map: str = _option('', 'class map file for the dataset (timm)', _DATA)
    input_size: Optional[Tuple[int, int, int]] = _option(
        None, 'input size C H W of a static model (default: the model\'s; a supernet: its largest resolution)',
        _DATA)
    interpolation: str = _option('', 'eval resize interpolation (default: the model\'s)', _DATA,
                              choices=('', *_INTERPOLATIONS))
    mean: Optional[Tuple[float, ...]] = _option(None, 'normalisation mean (default: the model\'s)', _DATA)
    std: Optional[Tuple[float, ...]] = _option(None, 'normalisation std (default: the model\'s)', _DATA)
    crop_pct: Optional[float] = _option(None, 'eval centre-crop fraction (default: the model\'s; a supernet: 1.0)',
                                     _DATA)

    # ---- model
    model: str = _option('alphanet_supernet', 'timm model name; a supernet (timm_alphanet.models.Supernet, e.g. '
                      'alphanet_supernet) trains with the sandwich rule, any other model is a KD student '
                      '(needs --teacher)', _MODEL)
    space: Optional[Union[str, Dict[str, Any]]] = _option(
        None, 'supernet search space, in the form the model takes (AlphaNet: an original-schema supernet_config; '
        'slimmable: {widths: [...], resolutions: [...]}): a YAML file (a config may give the dict); none = the '
        'model\'s own (alphanet_supernet: the paper\'s) (default: the demo AlphaNet space; a supernet of another '
        'kind uses its own)', _MODEL, factory=lambda: copy.deepcopy(DEMO_SPACE))
    eval_archs: Tuple[Union[str, Dict[str, Any]], ...] = _option(
        (), 'extra supernet subnets to validate (after BN calibration), resolved by the model\'s space: max, min; '
        'AlphaNet: a0..a6, JSON/YAML arch files or JSON text; slimmable: widths such as 0.35 (a config gives them as '
        "text, '0.35', or as mappings)", _MODEL)
    pretrained: bool = _option(False, 'start from the model\'s pretrained weights', _MODEL)
    initial_checkpoint: str = _option('', 'weights file to start from', _MODEL)
    head_init: str = _option('default', "classifier (model.get_classifier()) init after the model is built: "
                             "'default' keeps the model's own; 'zero' sets its weights and bias to 0, so every logit "
                             "starts at 0 whatever the seed (timm's own init can start far from it: logit std 6.8 "
                             "for the slimmable MobileNet-V2 at 10 classes); applied after pretrained / "
                             "initial_checkpoint weights, before a resume",
                             _MODEL, choices=HEAD_INITS)
    num_classes: Optional[int] = _option(None, 'classes (default: the dataset\'s)', _MODEL)
    drop: float = _option(0.0, 'dropout rate (supernet: max subnet only)', _MODEL)
    drop_path: Optional[float] = _option(None, 'drop path rate (supernet: max subnet only)', _MODEL)
    bn_momentum: Optional[float] = _option(None, 'BatchNorm momentum (paper supernet: 0)', _MODEL)
    sync_bn: bool = _option(False, 'supernet: BatchNorm statistics over all processes (N processes x batch b train '
                         'exactly like one process x batch N*b)', _MODEL)
    batch_size: int = _option(64, 'per-process batch size', _MODEL, flags=('-b', '--batch-size'))
    validation_batch_size: Optional[int] = _option(None, 'validation batch size (default: --batch-size)', _MODEL,
                                                flags=('-vb', '--validation-batch-size'))
    channels_last: bool = _option(True, 'channels-last memory format for the model and its inputs (faster on CPU: '
                               'benchmarks/train_throughput.py measures it)', _MODEL)
    torchcompile: Optional[str] = _option(None, 'torch.compile the model (and teacher) with this backend; the flag '
                                       'alone means inductor', _MODEL, const='inductor')
    torchcompile_mode: Optional[str] = _option(None, 'torch.compile mode, e.g. max-autotune', _MODEL)

    # ---- teacher / distillation
    teacher: str = _option('', 'KD teacher: timm name, hf-hub:..., local-dir:... (supernet: optional extra teacher '
                        'of the max subnet)', _KD)
    teacher_pretrained_path: Optional[str] = _option(None, 'weights file for --teacher', _KD)
    kd_loss: str = _option('alpha', 'KD loss: adaptive alpha-divergence or KL', _KD, choices=KD_LOSSES)
    alpha_min: float = _option(-1.0, 'lower alpha of the adaptive alpha-divergence', _KD)
    alpha_max: float = _option(1.0, 'upper alpha of the adaptive alpha-divergence', _KD)
    alpha_clip: float = _option(5.0, 'importance-weight clip of the adaptive alpha-divergence', _KD)
    kd_temperature: float = _option(1.0, 'KD softmax temperature', _KD)
    kd_weight: Optional[float] = _option(None, 'KD loss weight (default 1)', _KD)
    task_weight: Optional[float] = _option(None, 'task loss weight of teacher KD (default 1)', _KD)
    num_subnets: int = _option(4, 'sandwich: max, num_subnets - 2 random, min', _KD)
    inplace_kd: bool = _option(True, 'supernet: the random and min subnets learn from the max subnet\'s logits '
                            '(--kd-loss); --no-inplace-kd: from the labels instead (the slimmable "w/o KD" row)', _KD)
    val_teacher: bool = _option(False, 'validate the teacher once before training', _KD)

    # ---- optimizer / schedule
    opt: str = _option('sgd', 'timm optimizer name ("sgd" is nesterov)', _OPT)
    opt_eps: Optional[float] = _option(None, 'optimizer epsilon (default: the optimizer\'s)', _OPT)
    momentum: float = _option(0.9, 'optimizer momentum', _OPT)
    weight_decay: float = _option(1e-5, 'weight decay (not applied to BN and bias)', _OPT)
    clip_grad: Optional[float] = _option(None, 'gradient clipping threshold (default: none)', _OPT)
    clip_mode: str = _option('norm', 'gradient clipping by norm or by value', _OPT, choices=('norm', 'value'))
    sched: str = _option('cosine', 'timm LR scheduler', _OPT, choices=SCHEDULERS)
    sched_on_updates: bool = _option(True, 'step the schedule every update (else every epoch)', _OPT)
    lr: Optional[float] = _option(0.2, 'learning rate; none = lr-base * global batch / lr-base-size', _OPT)
    lr_base: float = _option(0.1, 'learning rate per lr-base-size images, when --lr is none', _OPT)
    lr_base_size: int = _option(256, 'global batch size lr-base refers to', _OPT)
    min_lr: float = _option(0.0, 'lower bound of the schedule', _OPT)
    warmup_lr: float = _option(1e-5, 'learning rate at the start of the warm-up', _OPT)
    warmup_epochs: float = _option(1.0, 'warm-up epochs', _OPT)
    epochs: int = _option(15, 'epochs to train', _OPT)

    # ---- augmentation
    no_aug: bool = _option(False, 'no training augmentation (resize + centre crop)', _AUG)
    scale: Tuple[float, float] = _option((0.5, 1.0), 'random-resized-crop area range', _AUG)
    ratio: Tuple[float, float] = _option((3. / 4., 4. / 3.), 'random-resized-crop aspect range', _AUG)
    hflip: float = _option(0.0, 'horizontal flip probability', _AUG)
    vflip: float = _option(0.0, 'vertical flip probability', _AUG)
    color_jitter: float = _option(0.4, 'colour jitter strength', _AUG)
    aa: Optional[str] = _option(None, 'auto-augment policy, e.g. "rand-m9-mstd0.5" or "v0"', _AUG)
    reprob: float = _option(0.0, 'random erasing probability', _AUG)
    train_interpolation: str = _option('random', 'training resize interpolation', _AUG,
                                    choices=('random', *_INTERPOLATIONS))
    smoothing: float = _option(0.1, 'label smoothing', _AUG)
    mixup: float = _option(0.0, 'mixup alpha (0: off)', _AUG)
    cutmix: float = _option(0.0, 'cutmix alpha (0: off)', _AUG)
    mixup_prob: float = _option(1.0, 'probability of mixup/cutmix per batch', _AUG)
    mixup_switch_prob: float = _option(0.5, 'probability of cutmix instead of mixup when both are on', _AUG)
    mixup_mode: str = _option('batch', 'mixup/cutmix per batch, pair or element', _AUG, choices=('batch', 'pair', 'elem'))

    # ---- EMA
    model_ema: bool = _option(False, 'KD students: keep an EMA of the weights, validate it each epoch and write it '
                           'to final/', _EMA)
    model_ema_decay: float = _option(0.9998, 'EMA decay', _EMA)
    model_ema_warmup: bool = _option(False, 'EMA decay warm-up', _EMA)

    # ---- run
    mixed_precision: str = _option('no', 'Accelerate mixed precision', _RUN, choices=('no', 'fp16', 'bf16'))
    seed: int = _option(42, 'seed of initialisation, augmentation and the subnet sequence', _RUN)
    workers: int = _option(0, 'data loader processes per training process', _RUN, flags=('-j', '--workers'))
    log_interval: int = _option(20, 'steps between logged training metrics', _RUN)
    output: str = _option('output/train', 'folder of the run folders', _RUN)
    experiment: str = _option('', 'run folder name under --output; refused when it holds another run (default: time '
                           '+ model, made unique; <output>/latest links to the newest run)', _RUN)
    resume: str = _option('', 'checkpoint folder, or a run folder (its latest complete checkpoint)', _RUN)
    allow_resume_changes: bool = _option(False, 'resume even if the model, space, batch size or number of processes '
                                      'differ from the checkpoint\'s run (the run is then not exact)', _RUN)
    checkpoint_interval: int = _option(0, 'also save every N steps (0: epoch ends only)', _RUN)
    checkpoint_hist: int = _option(3, 'keep the last K checkpoints (plus the best)', _RUN)
    max_nonfinite: int = _option(5, 'stop after this many non-finite losses in a row', _RUN)
    nonfinite_check: str = _option('step', 'step: check every step that all losses are finite and skip a '
                                   'non-finite one exactly (one host read per step); log: no read per step, '
                                   'the summed loss is checked at log steps, checkpoints and epoch ends and a '
                                   'non-finite one stops the run (for GPUs, where a per-step read makes '
                                   'the host wait for the device)', _RUN, choices=('step', 'log'))
    bn_calib_batches: int = _option(8, 'supernet: BN calibration batches per validated subnet', _RUN)
    max_train_steps: int = _option(0, 'stop after this many steps in total (0: all epochs)', _RUN)
    no_progress: bool = _option(False, 'no progress bars', _RUN)
    dist_timeout: float = _option(1800.0, 'seconds a process waits for the others at a collective before the run '
                                  'fails (data preparation and teacher downloads happen on the main process first '
                                  'while the others wait; torch\'s default is 600)', _RUN)

    def __post_init__(self) -> None:
        hints = _hints()
        for f in fields(self):
            value = _check_type(f.name, getattr(self, f.name), hints[f.name])
            choices = f.metadata['choices']
            if choices and value not in choices and value is not None:
                raise ValueError(f'{f.name}: {_short(value)} is not allowed; choose from {list(choices)}')
            object.__setattr__(self, f.name, value)
        _check_ranges(self)
        from ..loss import create_kd_loss  # torch: a parsed config is checked, a parser is built without it

        create_kd_loss(self.kd_loss, self.alpha_min, self.alpha_max, self.alpha_clip, self.kd_temperature)
        if isinstance(self.space, str):  # its content, so args.yaml holds the space itself; the model checks it
            data = _read_yaml(self.space, what='search space YAML')
            if not isinstance(data, Mapping):
                raise ValueError(f'space: {_short(self.space)} holds {type(data).__name__}, not a mapping')
            object.__setattr__(self, 'space', dict(data))

    # ---- dict / YAML round trip
    def to_dict(self) -> Dict[str, Any]:
        """Plain YAML/JSON types (tuples become lists), in field order."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    def to_yaml(self) -> str:
        """YAML text that `from_yaml` reads back into an equal TrainConfig."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = 'config') -> 'TrainConfig':
        """A TrainConfig from a mapping of field values (missing keys keep the demo defaults).

        Raises:
            ValueError: an unknown key (with the closest known one) or a bad value, prefixed with `where`.
            TypeError: a value of the wrong type (e.g. ``epochs: '10'``), prefixed with `where`.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f'{where}: expected a mapping of option names to values, got {type(data).__name__}')
        names = [f.name for f in fields(cls)]
        for key in data:
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ''
                raise ValueError(f'{where}: unknown key {_short(key)}{hint}; keys are the long flag names with '
                                 'underscores, e.g. batch_size for --batch-size (alphanet-train --help lists them)')
        try:
            return cls(**data)
        except (ValueError, TypeError) as e:
            raise type(e)(f'{where}: {e}') from None

    @classmethod
    def from_yaml(cls, path: Union[str, os.PathLike]) -> 'TrainConfig':
        """Read a YAML config (an empty file is the demo); see `from_dict` for the errors."""
        data = _read_yaml(path)
        return cls.from_dict({} if data is None else data, where=os.fspath(path))

    def replace(self, **changes: Any) -> 'TrainConfig':
        """A copy with `changes` (validated like any TrainConfig)."""
        return dataclasses.replace(self, **changes)


# ---- validation helpers
_HINTS: Dict[str, Any] = {}


def _hints() -> Dict[str, Any]:
    if not _HINTS:
        _HINTS.update(get_type_hints(TrainConfig))
    return _HINTS


def _short(value: Any) -> str:
    return reprlib.repr(value)


_TYPE_WORDS = {int: 'an integer', float: 'a number', str: 'a string', bool: 'true or false'}


def _describe(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Union:
        return ' or '.join('null' if a is type(None) else _describe(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f'a list of ({_describe(args[0])})'
        return f'a list of {len(args)} ({_describe(args[0])})'
    if origin is dict:
        return 'a mapping'
    return _TYPE_WORDS.get(tp, getattr(tp, '__name__', str(tp)))


def _check_type(name: str, value: Any, tp: Any) -> Any:
    """`value` if it is of type `tp` (lists become tuples, ints become floats); TypeError naming `name` otherwise."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _check_type(name, value, option)
            except TypeError:
                pass
    elif origin is tuple and isinstance(value, (list, tuple)):
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) == len(value):
            return tuple(_check_type(f'{name}[{i}]', v, t) for i, (v, t) in enumerate(zip(value, items)))
    elif origin is dict and isinstance(value, Mapping):
        return dict(value)
    elif tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif tp in (int, str, bool) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    hint = ''
    if isinstance(value, str) and tp in (float, Optional[float]):
        hint = ' (YAML reads 1e-5 as text: write 1.0e-5)'
    raise TypeError(f'{name}: expected {_describe(tp)}, got {_short(value)}{hint}')


_INT_MIN = {'epochs': 1, 'batch_size': 1, 'validation_batch_size': 1, 'num_classes': 1, 'num_subnets': 2,
            'lr_base_size': 1, 'workers': 0, 'log_interval': 1, 'checkpoint_interval': 0, 'checkpoint_hist': 1,
            'max_nonfinite': 1, 'bn_calib_batches': 1, 'max_train_steps': 0, 'seed': 0}
_INF = math.inf
# name: (low, high, low_inclusive, high_inclusive)
_FLOAT_RANGE = {
    'lr': (0, _INF, False, False), 'lr_base': (0, _INF, False, False), 'min_lr': (0, _INF, True, False),
    'warmup_lr': (0, _INF, True, False), 'warmup_epochs': (0, _INF, True, False), 'momentum': (0, 1, True, True),
    'weight_decay': (0, _INF, True, False), 'clip_grad': (0, _INF, False, False), 'opt_eps': (0, _INF, False, False),
    'drop': (0, 1, True, False), 'drop_path': (0, 1, True, False), 'bn_momentum': (0, 1, True, True),
    'crop_pct': (0, 1, False, True), 'hflip': (0, 1, True, True), 'vflip': (0, 1, True, True),
    'reprob': (0, 1, True, True), 'smoothing': (0, 1, True, False), 'color_jitter': (0, _INF, True, False),
    'mixup': (0, _INF, True, False), 'cutmix': (0, _INF, True, False), 'mixup_prob': (0, 1, True, True),
    'mixup_switch_prob': (0, 1, True, True), 'kd_temperature': (0, _INF, False, False),
    'alpha_clip': (0, _INF, False, False), 'kd_weight': (0, _INF, True, False), 'task_weight': (0, _INF, True, False),
    'model_ema_decay': (0, 1, False, False), 'alpha_min': (-_INF, _INF, False, False),
    'alpha_max': (-_INF, _INF, False, False), 'dist_timeout': (0, 7 * 24 * 3600, False, True),
}


def _interval(lo: float, hi: float, lo_in: bool, hi_in: bool) -> str:
    return f'{"[" if lo_in else "("}{lo}, {hi}{"]" if hi_in else ")"}'


def _check_ranges(cfg: TrainConfig) -> None:
    for name, low in _INT_MIN.items():
        value = getattr(cfg, name)
        if value is not None and value < low:
            raise ValueError(f'{name}: must be >= {low}, got {value}')
    for name, (lo, hi, lo_in, hi_in) in _FLOAT_RANGE.items():
        value = getattr(cfg, name)
        if value is None:
            continue
        inside = (lo <= value if lo_in else lo < value) and (value <= hi if hi_in else value < hi)
        if not (math.isfinite(value) and inside):
            raise ValueError(f'{name}: must be a finite number in {_interval(lo, hi, lo_in, hi_in)}, got {value}')
    for name, (lo, hi) in (('scale', cfg.scale), ('ratio', cfg.ratio)):
        if not (math.isfinite(hi) and 0 < lo <= hi and (name != 'scale' or hi <= 1)):
            raise ValueError(f'{name}: needs 0 < low <= high{" <= 1" if name == "scale" else ""}, got [{lo}, {hi}]')
    if cfg.input_size is not None and min(cfg.input_size) < 1:
        raise ValueError(f'input_size: C H W must be positive, got {list(cfg.input_size)}')
    for name in ('mean', 'std'):
        value = getattr(cfg, name)
        if value is not None and (len(value) not in (1, 3) or not all(map(math.isfinite, value))
                                  or (name == 'std' and min(value) <= 0)):
            raise ValueError(f'{name}: needs 1 or 3 finite values{" > 0" if name == "std" else ""}, '
                             f'got {_short(list(value))}')


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value
