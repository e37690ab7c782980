"""bench.py's TensorFlow-only figures: the fused GradientTape yardstick, the machine's matmul and conv
peaks, generator inference through tf.function (generate.py's), the tf.data input pipeline and the cost
of op determinism. Imported only under the TensorFlow backend.
"""
import json
import os
import subprocess
import sys
import time

import numpy as np

import cyclegan
import data
import distribute
import networks
from benchmark.measure import random_images, timed
from cli import UsageError
from quiet import keras, tensorflow

tf = tensorflow()
BENCH_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench.py")


def set_op_determinism(enabled):
    """Turns TensorFlow's op determinism on or off for the ops run next (the public API only turns it on)."""
    from tensorflow.python.framework import config as framework_config

    (framework_config.enable_op_determinism if enabled else framework_config.disable_op_determinism)()


def measured_peak_gflops(config, repeats=10):
    """Best GFLOP/s of a 1024^3 matmul and of the generator's residual 3x3 convolution, here and now,
    in the compute dtype of the precision policy in force."""
    dtype = keras.mixed_precision.global_policy().compute_dtype
    a = tf.random.normal((1024, 1024), dtype=dtype)
    channels = 4 * config.ngf
    side = config.image_size // 4
    x = tf.random.normal((1, side, side, channels), dtype=dtype)
    k = tf.random.normal((3, 3, channels, channels), dtype=dtype)
    kernels = {
        "matmul": (tf.function(lambda: tf.matmul(a, a), autograph=False), 2 * 1024 ** 3),
        "conv3x3": (tf.function(lambda: tf.nn.conv2d(x, k, 1, "SAME"), autograph=False),
                    2 * side * side * 9 * channels ** 2),
    }
    result = {}
    for name, (function, flops) in kernels.items():
        times = timed(lambda: function().numpy(), repeats, 2)
        result[f"{name}_gflops"] = flops / times.min() / 1e9
    return result


# ---- the fused yardstick ------------------------------------------------------------------------

def fused_step(generator_ab, generator_ba, discriminator_a, discriminator_b, config):
    """The straightforward Keras 3 step: one GradientTape over all four networks, the reference's
    order (generators, then discriminators on the same, detached fakes), one Adam per side."""
    lambda_cycle = config.lambda_cycle
    lambda_identity = lambda_cycle * config.lambda_identity
    generator_vars = generator_ab.trainable_variables + generator_ba.trainable_variables
    discriminator_vars = discriminator_a.trainable_variables + discriminator_b.trainable_variables
    optimizer_g, optimizer_d = networks.adam(config.lr, config.beta1), networks.adam(config.lr, config.beta1)
    optimizer_g.build(generator_vars)
    optimizer_d.build(discriminator_vars)

    def mse(prediction, target):
        return tf.reduce_mean(tf.square(prediction - target))

    def mae(prediction, target):
        return tf.reduce_mean(tf.abs(prediction - target))

    def step(real_a, real_b):
        with tf.GradientTape(persistent=True) as tape:
            fake_b = generator_ab(real_a, training=True)
            fake_a = generator_ba(real_b, training=True)
            generator_loss = (
                mse(discriminator_a(fake_a), 1.0) + mse(discriminator_b(fake_b), 1.0)
                + lambda_cycle * (mae(generator_ba(fake_b), real_a) + mae(generator_ab(fake_a), real_b))
                + lambda_identity * (mae(generator_ba(real_a), real_a) + mae(generator_ab(real_b), real_b)))
            discriminator_loss = 0.5 * (
                mse(discriminator_a(real_a), 1.0) + mse(discriminator_a(tf.stop_gradient(fake_a)), 0.0)
                + mse(discriminator_b(real_b), 1.0) + mse(discriminator_b(tf.stop_gradient(fake_b)), 0.0))
        optimizer_g.apply_gradients(zip(tape.gradient(generator_loss, generator_vars), generator_vars))
        optimizer_d.apply_gradients(
            zip(tape.gradient(discriminator_loss, discriminator_vars), discriminator_vars))
        return generator_loss, discriminator_loss

    return tf.function(step, jit_compile=config.jit)


