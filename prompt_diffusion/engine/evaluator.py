"""Classification metrics and the ``Classification`` evaluator (Dassl's ``dassl/evaluation``).

``Classification.evaluate`` prints Dassl's result block, which CoOp-style log parsers read::

    => result
    * total: 1,000
    * correct: 913
    * accuracy: 91.3%
    * error: 8.7%
    * macro_f1: 91.0%
"""
import os.path as osp
from collections import OrderedDict, defaultdict
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
import torch
from yacs.config import CfgNode

from prompt_diffusion.engine.registry import EVALUATOR_REGISTRY, check_availability


def compute_accuracy(output: Union[torch.Tensor, Sequence[torch.Tensor]], target: torch.Tensor,
                     topk: Tuple[int, ...] = (1,)) -> List[torch.Tensor]:
    """Top-k accuracies in percent, one 1-element tensor per k. ``output``: [B, K] logits (or a
    tuple/list whose first entry is), ``target``: [B] labels."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    maxk = max(topk)
    batch_size = target.size(0)
    _, pred = output.topk(maxk, 1, True, True)
    pred = pred.t()  # [maxk, B]
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum(0, keepdim=True).mul_(100.0 / batch_size) for k in topk]


def macro_f1_score(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Mean F1 over the labels present in ``y_true`` (sklearn's ``f1_score(average="macro",
    labels=np.unique(y_true))``): F1 = 2 TP / (2 TP + FP + FN)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    scores = []
    for label in np.unique(y_true):
        tp = np.sum((y_pred == label) & (y_true == label))
        fp = np.sum((y_pred == label) & (y_true != label))
        fn = np.sum((y_pred != label) & (y_true == label))
        scores.append(2.0 * tp / (2.0 * tp + fp + fn))
    return float(np.mean(scores))


def confusion_matrix_true_normalized(y_true: Sequence[int], y_pred: Sequence[int]) -> torch.Tensor:
    """[L, L] confusion matrix over the sorted labels seen, each row divided by its count."""
    labels = np.unique(np.concatenate([np.asarray(y_true), np.asarray(y_pred)]))
    index = {label: i for i, label in enumerate(labels)}
    cmat = np.zeros((len(labels), len(labels)), dtype=np.float64)
    for t, p in zip(y_true, y_pred):
        cmat[index[t], index[p]] += 1
    row_sums = cmat.sum(axis=1, keepdims=True)
    return torch.from_numpy(np.divide(cmat, row_sums, out=np.zeros_like(cmat), where=row_sums > 0))


class EvaluatorBase:
    """Collects model outputs with ``process`` and summarises them with ``evaluate``."""

    def __init__(self, cfg: CfgNode):
        self.cfg = cfg

    def reset(self) -> None:
        raise NotImplementedError

    def process(self, mo: torch.Tensor, gt: torch.Tensor) -> None:
        raise NotImplementedError

    def evaluate(self) -> Dict[str, float]:
        raise NotImplementedError


@EVALUATOR_REGISTRY.register()
class Classification(EvaluatorBase):
    """Accuracy, error rate and macro F1 (and per-class accuracy / confusion matrix on request)."""

    def __init__(self, cfg: CfgNode, lab2cname: dict = None, **kwargs):
        super().__init__(cfg)
        self._lab2cname = lab2cname
        self._per_class_res = None
        if cfg.TEST.PER_CLASS_RESULT:
            if lab2cname is None:
                raise ValueError("TEST.PER_CLASS_RESULT needs lab2cname")
            self._per_class_res = defaultdict(list)
        self.reset()

    def reset(self) -> None:
        self._correct = 0
        self._total = 0
        self._y_true: List[int] = []
        self._y_pred: List[int] = []
        if self._per_class_res is not None:
            self._per_class_res = defaultdict(list)

    def process(self, mo: torch.Tensor, gt: torch.Tensor) -> None:
        """``mo``: [B, K] model output, ``gt``: [B] labels."""
        pred = mo.max(1)[1]
        matches = pred.eq(gt).float()
        self._correct += int(matches.sum().item())
        self._total += gt.shape[0]
        self._y_true.extend(gt.data.cpu().numpy().tolist())
        self._y_pred.extend(pred.data.cpu().numpy().tolist())
        if self._per_class_res is not None:
            for label, match in zip(gt.tolist(), matches.tolist()):
                self._per_class_res[label].append(int(match))

    def evaluate(self) -> Dict[str, float]:
        """Print Dassl's result block; returns an ordered dict whose first value is the accuracy."""
        if self._total == 0:
            raise RuntimeError("Classification.evaluate() called before any process() call")
        results = OrderedDict()
        acc = 100.0 * self._correct / self._total
        err = 100.0 - acc
        macro_f1 = 100.0 * macro_f1_score(self._y_true, self._y_pred)
        results["accuracy"] = acc
        results["error_rate"] = err
        results["macro_f1"] = macro_f1
        print(
            "=> result\n"
            f"* total: {self._total:,}\n"
            f"* correct: {self._correct:,}\n"
            f"* accuracy: {acc:.1f}%\n"
            f"* error: {err:.1f}%\n"
            f"* macro_f1: {macro_f1:.1f}%"
        )
        if self._per_class_res is not None:
            print("=> per-class result")
            accs = []
            for label in sorted(self._per_class_res):
                res = self._per_class_res[label]
                class_acc = 100.0 * sum(res) / len(res)
                accs.append(class_acc)
                print(
                    f"* class: {label} ({self._lab2cname[label]})\t"
                    f"total: {len(res):,}\tcorrect: {sum(res):,}\tacc: {class_acc:.1f}%"
                )
            mean_acc = float(np.mean(accs))
            print(f"* average: {mean_acc:.1f}%")
            results["perclass_accuracy"] = mean_acc
        if self.cfg.TEST.COMPUTE_CMAT:
            save_path = osp.join(self.cfg.OUTPUT_DIR, "cmat.pt")
            torch.save(confusion_matrix_true_normalized(self._y_true, self._y_pred), save_path)
            print(f"Confusion matrix is saved to {save_path}")
        return results


def build_evaluator(cfg: CfgNode, **kwargs) -> EvaluatorBase:
    """The evaluator registered as ``cfg.TEST.EVALUATOR``."""
    check_availability(cfg.TEST.EVALUATOR, EVALUATOR_REGISTRY.registered_names())
    if cfg.VERBOSE:
        print(f"Loading evaluator: {cfg.TEST.EVALUATOR}")
    return EVALUATOR_REGISTRY.get(cfg.TEST.EVALUATOR)(cfg, **kwargs)
