"""Shared by training, index and service: encoders, tokenizer, preprocessing, bundle format, devices."""

from clipforge.encoders.bundle import BUNDLE_FORMAT, Bundle, BundleError, load_bundle, save_bundle
from clipforge.encoders.device import autocast, resolve_device, resolve_precision
from clipforge.encoders.images import ImageDecodeError, load_image
from clipforge.encoders.model import build_model, resolve_model_config

__all__ = [
    "BUNDLE_FORMAT",
    "Bundle",
    "BundleError",
    "ImageDecodeError",
    "autocast",
    "build_model",
    "load_bundle",
    "load_image",
    "resolve_device",
    "resolve_model_config",
    "resolve_precision",
    "save_bundle",
]
