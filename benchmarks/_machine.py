"""What a benchmark ran on: CPU/GPU name, cores, threads, library versions. Shared by run_all.py and reproduce/."""
import os
import platform
from typing import Any, Dict

__all__ = ['cpu_name', 'machine_info', 'machine_line']


def cpu_name() -> str:
    """The CPU model name (Linux /proc/cpuinfo; `platform.processor()` elsewhere)."""
    try:
        with open('/proc/cpuinfo', encoding='utf-8', errors='replace') as f:
            for line in f.read(1 << 20).splitlines():
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or 'unknown CPU'


def machine_info() -> Dict[str, Any]:
    """CPU, cores (os.cpu_count and the ones this process may use), torch threads, GPU, torch/timm versions."""
    import timm
    import torch

    import timm_alphanet
    usable = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    info: Dict[str, Any] = {
        'cpu': cpu_name(), 'cpu_count': os.cpu_count(), 'usable_cores': usable, 'torch_threads': torch.get_num_threads(),
        'gpu': None, 'python': platform.python_version(), 'torch': torch.__version__, 'timm': timm.__version__,
        'timm_alphanet': timm_alphanet.__version__, 'platform': platform.platform(),
    }
    if torch.cuda.is_available():
        info['gpu'] = f'{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}'
        info['cuda'] = torch.version.cuda
    return info


def machine_line(info: Dict[str, Any]) -> str:
    """One line for a report header."""
    gpu = f", GPU {info['gpu']} (CUDA {info.get('cuda')})" if info.get('gpu') else ', no GPU'
    return (f"{info['cpu']}, {info['usable_cores']} usable of {info['cpu_count']} cores, {info['torch_threads']} torch "
            f"threads{gpu}; torch {info['torch']}, timm {info['timm']}, timm_alphanet {info['timm_alphanet']}, "
            f"Python {info['python']}")
