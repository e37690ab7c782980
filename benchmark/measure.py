"""bench.py's pieces for any Keras backend: timing, memory, the device, FLOPs, the CPU kernels' switch and
the project loop's iteration (cyclegan.CycleGAN.train_step on synthetic images). No TensorFlow is
imported here unless it is Keras' backend.
"""
import os
import resource
import time

import numpy as np

import cyclegan
import distribute
import quiet
from quiet import keras


def sync():
    """Waits for the work queued on a GPU (TensorFlow, JAX and PyTorch return before it is done)."""
    if not distribute.gpu_count():
        return
    if quiet.backend() == "tensorflow":
        quiet.tensorflow().test.experimental.sync_devices()
    elif quiet.backend() == "jax":
        import jax

        jax.effects_barrier()
    elif quiet.backend() == "torch":
        import torch

        torch.cuda.synchronize()


def timed(function, steps, warmup):
    """Seconds of each of `steps` calls after `warmup` untimed ones, each waited for on a GPU."""
    for _ in range(warmup):
        function()
    sync()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        function()
        sync()
        times.append(time.perf_counter() - started)
    return np.array(times)


def summary(times):
    return {"median_s": float(np.median(times)), "min_s": float(times.min()), "max_s": float(times.max())}


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_gpu_mb():
    """The backend's peak memory on its first GPU so far (None on a CPU)."""
    if not distribute.gpu_count():
        return None
    if quiet.backend() == "tensorflow":
        return quiet.tensorflow().config.experimental.get_memory_info("GPU:0")["peak"] / 2 ** 20
    if quiet.backend() == "jax":
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        return stats["peak_bytes_in_use"] / 2 ** 20 if "peak_bytes_in_use" in stats else None
    if quiet.backend() == "torch":
        import torch

        return torch.cuda.max_memory_allocated() / 2 ** 20
    return None


def device_name():
    """What the backend computes on: its first GPU's name, else the CPU count."""
    if not distribute.gpu_count():
        return f"{os.cpu_count()} CPUs"
    if quiet.backend() == "tensorflow":
        tf = quiet.tensorflow()
        gpu = tf.config.list_physical_devices("GPU")[0]
        return tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
    if quiet.backend() == "jax":
        import jax

        return jax.devices()[0].device_kind
    import torch

    return torch.cuda.get_device_name(0)


def backend_version():
    backend = quiet.backend()
    module = quiet.tensorflow() if backend == "tensorflow" else __import__(backend)
    return module.__version__


# ---- the CPU kernels' switch (TensorFlow's, cpu_kernels.py) ---------------------------------------

def use_cpu_kernels(kernels):
    """cpu_kernels.use: the names of the CPU kernels that steps traced from now on use; `kernels` is True
    (those CYCLEGAN_CPU_KERNELS asks for), False, or the names. Empty under another backend than
    TensorFlow (cpu_kernels.py, which imports TensorFlow, is not imported then) or on a GPU."""
    if quiet.backend() != "tensorflow":
        return ()
    import cpu_kernels

    if isinstance(kernels, bool):
        return tuple(cpu_kernels.use(kernels))
    return tuple(cpu_kernels.use(True, names=kernels))


def timed_with_kernels(kernels, function, steps, warmup=0):
    """timed(function, steps, warmup) with those CPU kernels in use meanwhile (use_cpu_kernels), for a
    step that traces (or retraces) now: a traced step keeps the functions it was traced with."""
    use_cpu_kernels(kernels)
    return timed(function, steps, warmup)


# ---- FLOPs --------------------------------------------------------------------------------------

def conv_macs(model, height, width, batch=1):
    """Multiply-accumulates of one forward pass, from each convolution's kernel and output size."""
    shape = (batch, height, width, 3)
    total = 0
    for layer in model.layers[1:]:
        if isinstance(layer, keras.layers.Add):
            continue
        out = layer.compute_output_shape(shape)
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
            spatial = shape if isinstance(layer, keras.layers.Conv2DTranspose) else out
            kernel = int(np.prod(layer.kernel.shape))
            total += batch * spatial[1] * spatial[2] * kernel
        shape = out
    return total


def iteration_flops(generator, discriminator, size):
    """FLOPs of one iteration as the reference does it (batch 1): six generator passes and their
    backward (2x), discriminators forward + input gradient in the generator step, and forward +
    backward on real and fake in the discriminator step. Counting each translation once makes this
    the minimal work, whatever an implementation recomputes."""
    g = conv_macs(generator, size, size)
    d = conv_macs(discriminator, size, size)
    return 2 * (6 * g * 3 + 2 * d * 2 + 4 * d * 3)


# ---- the project loop ---------------------------------------------------------------------------

def random_images(rng, batch, size):
    return rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)


def loop_iteration(config, rng):
    """A CycleGAN built as train.py builds it on one device (cyclegan.build_gan, whose precision policy
    stays for the other measurements) and one call of its train_step on synthetic images."""
    gan = cyclegan.build_gan(config, distribute.make_strategy("none"))
    pools = [cyclegan.HistoryPool(config.pool_size, rng) for _ in "AB"]
    real_a, real_b = (random_images(rng, config.batch_size, config.image_size) for _ in "AB")
    return gan, lambda: gan.train_step(real_a, real_b, *pools)
