"""Dassl's data layer: records, datasets, transforms, samplers and the ``DataManager``."""
from prompt_diffusion.engine.data.data_manager import DataManager, DatasetWrapper, build_data_loader, build_dataset
from prompt_diffusion.engine.data.dataset_base import DatasetBase, Datum
from prompt_diffusion.engine.data.batch_samplers import build_sampler
from prompt_diffusion.engine.data.transforms import INTERPOLATION_MODES, build_transform

__all__ = [
    "DataManager", "DatasetWrapper", "build_data_loader", "build_dataset", "DatasetBase", "Datum",
    "build_sampler", "INTERPOLATION_MODES", "build_transform",
]
