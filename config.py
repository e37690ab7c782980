"""A run's configuration: every training option with its default and help, defined once, as one typed
object. train.py builds its command line from it, a run saves it as config.json and `--resume` reads it
back; bench.py's yardsticks and the offline demo are named variants of it.

No TensorFlow here: reading or checking a configuration costs nothing.
"""
import argparse
import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from typing import Optional, Union

import cli
from cli import UsageError

MAX_SEED = 2 ** 32 - 1  # TensorFlow's and NumPy's seeds are 32-bit


def option(default, help, type=None, choices=None, flag=False, fixed=False, **extra):
    """A Config field with what its command-line option needs: `type` parses and checks a value
    (also a saved one), `flag` makes a switch, `fixed` marks what --resume may not change. Options
    added after runs were made say what those runs' config.json means without them: `added=True`, the
    default; `old=VALUE`, what those runs did (the default has changed for new runs). `absent`: what
    --help says for a default of None or False (what the run does without the option)."""
    return field(default=default, metadata=dict(help=help, type=type, choices=choices, flag=flag, fixed=fixed,
                                                **extra))


def seed(text):
    return cli.number(int, text, f"an integer from 0 to {MAX_SEED}", lambda value: 0 <= value <= MAX_SEED)


def beta(text):
    return cli.number(float, text, "a number from 0 up to (not including) 1", lambda value: 0 <= value < 1)


def feature_name(text):
    if not text:
        raise argparse.ArgumentTypeError("expected a feature name, got an empty one")
    return text


DATASET_FIELDS = ("dataroot", "train_a", "train_b", "test_a", "test_b")
START_FIELDS = ("start_ab", "start_ba")
PATH_FIELDS = DATASET_FIELDS + START_FIELDS + ("runs_root",)


def resolved(path):
    """A path as a run stores it: absolute, with ~ expanded, so that the run reads the same files from
    any working directory (a relative one would find another folder's files on --resume)."""
    return os.path.abspath(os.path.expanduser(path)) if path else path


def run_name(text):
    if text in ("", ".", "..") or "/" in text or os.sep in text:
        raise argparse.ArgumentTypeError(f"expected a plain folder name, got {text!r}")
    return text


