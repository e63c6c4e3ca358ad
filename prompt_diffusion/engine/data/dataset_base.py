"""``Datum`` and ``DatasetBase``: Dassl's dataset records (``dassl/data/datasets/base_dataset.py``).

A dataset is three lists of ``Datum`` (train_x, val, test; train_u for unlabeled data). Labels are
integers 0..K-1; ``lab2cname`` and ``classnames`` come from ``train_x``.
"""
import os
import os.path as osp
import random
import tarfile
import zipfile
from collections import defaultdict
from typing import Dict, List, Sequence, Tuple



class Datum:
    """One image: its path, class label, domain label and class name (read-only)."""

    def __init__(self, impath: str = "", label: int = 0, domain: int = 0, classname: str = ""):
        if not isinstance(impath, str):
            raise TypeError(f"Datum impath must be a str, got {type(impath).__name__}: {impath!r}")
        if not osp.isfile(impath):
            raise FileNotFoundError(f"Datum impath is not a file: {impath!r}")
        self._impath = impath
        self._label = label
        self._domain = domain
        self._classname = classname

    @property
    def impath(self) -> str:
        return self._impath

    @property
    def label(self) -> int:
        return self._label

    @property
    def domain(self) -> int:
        return self._domain

    @property
    def classname(self) -> str:
        return self._classname

    def __repr__(self) -> str:
        return f"Datum(impath={self._impath!r}, label={self._label}, domain={self._domain}, classname={self._classname!r})"


class DatasetBase:
    """Holds the splits of a dataset for domain adaptation/generalization and few-shot learning."""

    dataset_dir = ""  # folder of the dataset under DATASET.ROOT
    domains: List[str] = []  # names of all domains

    def __init__(self, train_x=None, train_u=None, val=None, test=None):
        self._train_x = train_x  # labeled training data
        self._train_u = train_u  # unlabeled training data (optional)
        self._val = val  # validation data (optional)
        self._test = test  # test data
        self._num_classes = self.get_num_classes(train_x)
        self._lab2cname, self._classnames = self.get_lab2cname(train_x)

    @property
    def train_x(self):
        return self._train_x

    @property
    def train_u(self):
        return self._train_u

    @property
    def val(self):
        return self._val

    @property
    def test(self):
        return self._test

    @property
    def lab2cname(self) -> Dict[int, str]:
        return self._lab2cname

    @property
    def classnames(self) -> List[str]:
        return self._classnames

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @staticmethod
    def get_num_classes(data_source: Sequence[Datum]) -> int:
        """Number of classes = largest label + 1."""
        return max({item.label for item in data_source}) + 1

    @staticmethod
    def get_lab2cname(data_source: Sequence[Datum]) -> Tuple[Dict[int, str], List[str]]:
        """``({label: classname}, classnames sorted by label)``."""
        mapping = {label: classname for label, classname in {(d.label, d.classname) for d in data_source}}
        classnames = [mapping[label] for label in sorted(mapping)]
        return mapping, classnames

    def check_input_domains(self, source_domains: Sequence[str], target_domains: Sequence[str]) -> None:
        assert len(source_domains) > 0, "source_domains (list) is empty"
        assert len(target_domains) > 0, "target_domains (list) is empty"
        self.is_input_domain_valid(source_domains)
        self.is_input_domain_valid(target_domains)

    def is_input_domain_valid(self, input_domains: Sequence[str]) -> None:
        for domain in input_domains:
            if domain not in self.domains:
                raise ValueError(f"Input domain must belong to {self.domains}, but got [{domain}]")

    def download_data(self, url: str, dst: str, from_gdrive: bool = True) -> None:
        """Download ``url`` to ``dst`` with gdown and extract it next to ``dst``."""
        if not from_gdrive:
            raise NotImplementedError("download_data only supports Google Drive urls (from_gdrive=True)")
        try:
            import gdown
        except ImportError as error:
            raise ImportError("download_data needs gdown: pip install gdown") from error
        os.makedirs(osp.dirname(dst), exist_ok=True)
        gdown.download(url, dst, quiet=False)
        print("Extracting file ...")
        if dst.endswith(".zip"):
            with zipfile.ZipFile(dst, "r") as archive:
                archive.extractall(osp.dirname(dst))
        elif dst.endswith(".tar") or dst.endswith(".tar.gz"):
            with tarfile.open(dst, "r:gz" if dst.endswith(".gz") else "r:") as archive:
                archive.extractall(osp.dirname(dst))
        else:
            raise NotImplementedError(f"Cannot extract {dst}: allowed are .zip, .tar, .tar.gz")
        print(f"File extracted to {osp.dirname(dst)}")

    def generate_fewshot_dataset(self, *data_sources, num_shots: int = -1, repeat: bool = False):
        """Sample ``num_shots`` items per class from each data source (Python's ``random``).

        ``num_shots < 1`` returns the sources unchanged. A class with fewer items keeps them all,
        or samples with replacement when ``repeat``. One source in -> one list out.
        """
        if num_shots < 1:
            if len(data_sources) == 1:
                return data_sources[0]
            return data_sources

        print(f"Creating a {num_shots}-shot dataset")
        output = []
        for data_source in data_sources:
            tracker = self.split_dataset_by_label(data_source)
            dataset = []
            for items in tracker.values():
                if len(items) >= num_shots:
                    sampled_items = random.sample(items, num_shots)
                elif repeat:
                    sampled_items = random.choices(items, k=num_shots)
                else:
                    sampled_items = items
                dataset.extend(sampled_items)
            output.append(dataset)

        if len(output) == 1:
            return output[0]
        return output

    def split_dataset_by_label(self, data_source: Sequence[Datum]) -> Dict[int, List[Datum]]:
        """``{label: [Datum, ...]}`` in order of first appearance."""
        output = defaultdict(list)
        for item in data_source:
            output[item.label].append(item)
        return output

    def split_dataset_by_domain(self, data_source: Sequence[Datum]) -> Dict[int, List[Datum]]:
        """``{domain: [Datum, ...]}`` in order of first appearance."""
        output = defaultdict(list)
        for item in data_source:
            output[item.domain].append(item)
        return output
