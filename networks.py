"""CycleGAN networks: the paper's residual generator, pix2pix's U-Net, the PatchGAN discriminators and the
combined model with the least-squares or vanilla GAN loss (inference.py runs a trained generator).

The residual generator follows the paper's table (c7s1-ngf, d2ngf, d4ngf, R4ngf x N, u2ngf, ungf,
c7s1-3): `ngf=64, n_res_blocks=9` is the paper's 256x256 network, `ngf=32, n_res_blocks=6` the book's
128x128 one (config.py holds the defaults). Every model is fully convolutional, so the same weights run
at any H x W divisible by 4 (the U-Net: by 256; see inference.size_rule).

Keras layers and keras.ops only: a saved model computes the same on any backend and device. Faster
functions of the same maths may stand in for a few plain ones when a step is traced (KERNELS, filled by
cpu_kernels.use); they are never saved.
"""
import functools

import numpy as np

from quiet import keras
from keras import layers, ops

# The combined model's outputs: the six loss terms' predictions, then the two translations.
LOSS_TERMS = ("adversarial_a", "adversarial_b", "cycle_a", "cycle_b", "identity_a", "identity_b")
TRANSLATIONS = ("fake_a", "fake_b")


def build_generator(ngf, n_res_blocks, upsample, init_gain, name="generator"):
    """Residual generator: image in [-1, 1] -> image in [-1, 1], any H x W divisible by 4.

    `upsample="transpose"` uses stride-2 transposed convolutions as the paper; "resize" uses nearest
    upsampling then a 3x3 convolution, which avoids the checkerboard patterns of short trainings.
    """
    if upsample not in ("transpose", "resize"):
        raise ValueError(f"upsample must be 'transpose' or 'resize', got {upsample!r}")
    init = functools.partial(conv_initializer, init_gain)  # a fresh initializer for each layer
    image = keras.Input(shape=(None, None, 3), name=f"{name}_input")
    x = _conv_norm_relu(image, ngf, 7, init, reflect=True, name="c7s1")  # c7s1-ngf
    x = _conv_norm_relu(x, 2 * ngf, 3, init, strides=2, name="down1")  # d2ngf
    x = _conv_norm_relu(x, 4 * ngf, 3, init, strides=2, name="down2")  # d4ngf
    for index in range(n_res_blocks):  # R4ngf x N
        x = _residual_block(x, 4 * ngf, init, name=f"res{index + 1}")
    for index, filters in enumerate((2 * ngf, ngf)):  # u2ngf, ungf
        if upsample == "transpose":
            x = UpConv2D(filters, 3, kernel_initializer=init(), name=f"up{index + 1}_conv")(x)
        else:
            x = layers.UpSampling2D(2, name=f"up{index + 1}_resize")(x)
            x = PaddedConv2D(filters, 3, pad=1, reflect=True, kernel_initializer=init(), name=f"up{index + 1}_conv")(x)
        x = InstanceNormalization(name=f"up{index + 1}_norm")(x)
        x = layers.ReLU(name=f"up{index + 1}_relu")(x)
    x = PaddedConv2D(3, 7, pad=3, reflect=True, kernel_initializer=init(), name="out_conv")(x)  # c7s1-3
    translated = layers.Activation("tanh", dtype="float32", name="out_tanh")(x)
    return keras.Model(image, translated, name=name)


def _conv_norm_relu(x, filters, kernel_size, init, strides=1, reflect=False, name=None):
    x = PaddedConv2D(filters, kernel_size, pad=kernel_size // 2, reflect=reflect, strides=strides,
                     kernel_initializer=init(), name=f"{name}_conv")(x)
    x = InstanceNormalization(name=f"{name}_norm")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _residual_block(x, filters, init, name):
    y = _conv_norm_relu(x, filters, 3, init, reflect=True, name=f"{name}_a")
    y = PaddedConv2D(filters, 3, pad=1, reflect=True, kernel_initializer=init(), name=f"{name}_b_conv")(y)
    y = InstanceNormalization(name=f"{name}_b_norm")(y)
    return layers.Add(name=f"{name}_add")([x, y])


