"""Train a CycleGAN with the classic Keras loop: discriminators and a combined model, train_on_batch.

    python train.py --dataroot datasets/horse2zebra --name h2z
    tensorboard --logdir runs

Everything of a run lands in RUNS_ROOT/NAME/: config.json, TensorBoard event files, checkpoints/,
samples/, and the final generator_ab.keras / generator_ba.keras that generate.py loads.

Ctrl-C or SIGTERM finishes the current step, writes a checkpoint and exits 0; `--resume` continues.
"""
import argparse
import atexit
import glob
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import zipfile

import numpy as np

import data  # first: it imports TensorFlow without the start-up noise
import keras
import tensorflow as tf

import networks

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
LOSS_NAMES = ("adversarial_a", "adversarial_b", "cycle_a", "cycle_b", "identity_a", "identity_b")

log = logging.getLogger("cyclegan")


def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def non_negative_float(text):
    value = float(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def image_size(text):
    value = positive_int(text)
    if value % 4 or value < 32:
        raise argparse.ArgumentTypeError(f"expected a multiple of 4 that is at least 32, got {text}")
    return value


def build_parser():
    p = argparse.ArgumentParser(
        description="Train a CycleGAN on an unpaired dataset (trainA/ trainB/ testA/ testB/).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataroot", help="dataset folder in the standard layout (required unless --resume)")
    p.add_argument("--name", help="run name: everything is written to RUNS_ROOT/NAME/")
    p.add_argument("--runs-root", help="folder that holds the runs")
    p.add_argument("--resume", action="store_true",
                   help="continue RUNS_ROOT/NAME from its latest checkpoint (same step and LR schedule)")
    p.add_argument("--image-size", type=image_size, help="training crop size (multiple of 4, >= 32)")
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
    p.add_argument("--mixed-precision", action="store_true",
                   help="mixed_float16 compute with loss scaling (GPUs with tensor cores)")
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
        saved = read_json(os.path.join(run_dir, "config.json"))
        for key in NETWORK_KEYS:
            if key in explicit and explicit[key] != saved[key]:
                raise data.UsageError(
                    f"--{key.replace('_', '-')} {explicit[key]} contradicts the run being resumed "
                    f"({run_dir}/config.json has {saved[key]})")
        config = dict(DEFAULTS, **saved)
        config.update(explicit)
        config["resume"] = True
    elif not config["dataroot"]:
        raise data.UsageError("--dataroot is required (the dataset folder with trainA/ and trainB/)")
    if config["epochs"] + config["epochs_decay"] == 0:
        raise data.UsageError("--epochs and --epochs-decay are both 0: nothing to train")
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
            else:
                kwargs["type"] = action.type
            silent.add_argument(*action.option_strings, **kwargs)
    return vars(silent.parse_known_args(argv)[0])


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise data.UsageError(f"{path}: not found (is this a run directory made by train.py?)") from None
    except (OSError, ValueError) as error:
        raise data.UsageError(f"{path}: unreadable ({error})") from None


def write_atomically(path, write):
    """Calls write(temporary_path), then renames it over `path`: a reader never sees half a file."""
    base, ext = os.path.splitext(path)
    temporary = f"{base}.tmp{os.getpid()}{ext}"
    try:
        write(temporary)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_json(path, value):
    def write(temporary):
        with open(temporary, "w") as f:
            json.dump(value, f, indent=2, sort_keys=True)
    write_atomically(path, write)


class HistoryPool:
    """The paper's buffer of past fakes: discriminators see a mix of old and new generator outputs.

    Until it holds `size` images every fake goes in and is returned; after that each fake is, with
    probability 1/2, swapped with a random stored one (the stored one is returned), else returned.
    """

    def __init__(self, size, rng):
        self.size = size
        self.rng = rng
        self.images = []

    def query(self, fakes):
        if self.size == 0:
            return fakes
        chosen = []
        for fake in np.asarray(fakes):
            if len(self.images) < self.size:
                self.images.append(fake)
                chosen.append(fake)
            elif self.rng.random() < 0.5:
                index = self.rng.integers(len(self.images))
                chosen.append(self.images[index])
                self.images[index] = fake
            else:
                chosen.append(fake)
        return np.stack(chosen)


def learning_rate_at(epoch, base_lr, epochs, epochs_decay):
    """Constant for `epochs`, then linear decay towards zero over `epochs_decay` (the reference rule)."""
    return base_lr * (1.0 - max(0, epoch + 1 - epochs) / float(epochs_decay + 1))


class CycleGAN:
    """The four networks, the combined model and their three optimizers, built in the order that
    makes the Keras 3 freezing trick hold (see networks.build_combined)."""

    def __init__(self, config):
        c = config
        self.generator_ab = networks.build_generator(c["ngf"], c["n_res_blocks"], c["upsample"], "generator_ab")
        self.generator_ba = networks.build_generator(c["ngf"], c["n_res_blocks"], c["upsample"], "generator_ba")
        self.discriminator_a = networks.build_discriminator(c["ndf"], c["sigmoid"], name="discriminator_a")
        self.discriminator_b = networks.build_discriminator(c["ndf"], c["sigmoid"], name="discriminator_b")
        for discriminator in (self.discriminator_a, self.discriminator_b):
            networks.compile_discriminator(discriminator, c["lr"], c["beta1"], c["jit"])
        self.combined = networks.build_combined(
            self.generator_ab, self.generator_ba, self.discriminator_a, self.discriminator_b,
            c["lambda_cycle"], c["lambda_identity"], c["lr"], c["beta1"], c["jit"])
        self.patch = networks.patch_shape(self.discriminator_a, c["image_size"], c["image_size"])
        self._translate = tf.function(self._translate_both)

    @property
    def models(self):
        return {"generator_ab": self.generator_ab, "generator_ba": self.generator_ba,
                "discriminator_a": self.discriminator_a, "discriminator_b": self.discriminator_b}

    @property
    def optimizers(self):
        return {"discriminator_a": self.discriminator_a.optimizer,
                "discriminator_b": self.discriminator_b.optimizer,
                "combined": self.combined.optimizer}

    def set_learning_rate(self, value):
        for optimizer in self.optimizers.values():
            optimizer.learning_rate = value

    def _translate_both(self, real_a, real_b):
        return self.generator_ab(real_a, training=False), self.generator_ba(real_b, training=False)

    def translate(self, real_a, real_b):
        fake_b, fake_a = self._translate(real_a, real_b)
        return fake_b.numpy(), fake_a.numpy()

    def train_step(self, real_a, real_b, pool_a, pool_b):
        """One CycleGAN iteration; returns the losses by name."""
        fake_b, fake_a = self.translate(real_a, real_b)
        losses = {
            "D_A": train_discriminator(self.discriminator_a, real_a, pool_a.query(fake_a)),
            "D_B": train_discriminator(self.discriminator_b, real_b, pool_b.query(fake_b)),
        }
        ones = np.ones((real_a.shape[0],) + self.patch, np.float32)
        logs = self.combined.train_on_batch(
            [real_a, real_b], [ones, ones, real_a, real_b, real_a, real_b], return_dict=True)
        losses.update({name: logs[f"{name}_loss"] for name in LOSS_NAMES})
        losses["G_total"] = logs["loss"]
        return losses


def train_discriminator(discriminator, real, fake):
    """One Adam step of a discriminator on real (label 1) and fake (label 0) images together.

    The loss is the mean of the real and fake halves, as in the reference. The model is trainable
    only during this call: a train function traced (or retraced) now sees its weights, and the
    combined model, traced while it is frozen, never does.
    """
    real = np.asarray(real)
    shape = (real.shape[0],) + networks.patch_shape(discriminator, *real.shape[1:3])
    labels = np.concatenate([np.ones(shape, np.float32), np.zeros(shape, np.float32)])
    discriminator.trainable = True
    try:
        return float(discriminator.train_on_batch(np.concatenate([real, fake]), labels))
    finally:
        discriminator.trainable = False


# ---- distribution ------------------------------------------------------------------------------

def make_strategy(name=None, batch_size=None):
    """The tf.distribute strategy for --distribute; None picks mirrored with more than one GPU when
    the global batch splits evenly across them.

    Call it before anything else touches TensorFlow: the multi-worker strategy configures the
    collective runtime, which only works at program start.
    """
    if name is None:
        gpus = len(tf.config.list_physical_devices("GPU"))
        name = "mirrored" if gpus > 1 and (batch_size or gpus) % gpus == 0 else "none"
        if gpus > 1 and name == "none":
            log.warning("training on one of %d GPUs: --batch-size %d does not split across them", gpus, batch_size)
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if name == "multiworker":
        try:
            json.loads(os.environ["TF_CONFIG"])
        except (KeyError, ValueError):
            raise data.UsageError("--distribute multiworker needs the TF_CONFIG environment variable set to "
                                  "JSON naming the cluster and this process's task (see README)") from None
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy):
    """True for the one process that writes the run's files: the only one, or TF_CONFIG's chief
    (worker 0 when the cluster names no chief)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "chief" or (not has_chief and resolver.task_type == "worker"
                                             and resolver.task_id == 0)


def writable_run_dir(run_dir, strategy):
    """Where this process writes: RUN_DIR on the chief; a temporary folder, removed at exit, on the
    other workers, which run every step (and its collective ops) exactly as the chief does."""
    if is_chief(strategy):
        return run_dir
    scratch = tempfile.mkdtemp(prefix="cyclegan-worker-")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    return scratch


def replica_slices(strategy, batch):
    """A nested batch of arrays as per-replica values: replica i of n gets the i-th of n equal slices."""
    replicas = strategy.num_replicas_in_sync

    def slice_for(context):
        index = context.replica_id_in_sync_group
        return tf.nest.map_structure(
            lambda array: tf.convert_to_tensor(np.array_split(np.asarray(array), replicas)[index]), batch)

    return strategy.experimental_distribute_values_from_function(slice_for)


def split_batches(model, strategy):
    """Makes model.train_on_batch and predict_on_batch split their batch across the replicas.

    Keras 3 hands the arrays given to these methods whole to every replica: the gradients still
    average right, but each replica would compute the full global batch. The model's train function
    is replaced by one that runs its train_step on each replica's slice and averages the replicas'
    logs (Keras' own reduction fails on scalar logs under the multi-worker strategy). Predicting
    (one input: the generators' samples) pads the batch to a multiple of the replicas, as a replica
    cannot run on zero images, and returns the batch's own rows.
    """
    step = tf.function(lambda batch: strategy.run(model.train_step, args=(batch,)), reduce_retracing=True)

    def train_function(batches):
        for batch in batches:
            logs = step(replica_slices(strategy, tuple(x for x in batch if x is not None)))
        return {name: strategy.reduce("MEAN", value, axis=None) for name, value in logs.items()}

    model.train_function = train_function
    model.make_predict_function()
    predict = model.predict_function
    replicas = strategy.num_replicas_in_sync

    def predict_function(batches):
        (images,), = batches
        count = len(images)
        padded = np.concatenate([images, np.repeat(images[-1:], -count % replicas, axis=0)])
        return predict([replica_slices(strategy, (padded,))])[:count]

    model.predict_function = predict_function


def build_gan(config, strategy):
    """The CycleGAN in the run's precision, built and compiled under the strategy's scope."""
    keras.mixed_precision.set_global_policy("mixed_float16" if config.get("mixed_precision") else "float32")
    replicas = strategy.num_replicas_in_sync
    if config["batch_size"] % replicas:
        raise data.UsageError(f"--batch-size {config['batch_size']}: the global batch is split across "
                              f"{replicas} replicas; give a multiple of {replicas} (or --distribute none)")
    if config.get("jit") and replicas > 1:
        raise data.UsageError(f"--jit: XLA cannot compile a step that spans {replicas} replicas; "
                              "use --jit with --distribute none")
    with strategy.scope():
        gan = CycleGAN(config)
    if replicas > 1:
        for model in (gan.generator_ab, gan.generator_ba, gan.discriminator_a, gan.discriminator_b,
                      gan.combined):
            split_batches(model, strategy)
    return gan


# ---- checkpoints -------------------------------------------------------------------------------

CHECKPOINT_NAME = re.compile(r"step-\d+\.npz")


class UnreadableCheckpoint(Exception):
    """A checkpoint file that is truncated, corrupt or not one of ours."""


def checkpoint_paths(run_dir):
    """The run's complete checkpoints, oldest first (half-written temporaries of a killed run are not)."""
    paths = glob.glob(os.path.join(run_dir, "checkpoints", "step-*.npz"))
    return sorted(p for p in paths if CHECKPOINT_NAME.fullmatch(os.path.basename(p)))


def save_checkpoint(run_dir, gan, step, epoch, pools, rng, keep=2):
    """All four networks, the three optimizers' states, the step, epoch and history pools, in one
    .npz written atomically; the `keep` newest checkpoints stay on disk."""
    arrays = {"step": np.array(step), "epoch": np.array(epoch)}
    for name, model in gan.models.items():
        for index, weight in enumerate(model.get_weights()):
            if not np.isfinite(weight).all():
                raise data.UsageError(f"step {step}: {name} has non-finite weights; not saved over the last "
                                      "good checkpoint (try a lower --lr)")
            arrays[f"weights/{name}/{index}"] = weight
    for name, optimizer in gan.optimizers.items():
        for index, variable in enumerate(optimizer.variables):
            arrays[f"optimizer/{name}/{index}"] = np.asarray(variable)
    for name, pool in pools.items():
        arrays[f"pool/{name}"] = np.array(pool.images, np.float32)
    arrays["rng"] = np.frombuffer(json.dumps(rng.bit_generator.state).encode(), np.uint8)
    folder = os.path.join(run_dir, "checkpoints")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"step-{step:09d}.npz")
    write_atomically(path, lambda temporary: np.savez(temporary, **arrays))
    for old in checkpoint_paths(run_dir)[:-keep]:
        os.remove(old)
    return path


def load_checkpoint(path, gan, pools, rng):
    """Restores what save_checkpoint wrote; returns (step, epoch).

    The whole file is read and checked first (zip CRCs, every array present, shapes that fit the
    configured networks), so a bad file changes nothing: UnreadableCheckpoint if it is damaged,
    data.UsageError if it holds networks of other sizes. No pickles: np.load's default is safe.
    """
    try:
        with np.load(path) as archive:
            arrays = {key: archive[key] for key in archive.files}
        rng_state = json.loads(arrays["rng"].tobytes().decode())
        step, epoch = int(arrays["step"]), int(arrays["epoch"])
        stored = {name: _numbered(arrays, f"weights/{name}") for name in gan.models}
        slots = {name: _numbered(arrays, f"optimizer/{name}") for name in gan.optimizers}
        pool_images = {name: list(arrays[f"pool/{name}"]) for name in pools}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        reason = " ".join(str(error).splitlines()[:1])
        raise UnreadableCheckpoint(f"{path}: unreadable checkpoint ({type(error).__name__}: {reason})") from None
    for name, model in gan.models.items():
        expected = [tuple(w.shape) for w in model.weights]
        found = [w.shape for w in stored[name]]
        if found != expected:
            difference = (f"{len(found)} weight arrays, expected {len(expected)}" if len(found) != len(expected)
                          else "weight shape {}, expected {}".format(*next(
                              (f, e) for f, e in zip(found, expected) if f != e)))
            raise data.UsageError(f"{path}: its {name} does not fit the configured network ({difference}); "
                                  "resume with the network options it was trained with")
    for name, model in gan.models.items():
        model.set_weights(stored[name])
    for name, optimizer in gan.optimizers.items():
        for variable, value in zip(optimizer.variables, slots[name]):
            variable.assign(value)
    for name, pool in pools.items():
        pool.images = pool_images[name]
    rng.bit_generator.state = rng_state
    return step, epoch


def _numbered(arrays, prefix):
    """arrays PREFIX/0, PREFIX/1, ... as a list (KeyError when one in between is missing)."""
    count = sum(key.startswith(f"{prefix}/") for key in arrays)
    return [arrays[f"{prefix}/{index}"] for index in range(count)]


def resume_checkpoint(run_dir, gan, pools, rng):
    """Loads the newest loadable checkpoint; returns (path, step, epoch).

    A damaged newer one is reported with a warning and, once an older one has loaded, set aside as
    NAME.corrupt (kept for inspection, no longer picked). With none loadable nothing is changed.
    """
    damaged, errors = [], []
    for path in reversed(checkpoint_paths(run_dir)):
        try:
            step, epoch = load_checkpoint(path, gan, pools, rng)
        except UnreadableCheckpoint as error:
            log.warning("%s; trying the previous checkpoint", error)
            damaged.append(path)
            errors.append(str(error))
            continue
        for bad in damaged:
            os.replace(bad, bad + ".corrupt")
            log.warning("set the damaged checkpoint aside as %s.corrupt", bad)
        return path, step, epoch
    raise data.UsageError(f"no loadable checkpoint to resume from, nothing changed ({'; '.join(errors)})")


def save_generators(run_dir, gan):
    paths = []
    for name in ("generator_ab", "generator_ba"):
        path = os.path.join(run_dir, f"{name}.keras")
        write_atomically(path, gan.models[name].save)
        paths.append(path)
    return paths


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
            raise data.UsageError(f"{folder}: is a file, expected a folder for the runs")
    if config.get("resume") and not checkpoint_paths(run_dir):
        raise data.UsageError(f"{run_dir}: no checkpoint to resume from")
    if not config.get("resume") and checkpoint_paths(run_dir):
        raise data.UsageError(f"{run_dir} already holds a run with checkpoints: continue it with --resume, "
                              "or give another --name")


def train(config, verbose=1, stop=None):
    """Runs (or resumes) a training run; returns a dict of what it wrote.

    `stop` (a GracefulStop) ends the run early after a signal, with a checkpoint of the last step.
    A non-finite loss ends it with data.UsageError before anything of that step is saved.
    """
    stop = stop or GracefulStop()
    check_run_dir(config)
    strategy = make_strategy(config.get("distribute"), config["batch_size"])
    run_dir = writable_run_dir(config["run_dir"], strategy)
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

    gan = build_gan(config, strategy)
    rng = np.random.default_rng(config.get("seed"))
    pools = {"A": HistoryPool(config["pool_size"], rng), "B": HistoryPool(config["pool_size"], rng)}
    step = epoch = 0
    if config.get("resume"):
        path, step, epoch = resume_checkpoint(config["run_dir"], gan, pools, rng)
        log.info("resumed %s at step %d (epoch %d)", path, step, epoch)
    os.makedirs(run_dir, exist_ok=True)
    write_json(os.path.join(run_dir, "config.json"),
               {k: v for k, v in config.items() if k not in ("resume", "run_dir")})
    writer = tf.summary.create_file_writer(run_dir)

    batches = iter(dataset)
    evaluator = None
    written = {"run_dir": run_dir, "checkpoint": None, "samples": []}
    started = time.time()
    while step < total_steps and not stop.signal_name:
        learning_rate = learning_rate_at(epoch, config["lr"], config["epochs"], config["epochs_decay"])
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
                last_good = (checkpoint_paths(run_dir) or ["none"])[-1]
                raise data.UsageError(f"step {step + 1}: non-finite loss ({diverged}); stopped without saving, "
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
                import evaluate  # here: evaluate imports generate, which imports this module
                evaluator = evaluator or evaluate.Evaluator(
                    config["dataroot"], config["image_size"], ("AtoB", "BtoA"),
                    evaluate.default_classifier_path(config["dataroot"], run_dir))
                evaluator.log_to_tensorboard(writer, {"AtoB": gan.generator_ab, "BtoA": gan.generator_ba}, step)
        if epoch % config["save_every"] == 0 or step >= total_steps or stop.signal_name:
            written["checkpoint"] = save_checkpoint(
                run_dir, gan, step, epoch, pools, rng, config["keep_checkpoints"])
    writer.flush()
    if written["checkpoint"] is None or not written["samples"]:
        written["checkpoint"] = save_checkpoint(run_dir, gan, step, epoch, pools, rng, config["keep_checkpoints"])
        written["samples"] = write_samples(run_dir, writer, gan, samples, step)
    written["generators"] = save_generators(run_dir, gan)
    written["step"] = step
    written["stopped"] = stop.signal_name
    written["seconds"] = time.time() - started
    return written


def main(argv=None):
    logging.basicConfig(format="%(levelname)s: %(message)s", level=logging.INFO)
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


def run_cli(main_function, program):
    """Runs a script's main; bad input ends with one line on stderr and exit status 2."""
    try:
        main_function()
    except (data.UsageError, OSError) as error:
        sys.exit(f"{program}: error: {error}")
    except KeyboardInterrupt:
        sys.exit(f"{program}: interrupted")


if __name__ == "__main__":
    run_cli(main, "train.py")
