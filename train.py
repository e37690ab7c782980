"""Train a CycleGAN with the classic Keras loop: discriminators and a combined model, train_on_batch.

    python train.py --dataroot datasets/horse2zebra --name h2z
    tensorboard --logdir runs

Everything of a run lands in RUNS_ROOT/NAME/: config.json, TensorBoard event files, checkpoints/,
samples/, and the final generator_ab.keras / generator_ba.keras that generate.py loads.

Ctrl-C or SIGTERM finishes the current step, writes a checkpoint and exits 0; `--resume` continues,
also after a kill (from the newest complete checkpoint). One train.py at a time writes a run (a lock
in RUN_DIR/.lock); generate.py, evaluate.py and TensorBoard may read it meanwhile: every file is
written whole (checkpoints.write_atomically) or appended (event files).
"""
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
import pretrained
import samples
from cli import UsageError
from config import as_json, from_command_line
from distribute import tf

log = logging.getLogger("cyclegan")


# ---- samples -----------------------------------------------------------------------------------

def write_samples(run_dir, writer, gan, test_images, step):
    """Both directions' grids (real | translated | reconstructed, samples.py) to TensorBoard and to
    RUNS_ROOT/NAME/samples/ as PNG; returns the paths."""
    import imageio.v3 as iio

    folder = os.path.join(run_dir, "samples")
    os.makedirs(folder, exist_ok=True)
    paths = []
    for direction, (source, forward, backward) in {
        "AtoB": (test_images["A"], gan.generator_ab, gan.generator_ba),
        "BtoA": (test_images["B"], gan.generator_ba, gan.generator_ab),
    }.items():
        translated = forward.predict_on_batch(source)
        reconstructed = backward.predict_on_batch(translated)
        grid = samples.grid_image([source, translated, reconstructed], samples.direction_titles(direction))
        with writer.as_default():
            tf.summary.image(f"samples/{direction}", grid[None], step=step)
        path = os.path.join(folder, f"{direction}_step{step:07d}.png")
        checkpoints.write_atomically(path, lambda temporary: iio.imwrite(temporary, grid, extension=".png"))
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


def check_run_dir(config, resume, chief=True):
    """Runs cannot go where a file is, nor into a run another train.py is writing; see also
    check_run_contents. Read-only: nothing is written before the checks pass. `chief`: this process
    writes the run (the other workers of a multi-worker run only read its checkpoint)."""
    for folder in (config.runs_root, config.run_dir):
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise UsageError(f"{folder}: is a file, expected a folder for the runs")
    if chief:
        checkpoints.check_not_in_use(config.run_dir)
    check_run_contents(config, resume, chief)


def check_run_contents(config, resume, chief=True):
    """A resumed run needs a checkpoint; a fresh run never writes into a folder that holds anything
    (a finished run whose checkpoints were deleted, another run's files)."""
    run_dir = config.run_dir
    if resume and not checkpoints.checkpoint_paths(run_dir):
        raise UsageError(f"{run_dir}: no checkpoint to resume from")
    held = sorted(set(os.listdir(run_dir)) - {checkpoints.LOCK_FILE}) if os.path.isdir(run_dir) else []
    if chief and not resume and held:
        shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
        raise UsageError(f"{run_dir} already holds a run ({shown}): continue it with --resume, "
                         "or give another --name")


def weight_bytes(config):
    """A lower bound of the memory training takes: the convolution kernels of networks.py's two
    generators and two discriminators (biases, norms and activations left out), each held four times in
    float32: the weights, their gradients and Adam's two moments."""
    g, d = config.ngf, config.ndf
    if config.netg == "unet":  # 4x4 kernels: the eight down convs, then the up convs' (skip-widened) inputs
        generator = 16 * (3 * g + 298 * g * g) + 16 * (532 * g * g + 3 * 2 * g)
    else:
        generator = 2 * 49 * 3 * g + (18 + 72 + 72 + 18) * g * g + config.n_res_blocks * 2 * 9 * 16 * g * g
    discriminator = 16 * (3 * d + 2 * d * d + 8 * d * d + 32 * d * d + 8 * d)
    return 2 * (generator + discriminator) * 4 * 4


def check_fits_in_memory(config):
    """Refuses networks whose weights alone outgrow the machine, before TensorFlow tries to allocate
    them (terabytes would take minutes to fail, or wake the OOM killer)."""
    needed, memory = weight_bytes(config), os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > memory:
        raise UsageError(f"--ngf {config.ngf} --ndf {config.ndf} --n-res-blocks {config.n_res_blocks}: training "
                         f"needs at least {needed / 2 ** 30:.3g} GiB for the weights, this machine has "
                         f"{memory / 2 ** 30:.3g} GiB; make --ngf, --ndf or --n-res-blocks smaller")


def out_of_memory(error):
    return UsageError(f"out of memory ({type(error).__name__}: {first_line(error)}); make --batch-size, "
                      "--image-size, --ngf, --ndf or --n-res-blocks smaller")