def conv_initializer(gain):
    """The reference's conv weights, N(0, gain) with zero biases (its init_weights('normal', 0.02)): a small
    start keeps early translations from inverting colours. gain 0: Keras' Glorot uniform. One for each
    layer: an unseeded Keras 3 initializer draws its seed once and gives every call the same values."""
    return keras.initializers.RandomNormal(0.0, gain) if gain else "glorot_uniform"


UNET_FILTERS = (1, 2, 4, 8, 8, 8, 8, 8)  # x ngf: the U-Net's eight downsamplings, 256 px down to 1 x 1
UNET_DROPOUT = (5, 6, 7)  # levels whose up block drops out: the three next to the innermost


def build_unet_generator(ngf, init_gain, name="generator"):
    """pix2pix's U-Net, the reference's unet_256 with instance norm and dropout: image in [-1, 1] ->
    image in [-1, 1], H and W multiples of 256.

    Level i (1..8) is a 4x4 stride-2 conv to ngf * UNET_FILTERS[i - 1] (LeakyReLU 0.2 before it from
    level 2 on, instance norm after it on levels 2-7: not on the image, nor on the 1 x 1 bottleneck),
    mirrored by a ReLU and a 4x4 stride-2 transposed conv back to level i - 1's channels (instance norm
    after it, dropout 0.5 on UNET_DROPOUT's levels), whose output is concatenated with level i - 1's
    (the skip connection). Level 1's up conv gives the 3 channels, then tanh. Only that last conv has
    a bias, as in the tutorial's U-Net: the affine norms' betas do the biases' work (a bias before an
    instance norm is cancelled by it).
    """
    init = functools.partial(conv_initializer, init_gain)  # a fresh initializer for each layer
    image = keras.Input(shape=(None, None, 3), name=f"{name}_input")
    levels = len(UNET_FILTERS)
    skips, x = [], image
    for level, multiple in enumerate(UNET_FILTERS, 1):
        if level > 1:
            x = layers.LeakyReLU(0.2, name=f"down{level}_lrelu")(x)
        x = PaddedConv2D(ngf * multiple, 4, pad=1, strides=2, use_bias=False, kernel_initializer=init(),
                         name=f"down{level}_conv")(x)
        if 1 < level < levels:
            x = InstanceNormalization(name=f"down{level}_norm")(x)
        skips.append(x)
    for level in range(levels, 1, -1):
        x = layers.ReLU(name=f"up{level}_relu")(x)
        x = UpConv2D(ngf * UNET_FILTERS[level - 2], 4, use_bias=False, kernel_initializer=init(),
                     name=f"up{level}_conv")(x)
        x = InstanceNormalization(name=f"up{level}_norm")(x)
        if level in UNET_DROPOUT:
            x = layers.Dropout(0.5, name=f"up{level}_dropout")(x)
        x = layers.Concatenate(name=f"up{level}_skip")([skips[level - 2], x])
    x = layers.ReLU(name="up1_relu")(x)
    x = UpConv2D(3, 4, kernel_initializer=init(), name="up1_conv")(x)
    translated = layers.Activation("tanh", dtype="float32", name="out_tanh")(x)
    return keras.Model(image, translated, name=name)


# Stride of each 4x4 convolution before the score layer: the paper's 70x70 PatchGAN (the reference's
# NLayerDiscriminator, n_layers=3: a 30x30 grid at 256 px) and the book's (a 15x15 grid at 256 px).
DISCRIMINATOR_STRIDES = {"patch70": (2, 2, 2, 1), "book": (2, 2, 2, 2)}


