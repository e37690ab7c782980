"""Where a run computes: the Keras backend and its devices, the precision policy, seeding, and the
classic train_on_batch loop spread over tf.distribute (which strategy, who writes the run's files, how
each replica gets its own slice of the global batch). tf.distribute is TensorFlow's: under the JAX or
PyTorch backend a run takes one device, and this module imports no TensorFlow.
"""
import atexit
import json
import logging
import os
import shutil
import tempfile

import numpy as np

from cli import UsageError
from quiet import backend, keras, tensorflow

log = logging.getLogger("cyclegan")


def gpu_count():
    """The GPUs Keras' backend sees."""
    if backend() == "tensorflow":
        return len(tensorflow().config.list_physical_devices("GPU"))
    if backend() == "jax":
        import jax

        return sum(device.platform == "gpu" for device in jax.devices())
    if backend() == "torch":
        import torch

        return torch.cuda.device_count()
    return 0


def device_line():
    """What train.py and bench.py print first: the backend and the device, with a hint when no GPU
    is seen (README's set-up says how to get one)."""
    gpus = gpu_count()
    if gpus:
        return f"Keras {keras.__version__} on {backend()}, {gpus} GPU(s)"
    return (f"Keras {keras.__version__} on {backend()}, CPU (no GPU visible to {backend()}: see README's "
            "'On a GPU' for the CUDA build of each backend)")


def make_strategy(name=None, batch_size=None):
    """The tf.distribute strategy for --distribute; None picks mirrored with more than one GPU when
    the global batch splits evenly across them. Under another backend: None (one device), and
    --distribute mirrored or multiworker is refused.

    Call it before anything else touches TensorFlow: the multi-worker strategy configures the
    collective runtime, which only works at program start.
    """
    if backend() != "tensorflow":
        if name not in (None, "none"):
            raise UsageError(f"--distribute {name}: tf.distribute needs the TensorFlow backend (KERAS_BACKEND="
                             f"tensorflow); under {backend()} a run takes one device")
        return None
    tf = tensorflow()
    if name is None:
        gpus = gpu_count()
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


def out_of_memory_errors():
    """What the backend raises when a tensor does not fit (train.py turns them into one line)."""
    if backend() == "tensorflow":
        return MemoryError, tensorflow().errors.ResourceExhaustedError
    if backend() == "torch":
        import torch

        return MemoryError, torch.OutOfMemoryError
    return (MemoryError,)


def replicas(strategy):
    return strategy.num_replicas_in_sync if strategy is not None else 1


def is_chief(strategy):
    """True for the one process that writes the run's files: the only one, or TF_CONFIG's chief
    (worker 0 when the cluster names no chief)."""
    resolver = getattr(strategy, "cluster_resolver", None)  # None too without a strategy
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
    tf, replicas = tensorflow(), strategy.num_replicas_in_sync

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
    step = tensorflow().function(lambda batch: strategy.run(model.train_step, args=(batch,)), reduce_retracing=True)

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
    """Seeds Python's, NumPy's, the backend's and Keras' generators (weight initialisers) and, under
    TensorFlow, turns on its op determinism, for the whole process: the same command with the same seed,
    on the same machine and software, then trains bit-identical weights. The data pipeline and the
    history pool take the seed themselves (stateless augmentation, their own NumPy generator)."""
    keras.utils.set_random_seed(seed)
    if backend() == "tensorflow":
        tensorflow().config.experimental.enable_op_determinism()


def check_jit_with_determinism(jit, option):
    """UsageError for --jit with an option that turns on op determinism under TensorFlow (train.py --seed,
    bench.py --deterministic): Keras then compiles nothing with XLA, with a Python warning only."""
    if jit and backend() == "tensorflow":
        raise UsageError(f"--jit with {option}: the op determinism {option} turns on keeps Keras from compiling "
                         "with XLA under TensorFlow; drop one of them")


def precision_policy(mixed_precision):
    """The Keras dtype policy for --mixed-precision: off, float16, bfloat16 or auto (True in the
    config.json of runs made before the option took a value)."""
    if not mixed_precision:
        return "float32"
    if mixed_precision in (True, "auto"):
        mixed_precision = "float16" if gpu_count() else "bfloat16"
    return f"mixed_{mixed_precision}"

