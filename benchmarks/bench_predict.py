"""`predict` against evaluation on the same images: seconds per image, side by side.

A folder of toy-world images (10 classes; ``--images`` test images, 4 training images per class) is
made under ``--work``, a run of ``--trainer`` is trained on it for one epoch with the shipped toy CLIP
(configs/profiles/toy_cpu.yaml), and in one process, in interleaved rounds (fastest of
``--repeats`` after a warm-up), the run's evaluation (``test()`` on its test split, as
``train --eval-only --model-dir RUN`` builds it) and ``predict`` of the same image files (as
``prompt-diffusion predict --model-dir RUN`` builds it; top-5) are timed, data loading included.

    OMP_NUM_THREADS=1 python benchmarks/bench_predict.py --work /tmp/bench_predict
"""
import argparse
import contextlib
import io
import os
from pathlib import Path

import torch
from PIL import Image

from bench_samplers import ratio_line, timings  # interleaved rounds, fastest wall/CPU time per run

from prompt_diffusion import cli, engine
from prompt_diffusion.commands import predict as predict_command
from prompt_diffusion.commands import train
from prompt_diffusion.data.toy_world import class_of, render_example
from prompt_diffusion.predict import predict
from prompt_diffusion.run_record import checkpoint_epoch

LABELS = range(0, 64, 7)[:10]


def make_folder(root: Path, test_images: int) -> None:
    for label in LABELS:
        shape, colour = class_of(label)
        for split, seed, count in (("train", 1, 4), ("test", 2, test_images // len(LABELS))):
            folder = root / split / f"{colour}_{shape}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                if not (folder / f"{i:04d}.png").exists():
                    Image.fromarray(render_example(seed, i, shape, colour, "photo")[0]).save(folder / f"{i:04d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/bench_predict")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--trainer", default="CoCoOpPD")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    work = Path(args.work)
    make_folder(work / "images", args.images)
    run = work / f"run_{args.trainer}"
    configs = ["--config-file", "configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml"] if "CoCoOp" in args.trainer else []
    if not (run / "run_config.yaml").exists():
        with contextlib.redirect_stdout(io.StringIO()):
            assert cli.main(["train", "--root", str(work / "images"), "--trainer", args.trainer, "--seed", "1",
                             "--output-dir", str(run), "--dataset-config-file", "configs/datasets/image_folder.yaml",
                             *configs, "--config-file", "configs/profiles/toy_cpu.yaml", "OPTIM.MAX_EPOCH", "1"]) == 0

    eval_args = train.build_parser().parse_args(["--eval-only", "--model-dir", str(run), "--output-dir", str(work / "eval")])
    with contextlib.redirect_stdout(io.StringIO()):
        cfg, _ = train.prepare(eval_args)
        evaluator = engine.build_trainer(cfg)
        evaluator.load_model(str(run), epoch=checkpoint_epoch(str(run), None))
    predict_args = argparse.Namespace(model_dir=str(run), images=[str(work / "images" / "test")], top_k=5, classnames="",
                                      batch_size=None, load_epoch=None, imports=[], verbose=False, opts=[])
    predictor = predict_command.build_predictor(predict_args)
    n_eval, n_predict = len(evaluator.dm.dataset.test), len(predictor.dm.dataset.test)
    assert n_eval == n_predict, (n_eval, n_predict)

    def evaluate() -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.test()

    best = timings({"evaluation": evaluate, "predict": lambda: predict(predictor, top_k=5, progress=False)},
                   args.repeats, torch.device("cpu"))
    print(f"{args.trainer}, {n_eval} images (batch {cfg.DATALOADER.TEST.BATCH_SIZE}), {torch.get_num_threads()} thread(s), "
          f"fastest of {args.repeats} interleaved rounds, data loading included:")
    for name, (wall, cpu) in best.items():
        print(f"  {name:<11} {1000 * wall / n_eval:6.2f} ms/image wall  {1000 * cpu / n_eval:6.2f} ms/image CPU")
    print(f"  {ratio_line(best, 'predict', 'evaluation')}")


if __name__ == "__main__":
    main()