def fused_iteration(config, rng):
    """One call of the fused yardstick step, over networks of its own."""
    nets = [cyclegan.build_generator(config, f"fused_g{i}") for i in range(2)]
    nets += [networks.build_discriminator(config.ndf, config.netd, config.sigmoid, config.init_gain, f"fused_d{i}")
             for i in range(2)]
    step = fused_step(*nets, config)
    real_a, real_b = (tf.constant(random_images(rng, 1, config.image_size)) for _ in "AB")
    return lambda: [loss.numpy() for loss in step(real_a, real_b)]


# ---- inference ----------------------------------------------------------------------------------

def bench_inference(generator, size, rng, batches=(1, 8), repeats=3):
    """Generator images/s at each batch size, compiled as generate.py runs it (training=False)."""
    translate = tf.function(lambda x: generator(x, training=False), autograph=False)
    result = {}
    for batch in batches:
        images = tf.constant(random_images(rng, batch, size))
        times = timed(lambda: translate(images).numpy(), repeats, 1)
        result[f"batch{batch}_images_per_s"] = batch / float(np.median(times))
    return result


def bench_torch_inference(python, config, batches=(1, 8), repeats=3):
    """PyTorch's images/s for the reference's generator at each batch size (benchmark/torch_layers.py), to
    set beside bench_inference's."""
    from benchmark.layers import bench_torch_layers

    rows = [{"kind": "generator", "name": f"generator, batch {batch}", "shape": [config.image_size] * 2 + [3],
             "ngf": config.ngf, "n_res_blocks": config.n_res_blocks, "batch": batch, "forward_only": True}
            for batch in batches]
    timings = bench_torch_layers(python, rows, repeats, 1)["rows"]
    return {f"batch{batch}_images_per_s": 1000 * batch / row["fwd_ms"] for batch, row in zip(batches, timings)}


def generator_report(config):
    """What generate.py and the machine do in TensorFlow's default threads: generator images/s
    (bench_inference) and the matmul and conv peaks (measured_peak_gflops)."""
    keras.mixed_precision.set_global_policy(distribute.precision_policy(config.mixed_precision))
    generator = cyclegan.build_generator(config, "generator_ab")
    return {"peaks": measured_peak_gflops(config),
            "inference": bench_inference(generator, config.image_size, np.random.default_rng(0))}


def generator_report_in_own_process(argv):
    """generator_report from `bench.py ARGV --generator-only`: the bench's own process runs its ops in
    train.py's thread layout (cpu_kernels.set_training_threads), which is not generate.py's."""
    done = subprocess.run([sys.executable, BENCH_SCRIPT, *argv, "--generator-only"], capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("GENERATOR ")]
    if done.returncode or not lines:
        raise UsageError(f"bench.py --generator-only failed: {done.stderr.strip()[-300:]}")
    return json.loads(lines[-1][len("GENERATOR "):])


# ---- the input pipeline -------------------------------------------------------------------------

def write_jpegs(root, count, size, rng):
    """A dataset of `count` smooth random JPEGs per domain, size x size like horse2zebra's."""
    for domain in "AB":
        folder = os.path.join(root, f"train{domain}")
        os.makedirs(folder)
        for index in range(count):
            coarse = rng.uniform(0, 255, (1, 8, 8, 3)).astype(np.float32)
            noise = rng.normal(0, 8, (size, size, 3)).astype(np.float32)
            image = tf.image.resize(coarse, [size, size], "bicubic")[0] + noise
            encoded = tf.io.encode_jpeg(tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8), quality=90)
            tf.io.write_file(os.path.join(folder, f"{index:04d}.jpg"), encoded)
    return root


def bench_pipeline(dataroot, config, images):
    """Images/s (both domains counted) out of data.train_dataset, after its first batch."""
    dataset, _ = data.train_dataset(data.train_images(dataroot), config.image_size, config.batch_size, seed=0)
    batches = iter(dataset)
    next(batches)
    count = max(1, images // config.batch_size)
    started = time.perf_counter()
    for _ in range(count):
        next(batches)
    return 2 * count * config.batch_size / (time.perf_counter() - started)
