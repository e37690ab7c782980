"""Train a CycleGAN with the classic Keras loop: discriminators and a combined model, train_on_batch.

    python train.py --dataroot datasets/horse2zebra --name h2z
    tensorboard --logdir runs

Everything of a run lands in RUNS_ROOT/NAME/: config.json, TensorBoard event files, checkpoints/,
samples/, and the final generator_ab.keras / generator_ba.keras that generate.py loads.

Ctrl-C or SIGTERM finishes the current step, writes a checkpoint and exits 0; `--resume` continues.
"""
import argparse
import logging
import math
import os
import signal
import threading
import time

import numpy as np

import checkpoints
import cli
import cyclegan
import data
import distribute
import networks
from cli import UsageError, non_negative_float, non_negative_int, positive_int
from distribute import tf
import keras  # noqa: E402  (after distribute: TensorFlow imported quietly)

# Defaults: the reference implementation's (the paper's 256x256 network; on a CPU, try
# --image-size 128 --ngf 32 --n-res-blocks 6, the book's size, about 15x cheaper per step).
DEFAULTS = dict(
    dataroot=None, name="cyclegan", runs_root="runs",
    image_size=256, batch_size=1, epochs=100, epochs_decay=100, max_steps=None,
    ngf=64, ndf=64, n_res_blocks=9, upsample="transpose", sigmoid=False,
    lambda_cycle=networks.LAMBDA_CYCLE, lambda_identity=networks.LAMBDA_IDENTITY,
    pool_size=50, lr=networks.LEARNING_RATE, beta1=networks.BETA_1,
    sample_every=500, sample_count=4, save_every=5, keep_checkpoints=2, seed=None, jit=False, eval_every=0,
    distribute=None, mixed_precision=False,
)
NETWORK_KEYS = ("ngf", "ndf", "n_res_blocks", "upsample", "sigmoid")
DISTRIBUTE_CHOICES = ("none", "mirrored", "multiworker")

log = logging.getLogger("cyclegan")


def build_parser():
    p = argparse.ArgumentParser(
        description="Train a CycleGAN on an unpaired dataset (trainA/ trainB/ testA/ testB/).",
        formatter_class=cli.HelpFormatter)
    p.add_argument("--dataroot", help="dataset folder in the standard layout (required unless --resume)")
    p.add_argument("--name", help="run name: everything is written to RUNS_ROOT/NAME/")
    p.add_argument("--runs-root", help="folder that holds the runs")
    p.add_argument("--resume", action="store_true",
                   help="continue RUNS_ROOT/NAME from its latest checkpoint (same step and LR schedule)")
    p.add_argument("--image-size", type=cli.image_size, help="training crop size (multiple of 4, >= 32)")
    p.add_argument("--batch-size", type=positive_int, help="images of each domain per step (the global batch: split across replicas)")
    p.add_argument("--epochs", type=non_negative_int, help="epochs at the initial learning rate")
    p.add_argument("--epochs-decay", type=non_negative_int, help="epochs of linear decay to zero")
    p.add_argument("--max-steps", type=positive_int, help="stop after this many steps (quick runs)")
    p.add_argument("--ngf", type=positive_int, help="generator filters in the first layer (paper: 64)")
    p.add_argument("--ndf", type=positive_int, help="discriminator filters in the first layer")
    p.add_argument("--n-res-blocks", type=positive_int, help="generator residual blocks (paper: 9 at 256)")
    p.add_argument("--upsample", choices=("transpose", "resize"),
                   help="generator upsampling: transposed conv (paper) or nearest resize + conv")
    p.add_argument("--sigmoid", action="store_true", help="sigmoid discriminator output instead of the linear one of least-squares GAN")
    p.add_argument("--lambda-cycle", type=non_negative_float, help="weight of the cycle-consistency loss")
    p.add_argument("--lambda-identity", type=non_negative_float,
                   help="identity loss weight, relative to --lambda-cycle")
    p.add_argument("--pool-size", type=non_negative_int, help="history pool of past fakes (0: none)")
    p.add_argument("--lr", type=non_negative_float, help="Adam learning rate of all three optimizers")
    p.add_argument("--beta1", type=non_negative_float, help="Adam beta_1")
    p.add_argument("--sample-every", type=positive_int, help="steps between sample grids")
    p.add_argument("--sample-count", type=positive_int, help="test images in each sample grid")
    p.add_argument("--save-every", type=positive_int, help="epochs between checkpoints")
    p.add_argument("--keep-checkpoints", type=positive_int, help="checkpoints kept on disk")
    p.add_argument("--seed", type=int, help="random seed for weights, shuffling and augmentation")
    p.add_argument("--jit", action="store_true", help="XLA-compile the train functions")
    p.add_argument("--eval-every", type=non_negative_int,
                   help="epochs between evaluate.py's scores on the test split, logged as eval/* (0: never)")
    p.add_argument("--distribute", choices=DISTRIBUTE_CHOICES,
                   help="none: one device; mirrored: all GPUs of this machine (all CPUs without one); "
                        "multiworker: several machines, configured by TF_CONFIG "
                        "(default: mirrored when TensorFlow sees more than one GPU and the batch "
                        "splits across them, else none); "
                        "--batch-size is the global batch, split across the replicas")
    cli.add_mixed_precision_option(
        p, "compute in 16 bits, weights and losses in float32: float16 with loss scaling (GPUs with tensor "
           "cores) or bfloat16 (CPUs with AVX512_BF16 or AMX, recent GPUs); given alone: float16 on a GPU, "
           "bfloat16 on a CPU")
    p.set_defaults(**{k: v for k, v in DEFAULTS.items() if v is not None})
    return p