@dataclass(frozen=True)
class Config:
    # Defaults: the reference implementation's (the paper's 256x256 network). On a CPU try the book's
    # size, --image-size 128 --ngf 32 --n-res-blocks 6, about 15x cheaper per step (BENCH["S"]).
    dataroot: Optional[str] = option(None, "dataset folder in the standard layout: trainA/ trainB/ testA/ testB/ "
                                           "(required unless --train-a and --train-b, or --resume)", cli.path)
    train_a: Optional[str] = option(None, "domain A's training folder, instead of DATAROOT/trainA/ (image files "
                                          "or TFRecord shards)", cli.path, old=None)
    train_b: Optional[str] = option(None, "domain B's training folder, instead of DATAROOT/trainB/", cli.path, old=None)
    test_a: Optional[str] = option(None, "domain A's test folder, instead of DATAROOT/testA/ (default without "
                                         "--dataroot: samples from the training folder)", cli.path, old=None)
    test_b: Optional[str] = option(None, "domain B's test folder, instead of DATAROOT/testB/", cli.path, old=None)
    tfrecord_key: str = option("image", "feature of a TFRecord example that holds the encoded image", feature_name,
                               old="image")
    name: str = option("cyclegan", "run name: everything is written to RUNS_ROOT/NAME/", run_name)
    runs_root: str = option("runs", "folder that holds the runs", cli.path)
    image_size: int = option(256, "training crop size (multiple of 4, >= 32)", cli.image_size)
    batch_size: int = option(1, "images of each domain per step (the global batch: split across replicas)",
                             cli.positive_int, fixed=True)  # a run's steps count its batches
    epochs: int = option(100, "epochs at the initial learning rate", cli.non_negative_int)
    epochs_decay: int = option(100, "epochs of linear decay to zero", cli.non_negative_int)
    max_steps: Optional[int] = option(None, "stop after this many steps (quick runs)", cli.positive_int,
                                      absent="none: every epoch")
    netg: str = option("resnet", "generator: the paper's residual network, or pix2pix's U-Net (unet_256: image "
                                 "sides multiples of 256)", choices=("resnet", "unet"), fixed=True, old="resnet")
    netd: str = option("patch70", "discriminator: the paper's 70x70 PatchGAN (3 stride-2 convs) or the book's "
                                  "(4 stride-2 convs)", choices=("patch70", "book"), fixed=True, old="book")
    ngf: int = option(64, "generator filters in the first layer (paper: 64)", cli.positive_int, fixed=True)
    ndf: int = option(64, "discriminator filters in the first layer", cli.positive_int, fixed=True)
    n_res_blocks: int = option(9, "generator residual blocks (paper: 9 at 256)", cli.positive_int, fixed=True)
    upsample: str = option("transpose", "generator upsampling: transposed conv (paper) or nearest resize + conv",
                           choices=("transpose", "resize"), fixed=True)
    sigmoid: bool = option(False, "sigmoid discriminator output instead of the linear one of least-squares GAN",
                           flag=True, fixed=True)
    gan_mode: str = option("lsgan", "adversarial loss: least squares (the paper's) or vanilla (binary cross-entropy "
                                    "from logits)", choices=("lsgan", "vanilla"), fixed=True, old="lsgan")
    init_gain: float = option(0.02, "standard deviation of the N(0, gain) initial conv weights, the reference's "
                                    "(0: Keras' Glorot uniform, runs made before this option)",
                              cli.non_negative_float, fixed=True, old=0.0)
    start_ab: Optional[str] = option(None, "start a fresh run's generator_ab from this file to fine-tune: a run's "
                                           ".keras, or a PyTorch CycleGAN generator (.pth)", cli.path, old=None,
                                     absent="none: random initial weights")
    start_ba: Optional[str] = option(None, "start generator_ba from this file (.keras or .pth)", cli.path, old=None,
                                     absent="none: random initial weights")
    lambda_cycle: float = option(10.0, "weight of the cycle-consistency loss", cli.non_negative_float)
    lambda_identity: float = option(0.5, "identity loss weight, relative to --lambda-cycle", cli.non_negative_float)
    pool_size: int = option(50, "history pool of past fakes (0: none)", cli.non_negative_int)
    lr: float = option(2e-4, "Adam learning rate of all three optimizers", cli.non_negative_float)
    beta1: float = option(0.5, "Adam beta_1", beta)
    sample_every: int = option(500, "steps between sample grids", cli.positive_int)
    sample_count: int = option(4, "test images in each sample grid", cli.positive_int)
    save_every: int = option(5, "epochs between checkpoints", cli.positive_int)
    keep_checkpoints: int = option(2, "checkpoints kept on disk", cli.positive_int)
    print_every: int = option(100, "steps between plain progress lines when stdout is not a terminal",
                              cli.positive_int, added=True)
    seed: Optional[int] = option(None, "random seed for weights, shuffling and augmentation", seed,
                                 absent="none: other random numbers each run")
    jit: bool = option(False, "XLA-compile the train functions (under TensorFlow, not with --seed)", flag=True)
    eval_every: int = option(0, "epochs between evaluate.py's scores on the test split, logged as eval/* "
                                "(0: never)", cli.non_negative_int)
    distribute: Optional[str] = option(
        None, "none: one device; mirrored: all GPUs of this machine (all CPUs without one); multiworker: "
              "several machines, configured by TF_CONFIG (default: mirrored when TensorFlow sees more than "
              "one GPU and the batch splits across them, else none); --batch-size is the global batch, "
              "split across the replicas", choices=("none", "mirrored", "multiworker"))
    cpu_kernels: str = option(
        "auto", "the CPU kernels of cpu_kernels.py (Winograd, fused instance norm and Adam, ...): auto uses them "
                "where they apply (the TensorFlow backend on a CPU, float32); off runs the networks' plain Keras "
                "path only (so does the environment variable CYCLEGAN_CPU_KERNELS=off, for every script)",
        choices=("auto", "off"), added=True)
    mixed_precision: Union[bool, str] = option(
        False, "compute in 16 bits, weights and losses in float32: float16 with loss scaling (GPUs with "
               "tensor cores) or bfloat16 (CPUs with AVX512_BF16 or AMX, recent GPUs); given alone: "
               "float16 on a GPU, bfloat16 on a CPU", choices=("auto",) + cli.PRECISIONS, optional_value="auto",
        absent="off: float32 throughout")

    @property
    def run_dir(self):
        return os.path.join(self.runs_root, self.name)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def with_resolved_paths(self):
        return self.replace(**{name: resolved(getattr(self, name)) for name in PATH_FIELDS})


