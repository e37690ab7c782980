"""The one-command offline demo: build a dataset from scikit-image's photos, train, generate, score.

    python main.py

Domain A is crops of photos; domain B is other crops rendered in a painterly style (demo_data.paint).
Because the painting is known, the demo can score G_AB(testA) against the true paintings in
testA_gt/ with SSIM and PSNR, next to the do-nothing baseline (testA itself). It uses the same
functions as train.py and generate.py, on a small network sized to finish in minutes on a CPU. Ctrl-C
stops it as it stops train.py: after the step, with a checkpoint that train.py --resume continues.
"""
import argparse
import contextlib
import os

import cli
import demo_data
import generate
import train
from config import DEMO, run_name
from metrics import ground_truth_scores


def free_run_name(runs_root, name):
    """`name`, or name-2, name-3, ... when an earlier demo run is there: nothing is written over. The
    name is claimed by making its folder (os.mkdir fails when it exists), so two main.py started at
    once never pick the same run, which train.py's run lock would refuse to the second."""
    if os.path.exists(runs_root) and not os.path.isdir(runs_root):
        raise cli.UsageError(f"--runs-root {runs_root}: is a file, expected a folder for the runs")
    os.makedirs(runs_root, exist_ok=True)
    candidate, number = name, 1
    while True:
        try:
            os.mkdir(os.path.join(runs_root, candidate))
            return candidate
        except FileExistsError:
            number += 1
            candidate = f"{name}-{number}"


def build_parser():
    p = argparse.ArgumentParser(description="Offline CycleGAN demo: photos -> paintings, in minutes on a CPU.",
                                formatter_class=cli.HelpFormatter)
    p.add_argument("--dataroot", default="datasets/demo", type=cli.path, help="where the demo dataset is built")
    p.add_argument("--runs-root", default=DEMO.runs_root, type=cli.path, help="folder that holds the runs")
    p.add_argument("--name", default="demo", type=run_name, help="run name (NAME-2, NAME-3, ... if NAME exists)")
    p.add_argument("--max-steps", type=cli.positive_int,
                   help=f"stop early (default: the full {DEMO.epochs + DEMO.epochs_decay} epochs)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    demo_data.check_target(args.dataroot)
    if not demo_data.is_demo_dataset(args.dataroot):
        print(f"building the demo dataset in {args.dataroot} (from scikit-image's photos, no network)")
    demo_data.build_demo_dataset(args.dataroot)
    name = free_run_name(args.runs_root, args.name)
    config = DEMO.replace(dataroot=args.dataroot, runs_root=args.runs_root, name=name, max_steps=args.max_steps)
    try:
        with train.GracefulStop() as stop:  # Ctrl-C: the step ends, a checkpoint is written, the demo stops
            written = train.train(config, stop=stop)
    except BaseException:
        with contextlib.suppress(OSError):  # a run that wrote nothing leaves its name free for the next demo
            os.rmdir(os.path.join(args.runs_root, name))
        raise
    if written["stopped"]:  # before the first step there is no run to continue (no config.json)
        way_on = (f"continue with: python train.py --runs-root {args.runs_root} --name {name} --resume"
                  if written["step"] else "nothing trained; python main.py starts the demo again")
        print(f"\nstopped by {written['stopped']} at step {written['step']}; {way_on}")
        return
    run_dir = written["run_dir"]
    translated, grid = generate.generate(**generate.run_files(run_dir))
    scores = ground_truth_scores(os.path.join(run_dir, "generator_ab.keras"),
                                 os.path.join(args.dataroot, "testA"), os.path.join(args.dataroot, "testA_gt"))
    steps = written["step"]
    print(f"\ntrained {steps} step{'s' * (steps != 1)} in {written['seconds']:.0f} s; everything is in {run_dir}/")
    print(f"  TensorBoard:   tensorboard --logdir {args.runs_root}")
    print(f"  checkpoint:    {written['checkpoint']}")
    print(f"  generators:    {', '.join(written['generators'])}")
    print(f"  translations:  {len(translated)} images in {os.path.join(run_dir, 'generated', 'AtoB')}/")
    if grid:  # None when it could not be drawn (a WARNING said why)
        print(f"  sample grid:   {grid}")
    print("\nG_AB(testA) against the true paintings (testA_gt), mean over the test split:")
    print(f"  {'':22s} {'SSIM':>6s} {'PSNR (dB)':>10s}")
    for label, key in (("trained generator", "generator"), ("do-nothing baseline", "baseline")):
        print(f"  {label:22s} {scores[key]['ssim']:6.3f} {scores[key]['psnr']:10.2f}")
    return scores


if __name__ == "__main__":
    cli.run_cli(main, "main.py")
