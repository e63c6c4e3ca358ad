"""Batch samplers named in ``DATALOADER.*.SAMPLER`` (Dassl's ``dassl/data/samplers.py``).

Randomness comes from Python's ``random`` (and NumPy for class oversampling), as in Dassl, so
``set_random_seed`` makes them reproducible.
"""
import copy
import random
from collections import defaultdict
from typing import Dict, List, Sequence

import numpy as np
from torch.utils.data.sampler import RandomSampler, Sampler, SequentialSampler

AVAI_SAMPLERS = ["RandomSampler", "SequentialSampler", "RandomDomainSampler", "SeqDomainSampler",
                 "RandomClassSampler"]


def _indices_by(data_source: Sequence, attribute: str) -> Dict[int, List[int]]:
    """``{value of item.<attribute>: [indices]}``."""
    groups = defaultdict(list)
    for index, item in enumerate(data_source):
        groups[getattr(item, attribute)].append(index)
    return groups


class _DomainSampler(Sampler):
    """Batches of ``n_domain`` domains x ``batch_size // n_domain`` images, without replacement,
    until one domain runs short. Subclasses choose the domains of each round."""

    def __init__(self, data_source: Sequence, batch_size: int, n_domain: int):
        self.data_source = data_source
        self.domain_dict = _indices_by(data_source, "domain")
        self.domains = list(self.domain_dict.keys())  # order of first appearance
        if batch_size % n_domain != 0:
            raise ValueError(f"batch_size={batch_size} must be divisible by the number of domains per batch ({n_domain})")
        self.n_img_per_domain = batch_size // n_domain
        self.batch_size = batch_size
        self.n_domain = n_domain
        self.length = len(list(self.__iter__()))

    def _round_domains(self) -> List[int]:
        raise NotImplementedError

    def __iter__(self):
        domain_dict = copy.deepcopy(self.domain_dict)
        final_idxs = []
        stop_sampling = False
        while not stop_sampling:
            for domain in self._round_domains():
                selected = random.sample(domain_dict[domain], self.n_img_per_domain)
                final_idxs.extend(selected)
                for idx in selected:
                    domain_dict[domain].remove(idx)
                if len(domain_dict[domain]) < self.n_img_per_domain:
                    stop_sampling = True
        return iter(final_idxs)

    def __len__(self) -> int:
        return self.length


class RandomDomainSampler(_DomainSampler):
    """Each batch: ``n_domain`` domains drawn at random (``n_domain <= 0``: all domains)."""

    def __init__(self, data_source: Sequence, batch_size: int, n_domain: int):
        if n_domain is None or n_domain <= 0:
            n_domain = len(_indices_by(data_source, "domain"))
        super().__init__(data_source, batch_size, n_domain)

    def _round_domains(self) -> List[int]:
        return random.sample(self.domains, self.n_domain)


class SeqDomainSampler(_DomainSampler):
    """Each batch: every domain in sorted order."""

    def __init__(self, data_source: Sequence, batch_size: int):
        super().__init__(data_source, batch_size, len(_indices_by(data_source, "domain")))

    def _round_domains(self) -> List[int]:
        return sorted(self.domains)


class RandomClassSampler(Sampler):
    """Batches of ``batch_size // n_ins`` random classes x ``n_ins`` instances each."""

    def __init__(self, data_source: Sequence, batch_size: int, n_ins: int):
        if batch_size < n_ins:
            raise ValueError(f"batch_size={batch_size} must be no less than n_ins={n_ins}")
        self.data_source = data_source
        self.batch_size = batch_size
        self.n_ins = n_ins
        self.ncls_per_batch = batch_size // n_ins
        self.index_dic = _indices_by(data_source, "label")
        self.labels = list(self.index_dic.keys())
        if len(self.labels) < self.ncls_per_batch:
            raise ValueError(
                f"RandomClassSampler needs at least {self.ncls_per_batch} classes, the data has {len(self.labels)}"
            )
        self.length = len(list(self.__iter__()))

    def __iter__(self):
        batch_idxs_dict = defaultdict(list)
        for label in self.labels:
            idxs = copy.deepcopy(self.index_dic[label])
            if len(idxs) < self.n_ins:
                idxs = np.random.choice(idxs, size=self.n_ins, replace=True)
            random.shuffle(idxs)
            for start in range(0, len(idxs) - self.n_ins + 1, self.n_ins):
                batch_idxs_dict[label].append(list(idxs[start:start + self.n_ins]))

        avai_labels = copy.deepcopy(self.labels)
        final_idxs = []
        while len(avai_labels) >= self.ncls_per_batch:
            for label in random.sample(avai_labels, self.ncls_per_batch):
                final_idxs.extend(batch_idxs_dict[label].pop(0))
                if len(batch_idxs_dict[label]) == 0:
                    avai_labels.remove(label)
        return iter(final_idxs)

    def __len__(self) -> int:
        return self.length


def build_sampler(sampler_type: str, cfg=None, data_source=None, batch_size: int = 32,
                  n_domain: int = 0, n_ins: int = 16) -> Sampler:
    """The sampler named ``sampler_type`` over ``data_source``."""
    if sampler_type == "RandomSampler":
        return RandomSampler(data_source)
    if sampler_type == "SequentialSampler":
        return SequentialSampler(data_source)
    if sampler_type == "RandomDomainSampler":
        return RandomDomainSampler(data_source, batch_size, n_domain)
    if sampler_type == "SeqDomainSampler":
        return SeqDomainSampler(data_source, batch_size)
    if sampler_type == "RandomClassSampler":
        return RandomClassSampler(data_source, batch_size, n_ins)
    raise ValueError(f"Unknown sampler type: {sampler_type} (allowed: {AVAI_SAMPLERS})")
