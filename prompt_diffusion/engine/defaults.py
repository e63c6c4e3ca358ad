"""Dassl's default config (``dassl/config/defaults.py``): the same keys with the same values.

``get_cfg_default()`` returns a fresh clone; the project's own keys are added on top by
``prompt_diffusion.config.extend_cfg``.
"""
from yacs.config import CfgNode as CN


def _build_defaults() -> CN:
    C = CN()
    C.VERSION = 1
    C.OUTPUT_DIR = "./output"  # log.txt and checkpoints go here
    C.RESUME = ""  # a directory to resume from (default: OUTPUT_DIR)
    C.SEED = -1  # negative: random; >= 0: fixed
    C.USE_CUDA = True
    C.VERBOSE = True

    C.INPUT = CN()
    C.INPUT.SIZE = (224, 224)
    C.INPUT.INTERPOLATION = "bilinear"
    C.INPUT.TRANSFORMS = ()
    C.INPUT.NO_TRANSFORM = False
    C.INPUT.PIXEL_MEAN = [0.485, 0.456, 0.406]  # ImageNet
    C.INPUT.PIXEL_STD = [0.229, 0.224, 0.225]
    C.INPUT.CROP_PADDING = 4
    C.INPUT.RRCROP_SCALE = (0.08, 1.0)
    C.INPUT.CUTOUT_N = 1
    C.INPUT.CUTOUT_LEN = 16
    C.INPUT.GN_MEAN = 0.0
    C.INPUT.GN_STD = 0.15
    C.INPUT.RANDAUGMENT_N = 2
    C.INPUT.RANDAUGMENT_M = 10
    C.INPUT.COLORJITTER_B = 0.4
    C.INPUT.COLORJITTER_C = 0.4
    C.INPUT.COLORJITTER_S = 0.4
    C.INPUT.COLORJITTER_H = 0.1
    C.INPUT.RGS_P = 0.2
    C.INPUT.GB_P = 0.5
    C.INPUT.GB_K = 21

    C.DATASET = CN()
    C.DATASET.ROOT = ""
    C.DATASET.NAME = ""
    C.DATASET.SOURCE_DOMAINS = ()
    C.DATASET.TARGET_DOMAINS = ()
    C.DATASET.NUM_LABELED = -1
    C.DATASET.NUM_SHOTS = -1
    C.DATASET.VAL_PERCENT = 0.1
    C.DATASET.STL10_FOLD = -1
    C.DATASET.CIFAR_C_TYPE = ""
    C.DATASET.CIFAR_C_LEVEL = 1
    C.DATASET.ALL_AS_UNLABELED = False

    C.DATALOADER = CN()
    C.DATALOADER.NUM_WORKERS = 4
    C.DATALOADER.K_TRANSFORMS = 1
    C.DATALOADER.RETURN_IMG0 = False
    C.DATALOADER.TRAIN_X = CN()
    C.DATALOADER.TRAIN_X.SAMPLER = "RandomSampler"
    C.DATALOADER.TRAIN_X.BATCH_SIZE = 32
    C.DATALOADER.TRAIN_X.N_DOMAIN = 0
    C.DATALOADER.TRAIN_X.N_INS = 16
    C.DATALOADER.TRAIN_U = CN()
    C.DATALOADER.TRAIN_U.SAME_AS_X = True
    C.DATALOADER.TRAIN_U.SAMPLER = "RandomSampler"
    C.DATALOADER.TRAIN_U.BATCH_SIZE = 32
    C.DATALOADER.TRAIN_U.N_DOMAIN = 0
    C.DATALOADER.TRAIN_U.N_INS = 16
    C.DATALOADER.TEST = CN()
    C.DATALOADER.TEST.SAMPLER = "SequentialSampler"
    C.DATALOADER.TEST.BATCH_SIZE = 32

    C.MODEL = CN()
    C.MODEL.INIT_WEIGHTS = ""
    C.MODEL.BACKBONE = CN()
    C.MODEL.BACKBONE.NAME = ""
    C.MODEL.BACKBONE.PRETRAINED = True
    C.MODEL.HEAD = CN()
    C.MODEL.HEAD.NAME = ""
    C.MODEL.HEAD.HIDDEN_LAYERS = ()
    C.MODEL.HEAD.ACTIVATION = "relu"
    C.MODEL.HEAD.BN = True
    C.MODEL.HEAD.DROPOUT = 0.0

    C.OPTIM = CN()
    C.OPTIM.NAME = "adam"
    C.OPTIM.LR = 0.0003
    C.OPTIM.WEIGHT_DECAY = 5e-4
    C.OPTIM.MOMENTUM = 0.9
    C.OPTIM.SGD_DAMPNING = 0
    C.OPTIM.SGD_NESTEROV = False
    C.OPTIM.RMSPROP_ALPHA = 0.99
    C.OPTIM.ADAM_BETA1 = 0.9
    C.OPTIM.ADAM_BETA2 = 0.999
    C.OPTIM.STAGED_LR = False  # base layers get LR * BASE_LR_MULT, NEW_LAYERS get LR
    C.OPTIM.NEW_LAYERS = ()
    C.OPTIM.BASE_LR_MULT = 0.1
    C.OPTIM.LR_SCHEDULER = "single_step"
    C.OPTIM.STEPSIZE = (-1,)  # -1 or 0: MAX_EPOCH
    C.OPTIM.GAMMA = 0.1
    C.OPTIM.MAX_EPOCH = 10
    C.OPTIM.WARMUP_EPOCH = -1  # > 0 turns warmup on
    C.OPTIM.WARMUP_TYPE = "linear"  # linear or constant
    C.OPTIM.WARMUP_CONS_LR = 1e-5
    C.OPTIM.WARMUP_MIN_LR = 1e-5
    C.OPTIM.WARMUP_RECOUNT = True  # False: the successor starts at last_epoch=WARMUP_EPOCH

    C.TRAIN = CN()
    C.TRAIN.CHECKPOINT_FREQ = 0  # epochs; <= 0 saves only the last epoch
    C.TRAIN.PRINT_FREQ = 10  # batches
    C.TRAIN.COUNT_ITER = "train_x"

    C.TEST = CN()
    C.TEST.EVALUATOR = "Classification"
    C.TEST.PER_CLASS_RESULT = False
    C.TEST.COMPUTE_CMAT = False
    C.TEST.NO_TEST = False
    C.TEST.SPLIT = "test"
    C.TEST.FINAL_MODEL = "last_step"  # or best_val

    C.TRAINER = CN()
    C.TRAINER.NAME = ""
    _add_dassl_trainer_keys(C.TRAINER)
    return C