# Named variants: bench.py's two yardstick sizes (the book's network and the paper's) and the demo's
# small network, sized to train in minutes on a CPU.
BENCH = {"S": Config(image_size=128, ngf=32, n_res_blocks=6, netd="book"),
         "P": Config(image_size=256, ngf=64, n_res_blocks=9)}
DEMO = Config(image_size=64, ngf=16, ndf=32, n_res_blocks=4, upsample="resize", epochs=5, epochs_decay=5,
              sample_every=250, save_every=5, seed=0)
FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def add_options(parser, names=None, defaults=None):
    """Adds Config's options (all, or `names`) to an argparse parser. Nothing is filled in for an
    option not given, so the parsed namespace holds exactly what the user typed. `defaults` names, for
    --help, where the values not given come from when that is not Config's defaults (bench.py's --config)."""
    for name in names or FIELDS:
        meta, default = FIELDS[name].metadata, FIELDS[name].default
        flag = "--" + name.replace("_", "-")
        shown = "" if default is None or default is False else f" (default: {default})"
        if "absent" in meta:
            shown = f" (default: {meta['absent']})"
        if defaults and not meta["flag"]:
            shown = f" (default: {defaults})"
        kwargs = dict(help=meta["help"] + shown, default=argparse.SUPPRESS)
        if meta["flag"]:
            parser.add_argument(flag, action="store_true", **kwargs)
            continue
        if "optional_value" in meta:
            kwargs.update(nargs="?", const=meta["optional_value"],
                          metavar="{" + ",".join(c for c in meta["choices"] if c != meta["optional_value"]) + "}")
        parser.add_argument(flag, type=meta["type"], choices=meta["choices"], **kwargs)