def build_discriminator(ndf, netd, sigmoid, init_gain, name="discriminator"):
    """ZeroPadding PatchGAN: one real/fake score per overlapping patch.

    ZeroPadding2D(1) + 4x4 valid convs of ndf, 2ndf, 4ndf, 8ndf filters (strides from
    DISCRIMINATOR_STRIDES[netd]), instance norm from the second on, LeakyReLU 0.2; then ZeroPadding2D(1)
    + a 4x4 stride-1 conv to one channel. Use `patch_shape` rather than hard-coding the grid. The output
    is linear (least-squares or vanilla GAN, which takes logits) unless `sigmoid`.
    """
    init = functools.partial(conv_initializer, init_gain)  # a fresh initializer for each layer
    image = keras.Input(shape=(None, None, 3), name=f"{name}_input")
    x = image
    for index, strides in enumerate(DISCRIMINATOR_STRIDES[netd]):
        x = layers.ZeroPadding2D(1, name=f"conv{index + 1}_pad")(x)
        x = layers.Conv2D(ndf * 2 ** index, 4, strides=strides, padding="valid", kernel_initializer=init(),
                          name=f"conv{index + 1}")(x)
        if index > 0:
            x = InstanceNormalization(name=f"conv{index + 1}_norm")(x)
        x = layers.LeakyReLU(0.2, name=f"conv{index + 1}_lrelu")(x)
    x = layers.ZeroPadding2D(1, name="score_pad")(x)
    x = layers.Conv2D(1, 4, strides=1, padding="valid", kernel_initializer=init(), name="score")(x)
    activation = "sigmoid" if sigmoid else "linear"
    score = layers.Activation(activation, dtype="float32", name=f"score_{activation}")(x)
    return keras.Model(image, score, name=name)


def patch_shape(discriminator, height, width):
    """The discriminator's output grid (h, w, 1) for an input of height x width, read from the model."""
    return tuple(discriminator.compute_output_shape((1, height, width, 3))[1:])


# ---- the reference's layers, in Keras ops ------------------------------------------------------

# Faster functions of the same maths, by the name of the plain function below whose place they take
# ("padded_conv", "up_conv", "instance_norm", "adam_update"), with its arguments and its results to
# float32 rounding. Looked up when a step is traced, so never saved: cpu_kernels.use fills and clears it.
KERNELS = {}


def padded_conv(x, kernel, pad, reflect, stride):
    """PyTorch's Conv2d(padding=pad), or with `reflect` its ReflectionPad2d(pad) then Conv2d: the
    padding, then a 'valid' convolution."""
    x = ops.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="reflect" if reflect else "constant")
    return ops.conv(x, kernel, strides=stride, padding="valid")


def up_conv(x, kernel):
    """PyTorch's stride-2 ConvTranspose2d that doubles H and W (padding=1, at kernel 3 with
    output_padding=1): the full ('valid') transposed convolution without its first (k - 1) // 2 rows
    and columns and as many last ones as make 2 H x 2 W."""
    k = kernel.shape[0]
    start, end = (k - 1) // 2, k - 2 - (k - 1) // 2
    full = ops.conv_transpose(x, kernel, strides=2, padding="valid")
    stop = -end if end else None
    return full[:, start:stop, start:stop]


def instance_norm(x, gamma, beta, epsilon):
    """Each sample and channel normalised over H and W, then scaled by gamma and offset by beta. In
    float32 whatever the compute dtype: under float16, rsqrt's gradient at a small variance overflows
    (1e-5 ** -1.5 is 3e7), and every step's gradients would be inf."""
    x32 = ops.cast(x, "float32")
    mean, variance = ops.moments(x32, axes=[1, 2], keepdims=True)
    scale = gamma * ops.rsqrt(variance + epsilon)
    return ops.cast(x32 * scale + (beta - mean * scale), x.dtype)


def adam_update(optimizer, gradient, variable, learning_rate):
    """Keras' Adam update of one variable."""
    return keras.optimizers.Adam.update_step(optimizer, gradient, variable, learning_rate)


