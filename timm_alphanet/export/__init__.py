"""Subnets as static timm models (`extract_subnet`) and timm/Hub model folders (`save_pretrained`)."""
from .extract import crop_like, extract_subnet
from .hub import save_pretrained

__all__ = ['crop_like', 'extract_subnet', 'save_pretrained']
