"""The CycleGAN being trained: its four networks, the combined model and three optimizers, built in
the order the Keras 3 freezing trick needs; one training iteration; the history pool of past fakes and
the learning-rate schedule. train.py loops over it, bench.py times it.
"""
from concurrent.futures import ThreadPoolExecutor, wait
import contextlib
import math

import numpy as np

from cli import UsageError
import distribute
import quiet
from quiet import keras

import networks


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


def build_generator(config, name):
    """The generator --netg names: the paper's residual network or pix2pix's U-Net."""
    if config.netg == "unet":
        return networks.build_unet_generator(config.ngf, config.init_gain, name)
    return networks.build_generator(config.ngf, config.n_res_blocks, config.upsample, config.init_gain, name)


class CycleGAN:
    """The four networks, the combined model and their three optimizers, built in the order that
    makes the Keras 3 freezing trick hold (see networks.build_combined)."""

    def __init__(self, config):
        c = config
        self.generator_ab = build_generator(c, "generator_ab")
        self.generator_ba = build_generator(c, "generator_ba")
        self.discriminator_a = networks.build_discriminator(c.ndf, c.netd, c.sigmoid, c.init_gain, "discriminator_a")
        self.discriminator_b = networks.build_discriminator(c.ndf, c.netd, c.sigmoid, c.init_gain, "discriminator_b")
        jit = c.jit or quiet.backend() == "jax"  # JAX runs an uncompiled train function op by op: ~100x slower
        for discriminator in (self.discriminator_a, self.discriminator_b):
            networks.compile_discriminator(discriminator, c.lr, c.beta1, c.gan_mode, jit)
        self.combined = networks.build_combined(
            self.generator_ab, self.generator_ba, self.discriminator_a, self.discriminator_b,
            c.lambda_cycle, c.lambda_identity, c.lr, c.beta1, c.gan_mode, jit)
        self.patch = networks.patch_shape(self.discriminator_a, c.image_size, c.image_size)
        # The two discriminator steps share nothing, so TensorFlow runs them side by side, except across
        # replicas, whose collective ops must be issued in one order by every process. (JAX and PyTorch:
        # one after the other.)
        replicas = quiet.tensorflow().distribute.get_strategy().num_replicas_in_sync if quiet.backend() == "tensorflow" else 0
        self.side_by_side = ThreadPoolExecutor(2, "discriminator-step") if replicas == 1 else None

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

    def train_step(self, real_a, real_b, pool_a, pool_b):
        """One CycleGAN iteration in the reference's order: the generators' step, then each
        discriminator's step on the translations that step made (through its history pool), the two
        at once. Returns the losses by name."""
        logs = self.combined.train_on_batch(
            [real_a, real_b], networks.combined_targets(real_a, real_b, self.patch), return_dict=True)
        losses = {name: logs[f"{name}_loss"] for name in networks.LOSS_TERMS}
        losses["G_total"] = logs["loss"]
        fake_a, fake_b = pool_a.query(logs["fake_a"]), pool_b.query(logs["fake_b"])
        steps = [(self.discriminator_a, real_a, fake_a), (self.discriminator_b, real_b, fake_b)]
        if self.side_by_side is None:
            losses["D_A"], losses["D_B"] = (train_discriminator(*step, self.patch) for step in steps)
        else:
            running = [self.side_by_side.submit(train_discriminator, *step, self.patch) for step in steps]
            wait(running)  # both finish, even when one fails
            losses["D_A"], losses["D_B"] = (future.result() for future in running)
        return losses


def train_discriminator(discriminator, real, fake, patch):
    """One Adam step of a discriminator on real (label 1) and fake (label 0) images together.

    The loss is the mean of the real and fake halves, as in the reference; `patch` is the
    discriminator's output grid for these images (networks.patch_shape). The model is trainable
    only during this call: a train function traced (or retraced) now sees its weights, and the
    combined model, traced while it is frozen, never does.
    """
    shape = (len(real),) + tuple(patch)
    labels = np.concatenate([np.ones(shape, np.float32), np.zeros(shape, np.float32)])
    discriminator.trainable = True
    try:
        return float(discriminator.train_on_batch(np.concatenate([real, fake]), labels))
    finally:
        discriminator.trainable = False


def weight_count(config):
    """The weights of the two generators and two discriminators `config` builds. Each network's count is
    a quadratic in its filters (a convolution's kernel is in x out), so it is read from the networks
    built at 1, 2 and 3 filters and extended to ngf and ndf: a network too large to build is counted
    without building it."""
    def extended(build, filters):
        c1, c2, c3 = (build(f).count_params() for f in (1, 2, 3))
        return (c1 * (filters - 2) * (filters - 3) - 2 * c2 * (filters - 1) * (filters - 3)
                + c3 * (filters - 1) * (filters - 2)) // 2

    generator = extended(lambda f: build_generator(config.replace(ngf=f), "probe"), config.ngf)
    discriminator = extended(lambda f: networks.build_discriminator(f, config.netd, config.sigmoid, config.init_gain,
                                                                    "probe"), config.ndf)
    return 2 * (generator + discriminator)


def activation_elements(model, image_size):
    """The elements of every layer's output when `model` takes one image_size x image_size image: the
    activations a training step keeps for its backward pass. Read from the built network's graph
    (shapes only, nothing computed)."""
    outputs = [tensor for layer in model.layers[1:] for tensor in keras.tree.flatten(layer.output)]
    specs = keras.Model(model.inputs, outputs).compute_output_spec(keras.KerasTensor((1, image_size, image_size, 3)))
    return sum(math.prod(spec.shape) for spec in specs)


def step_activation_bytes(gan, config):
    """The activations one training step keeps for its gradients: the combined model's six generator
    passes (two translations, two reconstructions, two identities) and two discriminator passes, for
    every image of the batch, in the compute precision. A lower bound: the backward pass's transients
    and TensorFlow's own memory (about 0.6 GB) come on top. Measured beside it on a CPU: BENCH["P"]
    estimates 2.4 GB, its peak RSS is 2.7-2.9 GB."""
    elements = (6 * activation_elements(gan.generator_ab, config.image_size)
                + 2 * activation_elements(gan.discriminator_a, config.image_size))
    return elements * config.batch_size * (2 if config.mixed_precision else 4)


def build_gan(config, strategy):
    """The CycleGAN in the run's precision, built and compiled under the strategy's scope."""
    keras.mixed_precision.set_global_policy(distribute.precision_policy(config.mixed_precision))
    replicas = distribute.replicas(strategy)
    if config.batch_size % replicas:
        raise UsageError(f"--batch-size {config.batch_size}: the global batch is split across "
                              f"{replicas} replicas; give a multiple of {replicas} (or --distribute none)")
    if config.jit and replicas > 1:
        raise UsageError(f"--jit: XLA cannot compile a step that spans {replicas} replicas; "
                              "use --jit with --distribute none")
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        gan = CycleGAN(config)
    if replicas > 1:
        for model in (gan.generator_ab, gan.generator_ba, gan.discriminator_a, gan.discriminator_b,
                      gan.combined):
            distribute.split_batches(model, strategy)
    return gan
