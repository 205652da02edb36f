"""File and value plumbing shared by every part of the package: bounded readers, the one atomic writer, hashing,
value checks and model-folder checks. The bottom tier: plain Python, no torch, imported by all."""
from .files import (
    LOCK_FILE, MAX_TEXT_BYTES, NO_SPACE_ERRNOS, PathLike, append_jsonl, check_writable_folder, claim_folder, read_bounded_bytes,
    read_text_file,
    regular_file_size, replace_directory, replace_symlink, sha256_file, staged_directory, write_atomic,
)
from .messages import MAX_REPR, bounded_repr, display_path, short_message
from .optional import EXTRAS, MissingExtraError, import_optional
from .model_dir import (
    MAX_CONFIG_BYTES, MAX_NUM_CLASSES, MAX_SAFETENSORS_HEADER, check_model_dir, check_model_spec, check_num_classes,
    check_safetensors,
)
from .trees import (
    INT_HASH_MODULUS, MAX_DEPTH, MAX_NODES, check_tree, parse_json, parse_yaml, read_json_file, read_yaml_file,
)
from .values import as_float, as_int, check_int, instance_or_mapping, int_tuple, plain_items, plain_number

__all__ = [
    'MAX_CONFIG_BYTES', 'MAX_DEPTH', 'MAX_NODES', 'MAX_NUM_CLASSES', 'MAX_REPR', 'MAX_SAFETENSORS_HEADER',
    'MAX_TEXT_BYTES', 'EXTRAS', 'INT_HASH_MODULUS', 'MissingExtraError', 'NO_SPACE_ERRNOS', 'PathLike', 'append_jsonl',
    'LOCK_FILE',
    'check_writable_folder', 'claim_folder', 'as_float', 'as_int',
    'bounded_repr', 'check_int', 'check_num_classes',
    'check_model_dir', 'check_model_spec', 'check_safetensors', 'check_tree', 'display_path', 'import_optional',
    'instance_or_mapping',
    'int_tuple', 'parse_json', 'parse_yaml', 'plain_items', 'plain_number', 'read_bounded_bytes', 'read_json_file',
    'read_text_file', 'read_yaml_file', 'regular_file_size', 'replace_directory', 'replace_symlink', 'sha256_file',
    'short_message', 'staged_directory', 'write_atomic',
]
