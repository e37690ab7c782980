"""The TensorFlow runtime a run computes on: TensorFlow imported quietly, the precision policy, and
the classic train_on_batch loop spread over tf.distribute (which strategy, who writes the run's files,
how each replica gets its own slice of the global batch).

Library modules take `tf` from here, so TensorFlow's start-up notes never reach the user's terminal.
"""
import atexit
import json
import logging
import os
import shutil
import tempfile

import numpy as np

from cli import UsageError


def _import_tensorflow_quietly():
    """Imports TensorFlow with its C++ start-up notes (CUDA probing, oneDNN) kept off stderr: they
    are printed before any log level applies. Errors still surface as Python exceptions."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import keras  # noqa: F401  (imports TensorFlow's backend too)
        import tensorflow
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    tensorflow.get_logger().setLevel("ERROR")  # e.g. retracing notes when images of many sizes go through
    return tensorflow


tf = _import_tensorflow_quietly()
import keras  # noqa: E402  (after TensorFlow, imported quietly)

log = logging.getLogger("cyclegan")


LARGE_STEP_ELEMENTS = 2 ** 21  # a step whose generator's first activation is this large runs one op at a time


def set_training_threads(activation_elements):
    """On a CPU: for a small step, each op on half of the cores, two ops at a time; for a large one (the
    generator's first activation, batch x height x width x ngf, of LARGE_STEP_ELEMENTS or more), each op
    on all of the cores, one at a time. Returns that layout as (threads per op, ops at a time), or None
    where TensorFlow keeps its default (every op may use every core, several at a time).

    A CycleGAN step is two chains that do not wait on each other: each generator's passes, then
    each discriminator's step (cyclegan.CycleGAN.train_step runs the two side by side). The book's
    128x128 network's ops are too small to share out over all the cores well, and two chains on half
    each made its step 5-20 % faster on 2 cores. The paper's 256x256 ones are not: its step took the same
    time either way, and one op at a time kept the bytes in use 0.3-0.5 GiB lower: peak memory 2.7-2.9
    against 3.2-3.5 GB (docs/performance.md). One inference chain (generate.py) keeps the default. Left
    alone: on a GPU, where the user sets TF_NUM_INTRAOP_THREADS or TF_NUM_INTEROP_THREADS, and once
    TensorFlow has started in another layout (it makes its thread pools then: call this before any op runs).
    """
    if tf.config.list_physical_devices("GPU") or {"TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"} & set(os.environ):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    layout = (cores, 1) if activation_elements >= LARGE_STEP_ELEMENTS else (max(1, cores // 2), 2)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(layout[0])
        tf.config.threading.set_inter_op_parallelism_threads(layout[1])
    except RuntimeError:  # TensorFlow has started: its thread pools are fixed
        return None
    return layout


def first_activation_elements(config):
    """The size of the generator's first activation in a training step: what set_training_threads reads."""
    return config.batch_size * config.image_size ** 2 * config.ngf


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
            raise UsageError("--distribute multiworker needs the TF_CONFIG environment variable set to "
                                  "JSON naming the cluster and this process's task (see docs/scaling.md)") from None
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
            lambda array: None if array is None
            else tf.convert_to_tensor(np.array_split(np.asarray(array), replicas)[index]), batch)

    return strategy.experimental_distribute_values_from_function(slice_for)


def split_batches(model, strategy):
    """Makes model.train_on_batch and predict_on_batch split their batch across the replicas.

    Keras 3 hands the arrays given to these methods whole to every replica: the gradients still
    average right, but each replica would compute the full global batch. The model's train function
    is replaced by one that runs its train_step on each replica's slice and averages the replicas'
    scalar logs and joins the replicas' slices of image logs (Keras' own reduction fails on scalar
    logs under the multi-worker strategy). Predicting
    (one input: the generators' samples) pads the batch to a multiple of the replicas, as a replica
    cannot run on zero images, and returns the batch's own rows.
    """
    step = tf.function(lambda batch: strategy.run(model.train_step, args=(batch,)), reduce_retracing=True)

    def join(value):
        if strategy.experimental_local_results(value)[0].shape.rank:
            return strategy.gather(value, axis=0)
        return strategy.reduce("MEAN", value, axis=None)

    def train_function(batches):
        for batch in batches:
            logs = step(replica_slices(strategy, tuple(x for x in batch if x is not None)))
        return {name: join(value) for name, value in logs.items()}

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


def make_deterministic(seed):
    """Seeds Python's, NumPy's, TensorFlow's and Keras' generators (weight initialisers) and turns on
    TensorFlow's op determinism, for the whole process: the same command with the same seed, on the
    same machine and software, then trains bit-identical weights. The data pipeline and the history
    pool take the seed themselves (stateless augmentation, their own NumPy generator)."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def precision_policy(mixed_precision):
    """The Keras dtype policy for --mixed-precision: off, float16, bfloat16 or auto (True in the
    config.json of runs made before the option took a value)."""
    if not mixed_precision:
        return "float32"
    if mixed_precision in (True, "auto"):
        mixed_precision = "float16" if tf.config.list_physical_devices("GPU") else "bfloat16"
    return f"mixed_{mixed_precision}"
