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
import resource
import signal
import threading
import time

import numpy as np

import checkpoints
import cli
import cpu_kernels
import cyclegan
import data
import distribute
import pretrained
import runs
import samples
from cli import UsageError
from config import as_json, from_command_line
from quiet import tensorflow

tf = tensorflow()  # the input pipeline and TensorBoard's writer, whatever Keras' backend

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
        # encoded here, written by write_atomically: a full disk is one OSError, never a dying imageio file
        encoded = iio.imwrite("<bytes>", grid, extension=".png")
        checkpoints.write_atomically(path, lambda temporary: write_bytes(temporary, encoded))
        paths.append(path)
    return paths


def write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)


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


def check_fits_in_memory(config):
    """Refuses networks whose weights alone outgrow the machine, before TensorFlow tries to allocate
    them (terabytes would take minutes to fail, or wake the OOM killer)."""
    needed = cyclegan.weight_count(config) * 4 * 4  # float32 weights, gradients and Adam's two moments
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > memory:
        raise UsageError(f"--ngf {config.ngf} --ndf {config.ndf} --n-res-blocks {config.n_res_blocks}: training "
                         f"needs at least {needed / 2 ** 30:.3g} GiB for the weights, this machine has "
                         f"{memory / 2 ** 30:.3g} GiB; make --ngf, --ndf or --n-res-blocks smaller")


