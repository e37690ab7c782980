"""Benchmark one CycleGAN training iteration: the project's loop beside the PyTorch reference's step.

    python bench.py --config S --steps 10
    python bench.py --config P --steps 3 --warmup 1 --rounds 3 --torch /tmp/torchvenv/bin/python
    KERAS_BACKEND=jax python bench.py --config S --steps 4
    python bench.py --layers --config S --torch /tmp/torchvenv/bin/python

The first line names Keras' backend and device. Then, from one run, on any backend: seconds per
iteration of cyclegan.CycleGAN.train_step (the code train.py runs) on synthetic images, its analytic
FLOPs and the peak resident memory (and GPU memory on a GPU). Under TensorFlow on a CPU the loop is timed
twice, with the CPU kernels of cpu_kernels.py (--cpu-kernels auto) and without (the networks' plain Keras
path: two CycleGANs, each traced in its own setting), in train.py's thread layout
(cpu_kernels.set_training_threads). Under TensorFlow also: a plain fused GradientTape step over the same
networks (a yardstick), this machine's matmul/conv peak and generator inference images/s (these two in a
process of its own, in TensorFlow's default threads as generate.py runs), and input-pipeline images/s on
a folder of JPEGs (data.train_dataset); under JAX or PyTorch these are skipped, and no TensorFlow is
imported. With --torch, the PyTorch reference step (benchmark/torch_step.py, run by that interpreter, at the
same sizes) is timed in turn with the loops, on the GPU where the backend has one. The last line,
`BENCH {...}`, is the same report as JSON.

--layers times instead each kind of layer of the step's networks alone, forward and forward+backward at
the shape it sees (batch 1), beside the same torch.nn layers (benchmark/torch_layers.py), weighted by how
often one iteration runs it: where the step's time goes, and where it goes against PyTorch's
(benchmark/layers.py; TensorFlow only).

The pieces are in benchmark/: measure.py (timing, memory, FLOPs, the loop; any backend), steps.py (the
rounds and the report), pytorch.py and torch_step.py (the PyTorch yardstick), tensorflow_extras.py
(TensorFlow's figures), layers.py and torch_layers.py (--layers).
"""
import argparse
import json
import shutil
import sys

import cli
import config as configuration
import distribute
import quiet
from benchmark import measure, steps
from cli import UsageError
from config import BENCH

STEPS = 10
ROUNDS = 1
WARMUP = 2
PIPELINE_IMAGES = 64
NETWORK_OPTIONS = ("image_size", "ngf", "ndf", "n_res_blocks", "mixed_precision", "jit", "cpu_kernels")  # config.py's


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=cli.HelpFormatter)
    p.add_argument("--config", choices=sorted(BENCH), default="S",
                   help="S: 128x128, ngf 32, 6 blocks, the book's discriminator; P: 256x256, ngf 64, 9 blocks, "
                        "the 70x70 PatchGAN (config.BENCH)")
    p.add_argument("--steps", type=cli.positive_int, default=STEPS, help="timed iterations of each step per round")
    p.add_argument("--rounds", type=cli.positive_int, default=ROUNDS,
                   help="rounds of PyTorch, loop and fused timings in turn; each ratio is the median of "
                        "the rounds' ratios, so a slow spell of the machine hits both sides alike")
    p.add_argument("--warmup", type=cli.non_negative_int, default=WARMUP,
                   help="untimed iterations first (the first one traces and compiles)")
    configuration.add_options(p, names=NETWORK_OPTIONS, defaults="the --config's")
    p.add_argument("--dataroot", help="JPEG dataset for the input-pipeline figure (default: synthetic JPEGs; "
                                      "TensorFlow only)")
    p.add_argument("--pipeline-images", type=cli.positive_int, default=PIPELINE_IMAGES,
                   help="images read per domain when timing the input pipeline")
    p.add_argument("--torch", metavar="PYTHON",
                   help="interpreter with torch installed: also time the PyTorch reference step "
                        "(benchmark/torch_step.py), float32 at the same sizes")
    p.add_argument("--layers", action="store_true",
                   help="time each layer kind of the networks alone (forward, forward+backward) and Adam's "
                        "update instead of whole steps; with --torch, beside PyTorch's layers (TensorFlow only)")
    p.add_argument("--ablate", action="store_true",
                   help="also time, in every round, the loop without each CPU kernel in use in turn (each a "
                        "CycleGAN of its own): what each kernel saves of a whole step (TensorFlow on a CPU)")
    p.add_argument("--deterministic", action="store_true",
                   help="also time the project loop with TensorFlow's op determinism on (what train.py --seed "
                        "turns on), in turn with the loop in every round (TensorFlow only; not with --jit)")
    p.add_argument("--generator-only", action="store_true",
                   help="time only generate.py's generator images/s and the machine's matmul and conv peaks, in "
                        "TensorFlow's default threads, and print them as JSON: bench.py runs this in a process "
                        "of its own, since its loop runs in train.py's thread layout")
    return p


def parse_config(argv=None):
    """(args, the config.BENCH Config with the options given)."""
    args = build_parser().parse_args(argv)
    given = {name: getattr(args, name) for name in NETWORK_OPTIONS if hasattr(args, name)}
    if args.layers:
        mixed = [f"--{name.replace('_', '-')}" for name in ("jit", "mixed_precision", "deterministic", "dataroot",
                                                             "generator_only", "ablate")
                 if getattr(args, name, None)]
        if mixed:
            raise UsageError(f"--layers times float32 layers alone: drop {', '.join(mixed)}")
    if quiet.backend() != "tensorflow":
        asked = [f"--{name.replace('_', '-')}" for name in ("layers", "deterministic", "dataroot", "generator_only",
                                                             "ablate")
                 if getattr(args, name)]
        if asked:
            raise UsageError(f"{', '.join(asked)}: TensorFlow's figures, and Keras runs on {quiet.backend()}; "
                             "run with KERAS_BACKEND=tensorflow")
    if args.deterministic:
        distribute.check_jit_with_determinism(getattr(args, "jit", False), "--deterministic")
    if args.torch and shutil.which(args.torch) is None:
        raise UsageError(f"--torch {args.torch}: no such interpreter")
    return args, BENCH[args.config].replace(**given)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args, config = parse_config(argv)
    print(distribute.device_line(), flush=True)
    if args.layers or args.generator_only:
        measure.use_cpu_kernels(config.cpu_kernels != "off")  # as generate.py (and train.py) do
    if args.layers:
        from benchmark import layers

        layers.print_layers_report(layers.run_layers(config, args.config, args.steps, args.warmup,
                                                                 args.torch))
    elif args.generator_only:
        from benchmark import tensorflow_extras

        print("GENERATOR " + json.dumps(tensorflow_extras.generator_report(config)))
    else:
        threads = None
        if quiet.backend() == "tensorflow":  # cpu_kernels.py imports TensorFlow
            import cpu_kernels

            threads = cpu_kernels.set_training_threads(cpu_kernels.first_activation_elements(config))  # as train.py
        steps.print_report(steps.run(args, config, argv, threads))


if __name__ == "__main__":
    cli.run_cli(main, "bench.py")