@keras.saving.register_keras_serializable(package="cyclegan")
class PaddedConv2D(layers.Conv2D):
    """A Conv2D over `pad` pixels added on every side: zeros (PyTorch's Conv2d(padding=pad), the
    reference's downsampling, which sees the image symmetrically; Keras' 'same' pads only the bottom
    and right) or with `reflect` a mirror image (ReflectionPad2d + Conv2d: no dark borders)."""

    def __init__(self, filters, kernel_size, pad=1, reflect=False, **kwargs):
        kwargs.pop("padding", None)
        super().__init__(filters, kernel_size, padding="valid", **kwargs)
        self.pad = int(pad)
        self.reflect = bool(reflect)

    def convolution_op(self, inputs, kernel):
        return KERNELS.get("padded_conv", padded_conv)(inputs, kernel, self.pad, self.reflect, self.strides[0])

    def compute_output_shape(self, input_shape):
        def shrink(size):
            return None if size is None else (size + 2 * self.pad - self.kernel_size[0]) // self.strides[0] + 1

        batch, height, width, _ = input_shape
        return batch, shrink(height), shrink(width), self.filters

    def get_config(self):
        return {**super().get_config(), "pad": self.pad, "reflect": self.reflect}


@keras.saving.register_keras_serializable(package="cyclegan")
class UpConv2D(layers.Conv2DTranspose):
    """A stride-2 transposed convolution to 2 H x 2 W as PyTorch's ConvTranspose2d(padding=1,
    output_padding=1) at kernel 3 (the residual generator's) and ConvTranspose2d(padding=1) at kernel 4
    (the U-Net's): the transpose of a PaddedConv2D(pad=1), so the reference's upsampling (`up_conv`)."""

    def __init__(self, filters, kernel_size=3, **kwargs):
        kwargs.update(strides=2, padding="valid")
        super().__init__(filters, kernel_size, **kwargs)

    def call(self, inputs):
        outputs = KERNELS.get("up_conv", up_conv)(inputs, self.kernel)
        return outputs + self.bias if self.use_bias else outputs

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        double = lambda size: None if size is None else 2 * size
        return batch, double(height), double(width), self.filters


@keras.saving.register_keras_serializable(package="cyclegan")
class InstanceNormalization(layers.Layer):
    """PyTorch's InstanceNorm2d(affine=True), channels-last (`instance_norm`): GroupNormalization(groups=-1)'s
    maths with the same gamma/beta weights, without its reshape into groups."""

    def __init__(self, epsilon=1e-5, **kwargs):
        super().__init__(autocast=False, **kwargs)  # gamma and beta stay float32 under mixed precision
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        channels = input_shape[-1]
        self.gamma = self.add_weight(shape=(channels,), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta")

    def call(self, inputs):
        return KERNELS.get("instance_norm", instance_norm)(inputs, self.gamma, self.beta, self.epsilon)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


# ---- training: losses, optimizers, the combined model -------------------------------------------

def adam(learning_rate, beta_1):
    """Keras' Adam, saved as such; each variable's update is KERNELS' "adam_update" where one is set,
    looked up when the train step is traced."""
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate, beta_1=beta_1)

    def update_step(gradient, variable, learning_rate):
        return KERNELS.get("adam_update", adam_update)(optimizer, gradient, variable, learning_rate)

    optimizer.update_step = update_step
    return optimizer


def gan_loss(gan_mode):
    """The adversarial loss of discriminator scores against 1 (real) or 0 (fake), averaged over the
    patches: least squares ("lsgan", the paper's) or binary cross-entropy of the scores taken as
    logits ("vanilla", the reference's BCEWithLogitsLoss)."""
    if gan_mode == "lsgan":
        return "mse"
    if gan_mode == "vanilla":
        return keras.losses.BinaryCrossentropy(from_logits=True)
    raise ValueError(f"gan_mode must be 'lsgan' or 'vanilla', got {gan_mode!r}")


def compile_discriminator(discriminator, learning_rate, beta_1, gan_mode, jit_compile=False):
    """`gan_mode`'s loss (gan_loss) on real (1) / fake (0) patches, with an Adam of its own.

    The optimizer's slots are built here, while the discriminator is trainable; its train function
    is traced on the first `train_on_batch`, which `train.train_discriminator` runs trainable too.
    """
    discriminator.trainable = True
    discriminator.compile(optimizer=adam(learning_rate, beta_1), loss=gan_loss(gan_mode),
                          jit_compile=jit_compile)
    discriminator.optimizer.build(discriminator.trainable_variables)