def memory_limit():
    """(bytes, what they are) this process may still fill: the machine's physical memory, or less
    under a cgroup limit (a container) or `ulimit -v` (less the address space already taken)."""
    limits = [(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine has")]
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            text = f.read().strip()
        if text != "max":
            limits.append((int(text), "its container (cgroup memory.max) allows"))
    except (OSError, ValueError):
        pass
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft != resource.RLIM_INFINITY:
        limits.append((soft - address_space_used(), "`ulimit -v` leaves"))
    return min(limits)


def address_space_used():
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError):
        return 0


def check_step_fits_in_memory(config, gan):
    """Refuses a step whose activations alone outgrow the memory, before the first step allocates them
    (a step past the machine's memory ends by a signal, not an exception: the OOM killer, or
    std::bad_alloc under `ulimit -v`). On a GPU the activations live in its memory: not checked here."""
    if distribute.gpu_count():
        return
    needed = cyclegan.step_activation_bytes(gan, config)
    memory, what = memory_limit()
    if needed > memory:
        raise UsageError(f"--image-size {config.image_size} --batch-size {config.batch_size}: a training step needs "
                         f"at least {needed / 2 ** 30:.3g} GiB for its activations, {what} {memory / 2 ** 30:.3g} GiB; "
                         "make --image-size, --batch-size, --ngf, --ndf or --n-res-blocks smaller")


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


def start_run_files(run_dir, config, first_step, train_paths):
    """Writes config.json and opens the TensorBoard writer; called once this process has trained a step,
    so a resume that cannot start (bad checkpoint, changed options, out of memory) leaves the run as it was.
    dataset.json records the training images' names once, to recognise the dataset if it moves.

    The event stream starts with a SessionLog START at `first_step`. TensorBoard then drops the steps
    from `first_step` on that an earlier process of this run wrote after its last checkpoint, before it
    was killed: each step shows once, with this process's values.
    """
    config_path = os.path.join(run_dir, "config.json")
    save_or_explain(lambda: checkpoints.write_json(config_path, as_json(config)), config_path, config, first_step)
    save_or_explain(lambda: runs.record_dataset(run_dir, train_paths), os.path.join(run_dir, runs.DATASET_RECORD),
                    config, first_step)
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


def try_evaluation(evaluator, config, folders, run_dir, writer, gan, step):
    """eval/* scores at this step; any failure is one WARNING and a skipped point, never the end of the
    run (its checkpoint is already written). Returns the Evaluator to reuse, None if it could not be made."""
    try:
        import metrics  # here: only runs that evaluate pay for its imports

        evaluator = evaluator or metrics.Evaluator(
            folders, config.image_size, ("AtoB", "BtoA"), metrics.default_classifier_path(folders, run_dir))
        evaluator.log_to_tensorboard(writer, {"AtoB": gan.generator_ab, "BtoA": gan.generator_ba}, step)
    except Exception as error:  # noqa: BLE001  (scores are a side show of training)
        log.warning("step %d: evaluation skipped (%s: %s)", step, type(error).__name__, first_line(error))
    return evaluator


def warn_batch_larger_than_a_domain(config, train_paths):
    smaller = min(len(images) for images in train_paths)
    if config.batch_size > smaller:
        log.warning("--batch-size %d is larger than the smaller domain (%d images): every batch repeats images, "
                    "and steps take longer for nothing", config.batch_size, smaller)


def save_or_explain(save, what, config, step):
    """A file of the run written (config.json, a checkpoint, a generator), or one line naming it, the last
    good checkpoint and the command that goes on (a full disk: what is on disk stays whole; see
    write_atomically): --resume once the run has its config.json, else the same command again."""
    try:
        return save()
    except OSError as error:
        last = (checkpoints.checkpoint_paths(config.run_dir) or ["none yet"])[-1]
        way_on = (f"continue with: python train.py --runs-root {config.runs_root} --name {config.name} --resume"
                  if os.path.exists(os.path.join(config.run_dir, "config.json")) else "run the same command again")
        raise UsageError(f"{what}: could not write it at step {step} ({error.strerror or error}); last good "
                         f"checkpoint: {last}; make room, then {way_on}") from None


def generators_behind(run_dir, checkpoint):
    """Whether a final generator is missing or older than the checkpoint the run resumed from (an earlier
    process stopped or failed between the two writes, leaving those of an older step): then both are
    written again from it, so that the two are always of one step."""
    paths = [checkpoints.generator_path(run_dir, name) for name in checkpoints.GENERATORS]
    return not all(map(os.path.exists, paths)) or min(map(os.path.getmtime, paths)) < os.path.getmtime(checkpoint)


def train(config, resume=False, verbose=1, stop=None):
    """Runs (or resumes) a training run; returns a dict of what it wrote.

    `stop` (a GracefulStop) ends the run early after a signal, with a checkpoint of the last step.
    A non-finite loss ends it with UsageError before anything of that step is saved. The run folder
    is locked for the whole run (runs.run_lock): one writer at a time. Everything that can be
    refused (the data, the start files, the memory a step needs) is checked before the run folder
    is made or touched.
    """
    stop = stop or GracefulStop()
    config = config.with_resolved_paths()
    # first: TensorFlow fixes its thread pools when it starts, and the collective ops of a multi-worker
    # strategy only before its first op
    threads = cpu_kernels.set_training_threads(cpu_kernels.first_activation_elements(config))
    strategy = distribute.make_strategy(config.distribute, config.batch_size)
    log.info("%s", distribute.device_line())
    if threads:
        log.info("on the CPU: %d thread(s) per op, %d op(s) at a time", *threads)
    kernels = cpu_kernels.use(config.cpu_kernels != "off")
    log.info("CPU kernels: %s", ", ".join(kernels) if kernels else "none (the networks' plain Keras path)")
    check_fits_in_memory(config)
    run_dir = distribute.writable_run_dir(config.run_dir, strategy)
    chief = run_dir == config.run_dir
    runs.check_run_dir(config, resume, chief)
    saved = runs.check_run_dataset(config) if resume else None
    if config.seed is not None:
        distribute.check_jit_with_determinism(config.jit, "--seed")
        distribute.make_deterministic(config.seed)
    folders = data.domain_folders(config)
    train_paths = data.train_images(folders)  # first: a bad training folder is the one line said
    data.check_distinct_domains(folders, train_paths)
    folders = data.with_test_fallback(folders)
    if resume:
        runs.check_same_images(config, saved, train_paths)
    warn_batch_larger_than_a_domain(config, train_paths)
    samples = {d: data.test_images(folders, d, config.image_size, config.sample_count) for d in "AB"}
    from_checkpoint = bool(resume and checkpoints.checkpoint_paths(config.run_dir))
    try:
        gan = cyclegan.build_gan(config, strategy)
        check_step_fits_in_memory(config, gan)
        if not from_checkpoint:
            start_generators(config, gan)
    except distribute.out_of_memory_errors() as error:
        raise out_of_memory(error) from None
    with runs.run_lock(run_dir):
        runs.check_run_contents(config, resume, chief)  # again: another train.py may have written it meanwhile
        runs.remove_stale_temporaries(run_dir)
        try:
            return train_locked(config, from_checkpoint, gan, run_dir, folders, train_paths, samples, verbose, stop)
        except distribute.out_of_memory_errors() as error:
            raise out_of_memory(error) from None


def train_locked(config, from_checkpoint, gan, run_dir, folders, train_paths, samples, verbose, stop):
    rng = np.random.default_rng(config.seed)
    pools = {"A": cyclegan.HistoryPool(config.pool_size, rng), "B": cyclegan.HistoryPool(config.pool_size, rng)}
    step = epoch = 0
    path = None  # the checkpoint resumed from
    if from_checkpoint:
        path, step, epoch = checkpoints.resume_checkpoint(config.run_dir, gan, pools, rng)
        log.info("resumed %s at step %d (epoch %d)", path, step, epoch)
        fit_pools_to_image_size(pools, config.image_size)
    elif os.path.exists(os.path.join(config.run_dir, "config.json")):
        log.info("%s stopped before its first checkpoint: starting it again from step 0", config.run_dir)
    first_step = saved_step = step
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
    latest = checkpoints.checkpoint_paths(run_dir)
    written = {"run_dir": run_dir, "checkpoint": latest[-1] if latest else None, "samples": [], "generators": [],
               "first_step": first_step, "total_steps": total_steps}
    save = lambda: save_or_explain(  # noqa: E731
        lambda: checkpoints.save_checkpoint(run_dir, gan, step, epoch, pools, rng, config.keep_checkpoints),
        os.path.join(run_dir, "checkpoints", f"step-{step:09d}.npz"), config, step)
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
            writer = writer or start_run_files(run_dir, config, step, train_paths)
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
            written["checkpoint"] = save()
            saved_step = step
        if epoch_ended and config.eval_every and epoch % config.eval_every == 0 and not stop.signal_name:
            evaluator = try_evaluation(evaluator, config, folders, run_dir, writer, gan, step)
    if step > first_step:
        writer.flush()
        if saved_step != step:
            written["checkpoint"] = save()
        if not written["samples"]:
            written["samples"] = try_samples(run_dir, writer, gan, samples, step) or []
        writer.close()
    if step > first_step or path and generators_behind(run_dir, path):  # never untrained ones: no checkpoint
        written["generators"] = [save_or_explain(lambda: checkpoints.save_generator(run_dir, gan, name),
                                                 checkpoints.generator_path(run_dir, name), config, step)
                                 for name in checkpoints.GENERATORS]
    written["step"] = step
    written["stopped"] = stop.signal_name
    written["seconds"] = time.time() - started
    return written


def main(argv=None):
    config, resume = from_command_line(argv)
    with GracefulStop() as stop:
        written = train(config, resume, stop=stop)
    trained = written["step"] - written["first_step"]
    if written["stopped"] and not os.path.exists(os.path.join(written["run_dir"], "config.json")):
        print(f"\nstopped by {written['stopped']} before the first step; nothing written: run the same command "
              "again")
        return
    if written["stopped"]:
        print(f"\nstopped by {written['stopped']} at step {written['step']}; continue with: python train.py "
              f"--runs-root {config.runs_root} --name {config.name} --resume")
    if not trained:
        print(f"nothing to train: {written['run_dir']} is at step {written['step']} of {written['total_steps']} "
              "(--max-steps, --epochs or --epochs-decay set how far it goes)")
    else:
        first, last = written["first_step"] + 1, written["step"]
        since = "" if first == 1 else f" (step {last})" if first == last else f" (steps {first}-{last})"
        print(f"trained {trained} step{'s' * (trained != 1)} in {written['seconds']:.0f} s{since}")
    print(f"  TensorBoard:  tensorboard --logdir {config.runs_root}")
    print(f"  checkpoint:   {written['checkpoint']}")
    if written["samples"]:
        print(f"  samples:      {', '.join(written['samples'])}")
    if written["generators"]:
        print(f"  generators:   {', '.join(written['generators'])}")


if __name__ == "__main__":
    cli.run_cli(main, "train.py")