def _add_dassl_trainer_keys(T: CN) -> None:
    """Keys of Dassl's own DA/DG/SSL trainers (kept so Dassl configs merge unchanged)."""
    T.MCD = CN({"N_STEP_F": 4})
    T.MME = CN({"LMDA": 0.1})
    T.CDAC = CN({"CLASS_LR_MULTI": 10, "RAMPUP_COEF": 30, "RAMPUP_ITRS": 1000, "TOPK_MATCH": 5,
                 "P_THRESH": 0.95, "STRONG_TRANSFORMS": ()})
    T.SE = CN({"EMA_ALPHA": 0.999, "CONF_THRE": 0.95, "RAMPUP": 300})
    T.M3SDA = CN({"LMDA": 0.5, "N_STEP_F": 4})
    T.DAEL = CN({"WEIGHT_U": 0.5, "CONF_THRE": 0.95, "STRONG_TRANSFORMS": ()})
    T.CROSSGRAD = CN({"EPS_F": 1.0, "EPS_D": 1.0, "ALPHA_F": 0.5, "ALPHA_D": 0.5})
    T.DDAIG = CN({"G_ARCH": "", "LMDA": 0.3, "CLAMP": False, "CLAMP_MIN": -1.0, "CLAMP_MAX": 1.0,
                  "WARMUP": 0, "ALPHA": 0.5})
    T.DAELDG = CN({"WEIGHT_U": 0.5, "CONF_THRE": 0.95, "STRONG_TRANSFORMS": ()})
    T.DOMAINMIX = CN({"TYPE": "crossdomain", "ALPHA": 1.0, "BETA": 1.0})
    T.ENTMIN = CN({"LMDA": 1e-3})
    T.MEANTEACHER = CN({"WEIGHT_U": 1.0, "EMA_ALPHA": 0.999, "RAMPUP": 5})
    T.MIXMATCH = CN({"WEIGHT_U": 100.0, "TEMP": 2.0, "MIXUP_BETA": 0.75, "RAMPUP": 20000})
    T.FIXMATCH = CN({"WEIGHT_U": 1.0, "CONF_THRE": 0.95, "STRONG_TRANSFORMS": ()})


_DEFAULTS = _build_defaults()


def get_cfg_default() -> CN:
    """A fresh copy of Dassl's default config."""
    return _DEFAULTS.clone()


def clean_cfg(cfg: CN, trainer: str) -> None:
    """Drop every ``cfg.TRAINER`` sub-node except ``NAME`` and ``trainer.upper()`` (for printing)."""
    for key in list(cfg.TRAINER.keys()):
        if key not in ("NAME", trainer.upper()):
            cfg.TRAINER.pop(key, None)