def parse_config(argv=None):
    """The run's configuration: defaults < the run's config.json (with --resume) < the command line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    explicit = _explicit_options(parser, argv)
    config = dict(DEFAULTS, **vars(args))
    run_dir = os.path.join(config["runs_root"], config["name"])
    if args.resume:
        saved = checkpoints.read_json(os.path.join(run_dir, "config.json"))
        for key in NETWORK_KEYS:
            if key in explicit and explicit[key] != saved[key]:
                raise UsageError(
                    f"--{key.replace('_', '-')} {explicit[key]} contradicts the run being resumed "
                    f"({run_dir}/config.json has {saved[key]})")
        config = dict(DEFAULTS, **saved)
        config.update(explicit)
        config["resume"] = True
    elif not config["dataroot"]:
        raise UsageError("--dataroot is required (the dataset folder with trainA/ and trainB/)")
    if config["epochs"] + config["epochs_decay"] == 0:
        raise UsageError("--epochs and --epochs-decay are both 0: nothing to train")
    config["run_dir"] = run_dir
    return config


def _explicit_options(parser, argv):
    """The options given on the command line, by dest."""
    silent = argparse.ArgumentParser(add_help=False)
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            kwargs = dict(dest=action.dest, default=argparse.SUPPRESS)
            if action.nargs == 0:
                kwargs["action"] = "store_true"
            elif action.nargs == "?":
                kwargs.update(nargs="?", const=action.const, type=action.type)
            else:
                kwargs["type"] = action.type
            silent.add_argument(*action.option_strings, **kwargs)
    return vars(silent.parse_known_args(argv)[0])


# ---- samples -----------------------------------------------------------------------------------

def sample_grid(source, translator, back_translator):
    """Rows of real | translated | reconstructed, as one uint8 image."""
    translated = translator.predict_on_batch(source)
    reconstructed = back_translator.predict_on_batch(translated)
    rows = [np.concatenate(row, axis=1) for row in zip(source, translated, reconstructed)]
    return data.to_uint8(np.concatenate(rows, axis=0))


def write_samples(run_dir, writer, gan, samples, step):
    """Both directions' grids to TensorBoard and to RUNS_ROOT/NAME/samples/ as PNG; returns the paths."""
    import imageio.v3 as iio

    folder = os.path.join(run_dir, "samples")
    os.makedirs(folder, exist_ok=True)
    paths = []
    for direction, (source, forward, backward) in {
        "AtoB": (samples["A"], gan.generator_ab, gan.generator_ba),
        "BtoA": (samples["B"], gan.generator_ba, gan.generator_ab),
    }.items():
        grid = sample_grid(source, forward, backward)
        with writer.as_default():
            tf.summary.image(f"samples/{direction}", grid[None], step=step)
        path = os.path.join(folder, f"{direction}_step{step:07d}.png")
        iio.imwrite(path, grid)
        paths.append(path)
    return paths