def first_line(error):
    return (str(error).strip().splitlines() or [""])[0]


def fit_pools_to_image_size(pools, image_size):
    """A run resumed with another --image-size: the history pools' fakes of the old size cannot be
    mixed with the new ones, so the pools start empty again (they refill within --pool-size steps)."""
    stored = {pool.images[0].shape[0] for pool in pools.values() if pool.images}
    if stored and stored != {image_size}:
        for pool in pools.values():
            pool.images = []
        log.warning("--image-size %d: emptied the history pools of %s-px fakes from before the change",
                    image_size, "/".join(map(str, sorted(stored))))


def start_generators(config, gan):
    """A fresh run fine-tunes from --start-ab / --start-ba: its generators begin with those files'
    weights (a run's .keras or a PyTorch .pth), which must be the networks the run's options build."""
    for option, path, generator in (("--start-ab", config.start_ab, gan.generator_ab),
                                    ("--start-ba", config.start_ba, gan.generator_ba)):
        if path:
            pretrained.start_from(path, generator, option)
            log.info("%s: starting from the weights of %s", generator.name, path)


def start_run_files(run_dir, config, first_step):
    """Writes config.json and opens the TensorBoard writer; called once this process has trained a step,
    so a resume that cannot start (bad checkpoint, changed options, out of memory) leaves the run as it was.

    The event stream starts with a SessionLog START at `first_step`. TensorBoard then drops the steps
    from `first_step` on that an earlier process of this run wrote after its last checkpoint, before it
    was killed: each step shows once, with this process's values.
    """
    checkpoints.write_json(os.path.join(run_dir, "config.json"), as_json(config))
    writer = tf.summary.create_file_writer(run_dir)
    start = tf.compat.v1.Event(wall_time=time.time(), step=first_step,
                               session_log=tf.compat.v1.SessionLog(status=tf.compat.v1.SessionLog.START))
    # tf.summary has no public call that writes a whole Event; ImportEvent is the op behind TF1's
    # import_event, given the writer's resource.
    tf.raw_ops.ImportEvent(writer=writer._resource, event=start.SerializeToString())
    return writer


def try_samples(run_dir, writer, gan, samples, step):
    """write_samples, but a failure (a full disk, an unwritable samples/) is one WARNING: the run goes on."""
    try:
        return write_samples(run_dir, writer, gan, samples, step)
    except Exception as error:  # noqa: BLE001  (nothing about a picture is worth a week's run)
        log.warning("step %d: sample grids not written (%s: %s)", step, type(error).__name__, first_line(error))
        return None


def try_evaluation(evaluator, config, run_dir, writer, gan, step):
    """eval/* scores at this step; any failure is one WARNING and a skipped point, never the end of the
    run (its checkpoint is already written). Returns the Evaluator to reuse, None if it could not be made."""
    try:
        import metrics  # here: only runs that evaluate pay for its imports

        folders = data.domain_folders(config)
        evaluator = evaluator or metrics.Evaluator(
            folders, config.image_size, ("AtoB", "BtoA"), metrics.default_classifier_path(folders, run_dir))
        evaluator.log_to_tensorboard(writer, {"AtoB": gan.generator_ab, "BtoA": gan.generator_ba}, step)
    except Exception as error:  # noqa: BLE001  (scores are a side show of training)
        log.warning("step %d: evaluation skipped (%s: %s)", step, type(error).__name__, first_line(error))
    return evaluator


def train(config, resume=False, verbose=1, stop=None):
    """Runs (or resumes) a training run; returns a dict of what it wrote.

    `stop` (a GracefulStop) ends the run early after a signal, with a checkpoint of the last step.
    A non-finite loss ends it with UsageError before anything of that step is saved. The run folder
    is locked for the whole run (checkpoints.run_lock): one writer at a time.
    """
    stop = stop or GracefulStop()
    # first: TensorFlow fixes its thread pools when it starts
    threads = distribute.set_training_threads(distribute.first_activation_elements(config))
    if threads:
        log.info("on the CPU: %d thread(s) per op, %d op(s) at a time", *threads)
    check_fits_in_memory(config)
    strategy = distribute.make_strategy(config.distribute, config.batch_size)
    run_dir = distribute.writable_run_dir(config.run_dir, strategy)
    chief = run_dir == config.run_dir
    check_run_dir(config, resume, chief)
    if config.seed is not None:
        distribute.make_deterministic(config.seed)
    folders = data.domain_folders(config)
    train_paths = data.train_images(folders)
    samples = {d: data.test_images(folders, d, config.image_size, config.sample_count)
               for d in "AB"}
    with checkpoints.run_lock(run_dir):
        check_run_contents(config, resume, chief)  # again: another train.py may have written it meanwhile
        checkpoints.remove_stale_temporaries(run_dir)
        try:
            return train_locked(config, resume, strategy, run_dir, train_paths, samples, verbose, stop)
        except (tf.errors.ResourceExhaustedError, MemoryError) as error:
            raise out_of_memory(error) from None