def build_parser():
    p = argparse.ArgumentParser(
        description="Train a CycleGAN on an unpaired dataset (trainA/ trainB/ testA/ testB/).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p)
    p.add_argument("--resume", action="store_true", default=argparse.SUPPRESS,
                   help="continue RUNS_ROOT/NAME from its latest loadable checkpoint (its step, weights, optimizer "
                        "states and history pools) with the options of its config.json; options given change "
                        "those a run may change (--epochs, --max-steps, --lr, ...), not its networks' or "
                        "--batch-size")
    return p


def from_command_line(argv=None, base=None):
    """(Config, resume) from train.py's command line: defaults < the run's config.json (with --resume)
    < the options given. A given network option that contradicts the resumed run is an error. Every
    path comes back absolute (resolved); a resumed run's RUNS_ROOT is where its config.json was found."""
    given = vars(build_parser().parse_args(argv))
    resume = given.pop("resume", False)
    given = {name: resolved(value) if name in PATH_FIELDS else value for name, value in given.items()}
    config = (base or Config()).replace(**given).with_resolved_paths()
    if resume:
        path = os.path.join(config.run_dir, "config.json")
        saved = load(path)
        for name in given:
            if FIELDS[name].metadata["fixed"] and given[name] != getattr(saved, name):
                raise UsageError(f"--{name.replace('_', '-')} {given[name]} contradicts the run being resumed "
                                 f"({path} has {getattr(saved, name)})")
        for name in START_FIELDS:
            if name in given:
                raise UsageError(f"--{name.replace('_', '-')} starts a fresh run's generators; --resume goes on "
                                 "from the run's own checkpoint: drop it, or start a new run under another --name")
        check_absolute_paths(saved, path, "resume with --{option} and the folder's full path", skip=given)
        check_absolute_paths(saved, path, "write the file's full path there", names=START_FIELDS)
        config = saved.replace(**dict(given, runs_root=config.runs_root))
    elif not config.dataroot and not (config.train_a and config.train_b):
        raise UsageError("--dataroot is required (the dataset folder with trainA/ and trainB/), "
                         "or both --train-a and --train-b")
    if config.sigmoid and config.gan_mode == "vanilla":
        raise UsageError("--sigmoid with --gan-mode vanilla: the vanilla loss takes the discriminator's logits; "
                         "drop --sigmoid")
    if config.netg == "unet" and config.image_size % 256:
        raise UsageError(f"--image-size {config.image_size}: --netg unet takes multiples of 256 (its eight "
                         "stride-2 downsamplings end at 1 x 1 there)")
    if config.epochs + config.epochs_decay == 0:
        raise UsageError("--epochs and --epochs-decay are both 0: nothing to train")
    return config, resume


def check_absolute_paths(config, path, remedy, skip=(), names=DATASET_FIELDS):
    """A saved dataset path (or another of `names`) that is relative (a run made before paths were stored
    absolute, a hand-edited config.json) names a different folder or file from each working directory:
    one line, `remedy` saying what to give instead."""
    for name in names:
        value = getattr(config, name)
        if name not in skip and value and not os.path.isabs(value):
            what = "file" if name in START_FIELDS else "folder"
            raise UsageError(f"{path}: the key {name!r} holds the relative path {value!r}, which names a different "
                             f"{what} from each working directory; " + remedy.format(option=name.replace("_", "-")))


def as_json(config):
    return dataclasses.asdict(config)


def load(path):
    """The Config a run saved, every value checked as the command line checks it: one line naming the
    file and the key for anything missing, unknown or out of range. Options added after a run was made
    take their defaults."""
    try:
        with open(path) as f:
            saved = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"{path}: not found (is this a run directory made by train.py?)") from None
    except (OSError, ValueError) as error:
        raise UsageError(f"{path}: unreadable ({error})") from None
    if not isinstance(saved, dict):
        raise UsageError(f"{path}: expected a JSON object of options, found {type(saved).__name__}")
    values = {}
    for name, spec in FIELDS.items():
        if name not in saved:
            if "old" in spec.metadata:
                values[name] = spec.metadata["old"]
                continue
            if spec.metadata.get("added"):
                continue
            raise UsageError(f"{path}: the key {name!r} is missing")
        values[name] = check_saved(path, name, saved[name])
    unknown = sorted(set(saved) - set(FIELDS))
    if unknown:
        raise UsageError(f"{path}: unknown key {unknown[0]!r}")
    return Config(**values)


def check_saved(path, name, value):
    """A saved value, checked by the option's own parser (True stands for 'auto' in the
    --mixed-precision of runs made before the option took a value)."""
    spec = FIELDS[name]
    meta, text = spec.metadata, str in (typing.get_args(spec.type) or (spec.type,))
    if value is None:
        problem = None if spec.default is None else "null"
    elif meta["flag"] or (name == "mixed_precision" and isinstance(value, bool)):
        problem = None if isinstance(value, bool) else "not true or false"
    elif meta["choices"]:
        problem = None if value in meta["choices"] else f"{value!r} is not one of {', '.join(meta['choices'])}"
    elif text != isinstance(value, str) or isinstance(value, bool):
        problem = f"{value!r} is not a string" if text else f"{value!r} is not a number"
    else:
        try:
            problem = None if (meta["type"] or str)(str(value)) == value else f"{value!r} is not a whole number"
        except argparse.ArgumentTypeError as error:
            problem = str(error)
    if problem:
        raise UsageError(f"{path}: the key {name!r}: {problem}")
    return value
