"""``DataManager``: dataset + transforms + samplers -> data loaders (Dassl's ``data_manager.py``).

Batches are dicts: ``img`` (transformed tensor, or a list of K tensors with ``K_TRANSFORMS``),
``label``, ``domain``, ``impath``, ``index``, and ``img0`` (un-augmented) with ``RETURN_IMG0``.
"""
from typing import List, Sequence

import torch
import torchvision.transforms as T
from torch.utils.data import Dataset as TorchDataset
from yacs.config import CfgNode

from prompt_diffusion.engine.data.batch_samplers import build_sampler
from prompt_diffusion.engine.data.transforms import INTERPOLATION_MODES, build_transform
from prompt_diffusion.engine.registry import DATASET_REGISTRY, check_availability
from prompt_diffusion.engine.utils import read_image


def build_dataset(cfg: CfgNode):
    """Instantiate the dataset class registered as ``cfg.DATASET.NAME`` with ``cfg``."""
    check_availability(cfg.DATASET.NAME, DATASET_REGISTRY.registered_names())
    if cfg.VERBOSE:
        print(f"Loading dataset: {cfg.DATASET.NAME}")
    return DATASET_REGISTRY.get(cfg.DATASET.NAME)(cfg)


def build_data_loader(cfg: CfgNode, sampler_type: str = "SequentialSampler", data_source=None,
                      batch_size: int = 64, n_domain: int = 0, n_ins: int = 2, tfm=None,
                      is_train: bool = True, dataset_wrapper=None) -> torch.utils.data.DataLoader:
    """A loader over ``data_source``; training loaders drop the last partial batch (if one full
    batch fits)."""
    sampler = build_sampler(sampler_type, cfg=cfg, data_source=data_source, batch_size=batch_size,
                            n_domain=n_domain, n_ins=n_ins)
    wrapper_cls = DatasetWrapper if dataset_wrapper is None else dataset_wrapper
    data_loader = torch.utils.data.DataLoader(
        wrapper_cls(cfg, data_source, transform=tfm, is_train=is_train),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        drop_last=is_train and len(data_source) >= batch_size,
        pin_memory=(torch.cuda.is_available() and cfg.USE_CUDA),
    )
    if len(data_loader) == 0:
        raise ValueError(f"The data loader over {len(data_source)} items with sampler {sampler_type} is empty")
    return data_loader


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Two left-aligned columns between dashed rules (the layout of ``tabulate``'s default)."""
    widths = [max(len(str(row[col])) for row in rows) for col in range(2)]
    rule = "  ".join("-" * width for width in widths)
    body = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join([rule, *body, rule])


class DataManager:
    """Builds the dataset named in ``cfg`` and its train_x / train_u / val / test loaders."""

    def __init__(self, cfg: CfgNode, custom_tfm_train=None, custom_tfm_test=None, dataset_wrapper=None):
        dataset = build_dataset(cfg)

        if custom_tfm_train is None:
            tfm_train = build_transform(cfg, is_train=True)
        else:
            print("* Using custom transform for training")
            tfm_train = custom_tfm_train
        if custom_tfm_test is None:
            tfm_test = build_transform(cfg, is_train=False)
        else:
            print("* Using custom transform for testing")
            tfm_test = custom_tfm_test

        loader_x = cfg.DATALOADER.TRAIN_X
        train_loader_x = build_data_loader(
            cfg, sampler_type=loader_x.SAMPLER, data_source=dataset.train_x,
            batch_size=loader_x.BATCH_SIZE, n_domain=loader_x.N_DOMAIN, n_ins=loader_x.N_INS,
            tfm=tfm_train, is_train=True, dataset_wrapper=dataset_wrapper,
        )

        train_loader_u = None
        if dataset.train_u:
            loader_u = loader_x if cfg.DATALOADER.TRAIN_U.SAME_AS_X else cfg.DATALOADER.TRAIN_U
            train_loader_u = build_data_loader(
                cfg, sampler_type=loader_u.SAMPLER, data_source=dataset.train_u,
                batch_size=loader_u.BATCH_SIZE, n_domain=loader_u.N_DOMAIN, n_ins=loader_u.N_INS,
                tfm=tfm_train, is_train=True, dataset_wrapper=dataset_wrapper,
            )

        loader_test = cfg.DATALOADER.TEST
        val_loader = None
        if dataset.val:
            val_loader = build_data_loader(
                cfg, sampler_type=loader_test.SAMPLER, data_source=dataset.val,
                batch_size=loader_test.BATCH_SIZE, tfm=tfm_test, is_train=False,
                dataset_wrapper=dataset_wrapper,
            )
        test_loader = build_data_loader(
            cfg, sampler_type=loader_test.SAMPLER, data_source=dataset.test,
            batch_size=loader_test.BATCH_SIZE, tfm=tfm_test, is_train=False,
            dataset_wrapper=dataset_wrapper,
        )

        self._num_classes = dataset.num_classes
        self._num_source_domains = len(cfg.DATASET.SOURCE_DOMAINS)
        self._lab2cname = dataset.lab2cname
        self.dataset = dataset
        self.train_loader_x = train_loader_x
        self.train_loader_u = train_loader_u
        self.val_loader = val_loader
        self.test_loader = test_loader

        if cfg.VERBOSE:
            self.show_dataset_summary(cfg)

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def num_source_domains(self) -> int:
        return self._num_source_domains

    @property
    def lab2cname(self) -> dict:
        return self._lab2cname

    def show_dataset_summary(self, cfg: CfgNode) -> None:
        rows: List[List[str]] = [["Dataset", cfg.DATASET.NAME]]
        if cfg.DATASET.SOURCE_DOMAINS:
            rows.append(["Source", str(cfg.DATASET.SOURCE_DOMAINS)])
        if cfg.DATASET.TARGET_DOMAINS:
            rows.append(["Target", str(cfg.DATASET.TARGET_DOMAINS)])
        rows.append(["# classes", f"{self.num_classes:,}"])
        rows.append(["# train_x", f"{len(self.dataset.train_x):,}"])
        if self.dataset.train_u:
            rows.append(["# train_u", f"{len(self.dataset.train_u):,}"])
        if self.dataset.val:
            rows.append(["# val", f"{len(self.dataset.val):,}"])
        rows.append(["# test", f"{len(self.dataset.test):,}"])
        print(format_table(rows))


class DatasetWrapper(TorchDataset):
    """Reads and transforms the images of a list of ``Datum``."""

    def __init__(self, cfg: CfgNode, data_source: Sequence, transform=None, is_train: bool = False):
        self.cfg = cfg
        self.data_source = data_source
        self.transform = transform  # one transform, or a list/tuple giving img, img2, img3 ...
        self.is_train = is_train
        self.k_tfm = cfg.DATALOADER.K_TRANSFORMS if is_train else 1  # K > 1 only when training
        self.return_img0 = cfg.DATALOADER.RETURN_IMG0
        if self.k_tfm > 1 and transform is None:
            raise ValueError(f"Cannot augment the image {self.k_tfm} times because transform is None")
        to_tensor = [T.Resize(cfg.INPUT.SIZE, interpolation=INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]),
                     T.ToTensor()]
        if "normalize" in cfg.INPUT.TRANSFORMS:
            to_tensor.append(T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD))
        self.to_tensor = T.Compose(to_tensor)

    def __len__(self) -> int:
        return len(self.data_source)

    def __getitem__(self, idx: int) -> dict:
        item = self.data_source[idx]
        output = {"label": item.label, "domain": item.domain, "impath": item.impath, "index": idx}
        img0 = read_image(item.impath)
        if self.transform is None:
            output["img"] = img0
        elif isinstance(self.transform, (list, tuple)):
            for i, tfm in enumerate(self.transform):
                output["img" if i == 0 else f"img{i + 1}"] = self._transform_image(tfm, img0)
        else:
            output["img"] = self._transform_image(self.transform, img0)
        if self.return_img0:
            output["img0"] = self.to_tensor(img0)  # without augmentation
        return output

    def _transform_image(self, tfm, img0):
        images = [tfm(img0) for _ in range(self.k_tfm)]
        return images[0] if len(images) == 1 else images