def train_locked(config, resume, strategy, run_dir, train_paths, samples, verbose, stop):
    gan = cyclegan.build_gan(config, strategy)
    rng = np.random.default_rng(config.seed)
    pools = {"A": cyclegan.HistoryPool(config.pool_size, rng), "B": cyclegan.HistoryPool(config.pool_size, rng)}
    step = epoch = saved_step = 0
    if resume:
        path, step, epoch = checkpoints.resume_checkpoint(config.run_dir, gan, pools, rng)
        saved_step = step
        log.info("resumed %s at step %d (epoch %d)", path, step, epoch)
        fit_pools_to_image_size(pools, config.image_size)
    else:
        start_generators(config, gan)
    # A seeded run resumed at `step` sees the batches the uninterrupted run would have seen from there.
    dataset, steps_per_epoch = data.train_dataset(train_paths, config.image_size, config.batch_size,
                                                  config.seed, start_step=step)
    total_epochs = config.epochs + config.epochs_decay
    total_steps = total_epochs * steps_per_epoch
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)

    writer = None  # opened by the first step (start_run_files)
    progress = cli.Progress(total_steps, print_every=config.print_every, start=step) if verbose else None
    batches = iter(dataset)
    evaluator = None
    written = {"run_dir": run_dir, "checkpoint": None, "samples": []}
    started = time.time()
    while step < total_steps and not stop.signal_name:
        learning_rate = cyclegan.learning_rate_at(epoch, config.lr, config.epochs, config.epochs_decay)
        gan.set_learning_rate(learning_rate)
        for _ in range(min(steps_per_epoch - step % steps_per_epoch, total_steps - step)):
            real_a, real_b = next(batches)
            losses = gan.train_step(real_a.numpy(), real_b.numpy(), pools["A"], pools["B"])
            diverged = ", ".join(f"{k} {v}" for k, v in losses.items() if not math.isfinite(v))
            if diverged:
                last_good = (checkpoints.checkpoint_paths(run_dir) or ["none"])[-1]
                raise UsageError(f"step {step + 1}: non-finite loss ({diverged}); stopped without saving, "
                                 f"last good checkpoint: {last_good} (try a lower --lr)")
            step += 1
            writer = writer or start_run_files(run_dir, config, step)
            with writer.as_default():
                for name, value in losses.items():
                    tf.summary.scalar(f"loss/{name}", value, step=step)
                tf.summary.scalar("learning_rate", learning_rate, step=step)
            if step % config.sample_every == 0 or step == total_steps:
                written["samples"] = try_samples(run_dir, writer, gan, samples, step) or written["samples"]
            if progress:
                progress.update(step, {"epoch": f"{epoch + 1}/{total_epochs}", "D_A": losses["D_A"],
                                       "D_B": losses["D_B"], "G": losses["G_total"], "lr": f"{learning_rate:.2e}"})
            if stop.signal_name:
                log.warning("%s: stopping after step %d", stop.signal_name, step)
                break
        epoch_ended = step % steps_per_epoch == 0
        epoch += epoch_ended
        if epoch % config.save_every == 0 or step >= total_steps or stop.signal_name:
            writer.flush()  # every event up to the checkpoint's step is on disk before the checkpoint
            written["checkpoint"] = checkpoints.save_checkpoint(
                run_dir, gan, step, epoch, pools, rng, config.keep_checkpoints)
            saved_step = step
        if epoch_ended and config.eval_every and epoch % config.eval_every == 0 and not stop.signal_name:
            evaluator = try_evaluation(evaluator, config, run_dir, writer, gan, step)
    writer = writer or start_run_files(run_dir, config, step + 1)  # resumed with nothing left to train
    writer.flush()
    if saved_step != step or written["checkpoint"] is None:
        written["checkpoint"] = checkpoints.save_checkpoint(run_dir, gan, step, epoch, pools, rng, config.keep_checkpoints)
    if not written["samples"]:
        written["samples"] = try_samples(run_dir, writer, gan, samples, step) or []
    written["generators"] = checkpoints.save_generators(run_dir, gan)
    writer.close()
    written["step"] = step
    written["stopped"] = stop.signal_name
    written["seconds"] = time.time() - started
    return written


def main(argv=None):
    config, resume = from_command_line(argv)
    with GracefulStop() as stop:
        written = train(config, resume, stop=stop)
    if written["stopped"]:
        print(f"\nstopped by {written['stopped']} at step {written['step']}; continue with: python train.py "
              f"--runs-root {config.runs_root} --name {config.name} --resume")
    print(f"trained {written['step']} steps in {written['seconds']:.0f} s")
    print(f"  TensorBoard:  tensorboard --logdir {config.runs_root}")
    print(f"  checkpoint:   {written['checkpoint']}")
    print(f"  samples:      {', '.join(written['samples'])}")
    print(f"  generators:   {', '.join(written['generators'])}")


if __name__ == "__main__":
    cli.run_cli(main, "train.py")
