"""Original AlphaNet/AttentiveNAS checkpoints: safe reading, key conversion, loading and `alphanet-convert`."""
from .checkpoint import load_original_checkpoint, read_original_checkpoint
from .convert import ConvertedPaths, SUBNET_NAMES, convert_checkpoint, resolve_subnets
from .keys import check_converted_state_dict, convert_original_state_dict, layout_from_supernet_config
from .unpickler import UnsafeCheckpointError, numpy_arrays, restricted_pickle, storage_limit

__all__ = [
    'UnsafeCheckpointError', 'numpy_arrays', 'restricted_pickle', 'storage_limit', 'read_original_checkpoint', 'convert_original_state_dict',
    'check_converted_state_dict', 'layout_from_supernet_config', 'load_original_checkpoint',
    'ConvertedPaths', 'SUBNET_NAMES', 'convert_checkpoint', 'resolve_subnets',
]