# ---- the loop ----------------------------------------------------------------------------------

class GracefulStop:
    """While active, the first SIGINT or SIGTERM only sets `signal_name`: the loop finishes its step,
    writes a checkpoint and returns. A second signal acts as usual (Ctrl-C twice stops at once)."""

    def __init__(self):
        self.signal_name = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._receive)
                              for number in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _receive(self, number, frame):
        self.signal_name = signal.Signals(number).name
        self._restore()

    def _restore(self):
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def __exit__(self, *exception):
        self._restore()


def check_run_dir(config):
    """A resumed run needs a checkpoint, a fresh run never writes into a run that has one, and runs
    cannot go where a file is."""
    run_dir = config["run_dir"]
    for folder in (config["runs_root"], run_dir):
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise UsageError(f"{folder}: is a file, expected a folder for the runs")
    if config.get("resume") and not checkpoints.checkpoint_paths(run_dir):
        raise UsageError(f"{run_dir}: no checkpoint to resume from")
    if not config.get("resume") and checkpoints.checkpoint_paths(run_dir):
        raise UsageError(f"{run_dir} already holds a run with checkpoints: continue it with --resume, "
                              "or give another --name")


def train(config, verbose=1, stop=None):
    """Runs (or resumes) a training run; returns a dict of what it wrote.

    `stop` (a GracefulStop) ends the run early after a signal, with a checkpoint of the last step.
    A non-finite loss ends it with UsageError before anything of that step is saved.
    """
    stop = stop or GracefulStop()
    check_run_dir(config)
    strategy = distribute.make_strategy(config.get("distribute"), config["batch_size"])
    run_dir = distribute.writable_run_dir(config["run_dir"], strategy)
    if config.get("seed") is not None:
        keras.utils.set_random_seed(config["seed"])
    dataset, steps_per_epoch = data.train_dataset(
        config["dataroot"], config["image_size"], config["batch_size"], config.get("seed"))
    samples = {d: data.test_images(config["dataroot"], d, config["image_size"], config["sample_count"])
               for d in "AB"}
    total_epochs = config["epochs"] + config["epochs_decay"]
    total_steps = total_epochs * steps_per_epoch
    if config.get("max_steps"):
        total_steps = min(total_steps, config["max_steps"])

    gan = cyclegan.build_gan(config, strategy)
    rng = np.random.default_rng(config.get("seed"))
    pools = {"A": cyclegan.HistoryPool(config["pool_size"], rng), "B": cyclegan.HistoryPool(config["pool_size"], rng)}
    step = epoch = 0
    if config.get("resume"):
        path, step, epoch = checkpoints.resume_checkpoint(config["run_dir"], gan, pools, rng)
        log.info("resumed %s at step %d (epoch %d)", path, step, epoch)
    os.makedirs(run_dir, exist_ok=True)
    checkpoints.write_json(os.path.join(run_dir, "config.json"),
               {k: v for k, v in config.items() if k not in ("resume", "run_dir")})
    writer = tf.summary.create_file_writer(run_dir)

    batches = iter(dataset)
    evaluator = None
    written = {"run_dir": run_dir, "checkpoint": None, "samples": []}
    started = time.time()
    while step < total_steps and not stop.signal_name:
        learning_rate = cyclegan.learning_rate_at(epoch, config["lr"], config["epochs"], config["epochs_decay"])
        gan.set_learning_rate(learning_rate)
        steps_this_epoch = min(steps_per_epoch - step % steps_per_epoch, total_steps - step)
        if verbose:
            print(f"epoch {epoch + 1}/{total_epochs}  lr {learning_rate:.2e}")
        bar = keras.utils.Progbar(steps_this_epoch, verbose=verbose, stateful_metrics=["D_A", "D_B", "G"])
        for index in range(steps_this_epoch):
            real_a, real_b = next(batches)
            losses = gan.train_step(real_a.numpy(), real_b.numpy(), pools["A"], pools["B"])
            diverged = ", ".join(f"{k} {v}" for k, v in losses.items() if not math.isfinite(v))
            if diverged:
                last_good = (checkpoints.checkpoint_paths(run_dir) or ["none"])[-1]
                raise UsageError(f"step {step + 1}: non-finite loss ({diverged}); stopped without saving, "
                                      f"last good checkpoint: {last_good} (try a lower --lr)")
            step += 1
            with writer.as_default():
                for name, value in losses.items():
                    tf.summary.scalar(f"loss/{name}", value, step=step)
                tf.summary.scalar("learning_rate", learning_rate, step=step)
            if step % config["sample_every"] == 0 or step == total_steps:
                written["samples"] = write_samples(run_dir, writer, gan, samples, step)
            bar.update(index + 1, [("D_A", losses["D_A"]), ("D_B", losses["D_B"]), ("G", losses["G_total"])])
            if stop.signal_name:
                log.warning("%s: stopping after step %d", stop.signal_name, step)
                break
        if step % steps_per_epoch == 0:
            epoch += 1
            if config.get("eval_every") and epoch % config["eval_every"] == 0:
                import metrics  # here: only runs that evaluate pay for its imports
                evaluator = evaluator or metrics.Evaluator(
                    config["dataroot"], config["image_size"], ("AtoB", "BtoA"),
                    metrics.default_classifier_path(config["dataroot"], run_dir))
                evaluator.log_to_tensorboard(writer, {"AtoB": gan.generator_ab, "BtoA": gan.generator_ba}, step)
        if epoch % config["save_every"] == 0 or step >= total_steps or stop.signal_name:
            written["checkpoint"] = checkpoints.save_checkpoint(
                run_dir, gan, step, epoch, pools, rng, config["keep_checkpoints"])
    writer.flush()
    if written["checkpoint"] is None or not written["samples"]:
        written["checkpoint"] = checkpoints.save_checkpoint(run_dir, gan, step, epoch, pools, rng, config["keep_checkpoints"])
        written["samples"] = write_samples(run_dir, writer, gan, samples, step)
    written["generators"] = checkpoints.save_generators(run_dir, gan)
    written["step"] = step
    written["stopped"] = stop.signal_name
    written["seconds"] = time.time() - started
    return written


def main(argv=None):
    config = parse_config(argv)
    with GracefulStop() as stop:
        written = train(config, stop=stop)
    if written["stopped"]:
        print(f"\nstopped by {written['stopped']} at step {written['step']}; continue with: python train.py "
              f"--runs-root {config['runs_root']} --name {config['name']} --resume")
    print(f"trained {written['step']} steps in {written['seconds']:.0f} s")
    print(f"  TensorBoard:  tensorboard --logdir {config['runs_root']}")
    print(f"  checkpoint:   {written['checkpoint']}")
    print(f"  samples:      {', '.join(written['samples'])}")
    print(f"  generators:   {', '.join(written['generators'])}")


if __name__ == "__main__":
    cli.run_cli(main, "train.py")
