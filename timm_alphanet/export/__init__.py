"""Subnets as static timm models (`extract_subnet`), model folders (`save_pretrained`), publishing (`push_to_hub`)."""
from .extract import crop_like, extract_subnet
from .folder import OutputExistsError, save_pretrained, update_metadata
from .hub import HubPublisher, push_to_hub

__all__ = ['crop_like', 'extract_subnet', 'save_pretrained', 'update_metadata', 'OutputExistsError', 'HubPublisher',
           'push_to_hub']