@keras.saving.register_keras_serializable(package="cyclegan")
class CombinedModel(keras.Model):
    """A functional model whose train_on_batch also returns its loss-free outputs (TRANSLATIONS) by
    name: the translations the generators' step made, ready for the discriminators' step."""

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        logs = super().compute_metrics(x, y, y_pred, sample_weight)
        outputs = dict(zip(self.output_names, y_pred))
        return {**logs, **{name: outputs[name] for name in TRANSLATIONS}}


def build_combined(generator_ab, generator_ba, discriminator_a, discriminator_b,
                   lambda_cycle, lambda_identity, learning_rate, beta_1, gan_mode, jit_compile=False):
    """The generators' training model: real A and real B in, the six loss terms' predictions out,
    then the two translations G_BA(b) and G_AB(a), which carry no loss.

    Outputs: [D_A(G_BA(b)), D_B(G_AB(a)), G_BA(G_AB(a)), G_AB(G_BA(b)), G_BA(a), G_AB(b), G_BA(b),
    G_AB(a)], trained (see `combined_targets`) with `gan_mode`'s loss (gan_loss) against ones for the
    adversarial terms and mae against a / b / a / b for the cycle and identity terms. Its
    train_on_batch returns the translations as logs["fake_a"] and logs["fake_b"], so the
    discriminators train on them without translating again, as the reference does. Both
    discriminators are frozen for this model: they are set non-trainable before it is compiled and
    before its train function is first traced (Keras 3 reads the flag then).
    """
    discriminator_a.trainable = False
    discriminator_b.trainable = False
    real_a = keras.Input(shape=(None, None, 3), name="real_a")
    real_b = keras.Input(shape=(None, None, 3), name="real_b")
    fake_b, fake_a = generator_ab(real_a), generator_ba(real_b)
    predictions = [discriminator_a(fake_a), discriminator_b(fake_b), generator_ba(fake_b), generator_ab(fake_a),
                   generator_ba(real_a), generator_ab(real_b), fake_a, fake_b]
    outputs = [layers.Identity(name=name, dtype="float32")(prediction)
               for name, prediction in zip(LOSS_TERMS + TRANSLATIONS, predictions)]
    combined = CombinedModel([real_a, real_b], outputs, name="combined")
    combined.compile(
        optimizer=adam(learning_rate, beta_1),
        loss=[gan_loss(gan_mode), gan_loss(gan_mode), "mae", "mae", "mae", "mae", None, None],
        loss_weights=[1.0, 1.0, lambda_cycle, lambda_cycle,
                      lambda_cycle * lambda_identity, lambda_cycle * lambda_identity, None, None],
        jit_compile=jit_compile,
    )
    combined.optimizer.build(combined.trainable_variables)
    if getattr(combined, "_distribute_strategy", None) is None:  # under tf.distribute Keras makes them itself
        build_loss_trackers(combined)
    return combined


def build_loss_trackers(combined):
    """Make the combined model's per-term loss trackers now, by one loss on placeholder values.

    Keras makes them on the first trace of train_on_batch otherwise, and a variable made in a trace
    makes tf.function trace the whole step again and keep both graphs: at 256x256 about 250 MB more
    memory and a slower first step. train_on_batch resets the trackers, so the values do not count.
    """
    placeholder = np.zeros((1, 1, 1, 1), np.float32)
    combined.compute_loss(y=[placeholder] * len(LOSS_TERMS) + [None] * len(TRANSLATIONS),
                          y_pred=[placeholder] * (len(LOSS_TERMS) + len(TRANSLATIONS)))


def combined_targets(real_a, real_b, patch):
    """The combined model's targets for one batch: ones for both discriminators' `patch` grids, the
    real images for the cycle and identity terms, none for the translations."""
    ones = np.ones((len(real_a),) + tuple(patch), np.float32)
    return [ones, ones, real_a, real_b, real_a, real_b, None, None]
