"""The CPU kernels: faster arrangements of networks.py's maths for TensorFlow on a CPU in float32, each a
named entry behind one switch (`use`), and the thread layout of a training step.

networks.py computes with Keras ops only. `use(True)` puts this module's functions in networks.KERNELS,
where the layers and the optimizer look them up when a step is traced. Each computes what the plain
function computes, forward and backward, to float32 rounding (tests/test_cpu_kernels.py), and hands the
work back to it where it does not apply (float16, bfloat16, a GPU tensor). Nothing here is ever saved:
a model saved with the kernels on loads and computes the same with them off, under any backend. They
were chosen by timing oneDNN's kernels on a 2-core Xeon with one thread per op (training's layout at the
book's size); docs/performance.md has the measurements.

The thread layout (`set_training_threads`) is not behind the switch: it must act before TensorFlow
starts, and TF_NUM_INTRAOP_THREADS or TF_NUM_INTEROP_THREADS already turn it off.
"""
import os

import numpy as np

from cli import UsageError
import networks
from quiet import backend, tensorflow

tf = tensorflow()

# Each kernel, and the plain function of networks.py (a networks.KERNELS key) whose work it arranges.
KERNEL_HOOKS = {
    "winograd": "padded_conv",  # 3x3 convolutions by Winograd's F(2x2, 3x3)
    "space_to_depth": "padded_conv",  # convolutions to or from few channels folded into 2x2 blocks
    "mirror_pad": "padded_conv",  # reflection padding as two concatenations
    "padded_again": "padded_conv",  # large padded inputs padded again for the gradients, not kept
    "flipped_up_conv": "up_conv",  # the up convolution as a flipped 'same' one, with its own gradients
    "fused_instance_norm": "instance_norm",  # a batch of one by the fused batch-norm kernel
    "fused_adam": "adam_update",  # Adam's update as one ResourceApplyAdam
}
IN_USE = frozenset()  # the kernels `use` turned on, read by the functions below when a step is traced


def use(enabled=True, names=None):
    """Turns the CPU kernels on (where they apply: the TensorFlow backend with no GPU visible) or off;
    returns the names now in use: CYCLEGAN_CPU_KERNELS's (`requested`), or `names` (bench.py --ablate).
    Call it before the networks are first traced: a traced step keeps the functions it was traced with."""
    global IN_USE
    applies = enabled and backend() == "tensorflow" and not tf.config.list_physical_devices("GPU")
    IN_USE = frozenset((requested() if names is None else names) if applies else ())
    faster = {"padded_conv": padded_conv, "up_conv": flipped_up_conv, "instance_norm": fused_instance_norm,
              "adam_update": fused_adam_update}
    networks.KERNELS.clear()
    networks.KERNELS.update({KERNEL_HOOKS[name]: faster[KERNEL_HOOKS[name]] for name in IN_USE})
    return tuple(name for name in KERNEL_HOOKS if name in IN_USE)


def requested():
    """The kernels CYCLEGAN_CPU_KERNELS asks for: all where it is unset or "auto", none for "off" or "0",
    else the comma-separated names it lists (KERNEL_HOOKS', for ablations)."""
    value = os.environ.get("CYCLEGAN_CPU_KERNELS", "auto").strip().lower()
    if value in ("", "auto"):
        return tuple(KERNEL_HOOKS)
    if value in ("off", "0"):
        return ()
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in KERNEL_HOOKS]
    if unknown:
        raise UsageError(f"CYCLEGAN_CPU_KERNELS={value}: no kernel {', '.join(unknown)}; give auto, off or "
                         f"a comma-separated list of {', '.join(KERNEL_HOOKS)}")
    return tuple(names)


def on_cpu_in_float32(*tensors):
    """Where the kernels were measured and hold to float32 rounding: float32 tensors not on a GPU."""
    return all(t.dtype == tf.float32 and "GPU" not in t.device.upper() for t in tensors)


# Sizes, not tuned timings: FEW_CHANNELS parts the convolutions to and from 3 colours from the rest (ngf
# is 32 or 64), and PADDED_AGAIN_BYTES trades memory (what a pass keeps) against a few ms of copying.
FEW_CHANNELS = 4  # convolutions to (from) this few channels are rearranged for oneDNN's faster kernels
PADDED_AGAIN_BYTES = 4 * 2 ** 20  # padded inputs from this size on are padded again for the gradients

# Winograd's F(2x2, 3x3) (Lavin and Gray, 2016): a 4x4 input tile d and a 3x3 kernel g make the 2x2
# outputs A^T [(G g G^T) * (B^T d B)] A, 16 multiplications instead of 36. As Kronecker products they act
# on a tile's 16 elements (row by row) at once.
_B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32)
_A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)
WINOGRAD_INPUT = np.kron(_B_T, _B_T)  # 16 x 16
WINOGRAD_KERNEL = np.kron(_G, _G)  # 16 x 9
WINOGRAD_OUTPUT = np.kron(_A_T, _A_T)  # 4 x 16: the 2x2 outputs, row by row


def padded_conv(x, kernel, pad, reflect, stride):
    """networks.padded_conv (x padded by `pad` pixels, zeros or with `reflect` a mirror image, then a
    'valid' convolution), with its gradients, arranged for oneDNN's faster kernels by the kernels in use
    (one thread per op, training's layout on a 2-core Xeon):
    - winograd: 3x3 kernels (the residual blocks') take Winograd's F(2x2, 3x3), forward and both
      gradients (`winograd_conv3x3`, `winograd_conv3x3_gradients`): 2.25x fewer multiplications, as
      batched matrix products. On one thread the paper's 64x64x256 went from 34 to 20 ms forward and
      from 67 to 45 ms for the two gradients; the book's 32x32x128 from 2.6 to 2.0 and 5.6 to 5.1 ms. A
      mirror image is read straight from the input by the tiles' gather: no padding op forward or
      backward, and about a third fewer graph nodes per convolution.
    - space_to_depth: a convolution to FEW_CHANNELS outputs or fewer (the generator's last one, 64 -> 3
      colours) runs at a fifth of oneDNN's speed. Its forward pass goes through 2x2 blocks folded into
      channels (`valid_conv_by_space_to_depth`), its kernel gradient with the two roles swapped
      (`kernel_gradient_by_swapped_roles`); from FEW_CHANNELS inputs or fewer (the first one) the input
      gradient is likewise a folded convolution.
    - mirror_pad: reflection padding as concatenations (`mirror_pad`), 2-2.5x TensorFlow's MirrorPad.
    - padded_again: a padded input of PADDED_AGAIN_BYTES or more is padded again for the gradients
      instead of kept from the forward pass to the backward one. The paper's generator then holds about
      90 MB less per pass at 256x256 (a training step runs six), for a few ms of copying; the book's
      128x128 network keeps its small ones.
    """
    kernel = tf.convert_to_tensor(kernel)
    paddings = [[0, 0], [pad, pad], [pad, pad], [0, 0]]
    strides = [1, stride, stride, 1]
    height, width, channels, outputs = kernel.shape
    odd_square = stride == 1 and height == width and height % 2 == 1
    winograd = "winograd" in IN_USE and odd_square and height == 3 and min(channels, outputs) > FEW_CHANNELS
    few_outputs = "space_to_depth" in IN_USE and odd_square and outputs <= FEW_CHANNELS
    few_inputs = "space_to_depth" in IN_USE and odd_square and channels <= FEW_CHANNELS
    mirrored = "mirror_pad" in IN_USE and reflect and pad
    folded = pad if winograd and reflect else 0  # the mirror image is read by Winograd's tile gather
    again = "padded_again" in IN_USE and pad and not folded and padded_bytes(x, pad) >= PADDED_AGAIN_BYTES
    arranged = winograd or few_outputs or few_inputs or mirrored or again
    if not arranged or not on_cpu_in_float32(x, kernel):
        return networks.padded_conv(x, kernel, pad, reflect, stride)

    def padding(x):
        return mirror_pad(x, pad) if mirrored else tf.pad(x, paddings, "REFLECT" if reflect else "CONSTANT")

    @tf.custom_gradient
    def conv(x, kernel):
        padded = padding(x) if pad and not folded else x
        if winograd:
            y = winograd_conv3x3(padded, kernel, folded)
        elif few_outputs:
            y = valid_conv_by_space_to_depth(padded, kernel)
        else:
            y = tf.nn.conv2d(padded, kernel, strides, "VALID")

        def gradients(upstream):
            source = padded
            if again:
                with tf.control_dependencies([upstream]):  # padded when needed, not kept from the forward pass
                    source = padding(x)
            if winograd:
                d_padded, d_kernel = winograd_conv3x3_gradients(source, upstream, kernel, folded)
            else:
                if few_inputs:  # the full convolution of the upstream gradient by the kernel turned round
                    d_padded = valid_conv_by_space_to_depth(padded_for_full_conv(upstream, kernel.shape),
                                                            turned(kernel))
                else:
                    d_padded = tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(source), filter=kernel,
                                                              out_backprop=upstream, strides=strides, padding="VALID")
                if few_outputs:
                    d_kernel = kernel_gradient_by_swapped_roles(source, upstream, kernel.shape)
                else:
                    d_kernel = tf.raw_ops.Conv2DBackpropFilter(input=source, filter_sizes=tf.shape(kernel),
                                                               out_backprop=upstream, strides=strides, padding="VALID")
            if not pad or folded:
                return d_padded, d_kernel
            if reflect:
                return tf.raw_ops.MirrorPadGrad(input=d_padded, paddings=paddings, mode="REFLECT"), d_kernel
            return d_padded[:, pad:-pad, pad:-pad], d_kernel

        return y, gradients

    return conv(x, kernel)


def padded_bytes(x, pad):
    """The bytes of x padded by `pad` pixels on every side; 0 where the graph does not know x's shape."""
    batch, height, width, channels = x.shape
    if None in x.shape:
        return 0
    return batch * (height + 2 * pad) * (width + 2 * pad) * channels * x.dtype.size


def fused_instance_norm(x, gamma, beta, epsilon):
    """networks.instance_norm of a batch of one, the reference's setting: batch norm over the sample's
    own statistics is exactly instance norm, and TensorFlow's fused batch-norm kernels do it and its
    gradient in one pass each, about twice as fast as the moments."""
    gamma, beta = tf.convert_to_tensor(gamma), tf.convert_to_tensor(beta)
    if x.shape[0] != 1 or not on_cpu_in_float32(x, gamma, beta):
        return networks.instance_norm(x, gamma, beta, epsilon)
    empty = tf.zeros([0])
    normalised, *_ = tf.raw_ops.FusedBatchNormV3(x=x, scale=gamma, offset=beta, mean=empty, variance=empty,
                                                 epsilon=epsilon, data_format="NHWC", is_training=True)
    return normalised


def fused_adam_update(optimizer, gradient, variable, learning_rate):
    """networks.adam_update (Keras' Adam on one variable) by TensorFlow's one-kernel ResourceApplyAdam
    instead of about fifteen small ops: the same update, a fraction of the per-step overhead of the ~170
    small variables (biases, norm scales) of a CycleGAN."""
    gradient = tf.convert_to_tensor(gradient)
    if optimizer.amsgrad or variable.dtype != "float32" or not on_cpu_in_float32(gradient):
        return networks.adam_update(optimizer, gradient, variable, learning_rate)
    step = tf.cast(optimizer.iterations + 1, tf.float32)
    index = optimizer._get_variable_index(variable)
    beta_1, beta_2 = tf.constant(optimizer.beta_1, tf.float32), tf.constant(optimizer.beta_2, tf.float32)
    tf.raw_ops.ResourceApplyAdam(
        var=variable.handle, m=optimizer._momentums[index].value.handle,
        v=optimizer._velocities[index].value.handle, beta1_power=tf.pow(beta_1, step),
        beta2_power=tf.pow(beta_2, step), lr=tf.cast(learning_rate, tf.float32), beta1=beta_1, beta2=beta_2,
        epsilon=tf.constant(optimizer.epsilon, tf.float32), grad=gradient)


def flipped_up_conv(x, kernel):
    """networks.up_conv (PyTorch's stride-2 up convolution) as the stride-2 'same' transposed convolution
    of x and the kernel flipped in H and W, flipped back: 'same' pads the end, so flipped it pads the
    reference's start, and TensorFlow runs it and its gradients on oneDNN's kernels rather than Eigen's
    (forward + backward on one thread: P's two up convolutions 6 % faster, S's 14 and 27 %). Its
    gradients flip x again when they need it rather than keep the flipped copy from the forward pass:
    12 MB less per pass of the paper's generator, six passes in a training step."""
    kernel = tf.convert_to_tensor(kernel)
    if not on_cpu_in_float32(x, kernel):
        return networks.up_conv(x, kernel)
    flip = lambda t: tf.reverse(t, [1, 2])
    batch, height, width, _ = sizes(x)
    strides = [1, 2, 2, 1]

    @tf.custom_gradient
    def up_conv(x, kernel):
        turned = tf.reverse(kernel, [0, 1])
        y = tf.nn.conv2d_transpose(flip(x), turned, [batch, 2 * height, 2 * width, kernel.shape[2]], strides, "SAME")

        def gradients(upstream):
            with tf.control_dependencies([upstream]):  # flipped when needed, not kept from the forward pass
                flipped = flip(x)
            d_y = flip(upstream)
            d_x = flip(tf.nn.conv2d(d_y, turned, strides, "SAME"))
            d_turned = tf.raw_ops.Conv2DBackpropFilter(input=d_y, filter_sizes=tf.shape(kernel), out_backprop=flipped,
                                                       strides=strides, padding="SAME")
            return d_x, tf.reverse(d_turned, [0, 1])

        return flip(y), gradients

    return up_conv(x, kernel)


def mirror_pad(x, pad):
    """tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], "REFLECT") as two concatenations, of the
    mirrored rows and then columns: on a CPU thread 2-2.5x as fast as TensorFlow's MirrorPad kernel
    (64x64x256 by 1: 2.5 against 1.3 ms; 256x256x64 by 3: 9.2 against 3.8 ms)."""
    mirrored = lambda lines, axis: lines if pad == 1 else tf.reverse(lines, [axis])
    x = tf.concat([mirrored(x[:, 1:pad + 1], 1), x, mirrored(x[:, -pad - 1:-1], 1)], 1)
    return tf.concat([mirrored(x[:, :, 1:pad + 1], 2), x, mirrored(x[:, :, -pad - 1:-1], 2)], 2)


def winograd_conv3x3(x, kernel, pad=0):
    """tf.nn.conv2d(x, kernel, 1, "VALID") for a 3x3 kernel, of x mirror-padded by `pad` pixels, by
    Winograd's F(2x2, 3x3): the input's 4x4 tiles at stride 2 and the kernel taken to the Winograd
    domain, one matrix product per domain element (16 of C x K, batched), and back to 2x2 blocks of
    outputs. Within float32 rounding of the direct sum (the tests' tolerance)."""
    batch, height, width, _ = sizes(x)
    out_height, out_width = height + 2 * pad - 2, width + 2 * pad - 2
    tiles = winograd_tiles(x, pad)
    with tf.control_dependencies([tiles]):  # made when needed: else every layer's is made at the step's start
        transformed = winograd_kernel(kernel)
    blocks = winograd_outputs(tf.matmul(tiles, transformed), batch, (out_height + 1) // 2, (out_width + 1) // 2)
    return cropped(blocks, out_height, out_width)


def winograd_conv3x3_gradients(x, upstream, kernel, pad=0):
    """The input and kernel gradients of `winograd_conv3x3(x, kernel, pad)` for the upstream gradient,
    by the adjoints of its steps. Each takes the upstream gradient to the Winograd domain itself: a
    shared one (16 MB at the paper's size) would wait in memory with x for the kernel gradient, which the
    backward pass, running on along the input gradients, makes later (1.4 GB more at the paper's size)."""
    _, height, width, _ = sizes(upstream)
    upstream = even_sized(upstream, height, width)
    with tf.control_dependencies([x]):  # its own domain gradient, not merged with the input gradient's
        domain_upstream = winograd_outputs_adjoint(upstream)
    with tf.control_dependencies([upstream]):  # tiled when needed, not as soon as x is there, in the forward pass
        tiles = winograd_tiles(x, pad)
    d_transformed = tf.matmul(tiles, domain_upstream, transpose_a=True)
    d_kernel = tf.matmul(WINOGRAD_KERNEL, tf.reshape(d_transformed, [16, -1]), transpose_a=True)
    domain_upstream = winograd_outputs_adjoint(upstream)
    with tf.control_dependencies([domain_upstream]):
        transformed = winograd_kernel(kernel)
    d_x = winograd_tiles_adjoint(tf.matmul(domain_upstream, transformed, transpose_b=True), sizes(x), pad)
    return d_x, tf.reshape(d_kernel, kernel.shape)


def sizes(x):
    """x's shape, as Python ints where the graph knows them (no shape ops), else as scalar tensors."""
    return [size if size is not None else tf.shape(x)[axis] for axis, size in enumerate(x.shape)]


def even_sized(x, height, width):
    """x with a row (column) of zeros at the end when `height` (`width`) is odd."""
    if isinstance(height, int) and isinstance(width, int) and not height % 2 and not width % 2:
        return x
    return tf.pad(x, [[0, 0], [0, height % 2], [0, width % 2], [0, 0]])


def cropped(x, height, width):
    """x's first `height` rows and `width` columns (no op where that is all of it)."""
    if x.shape[1] == height and x.shape[2] == width:
        return x
    return x[:, :height, :width]


def winograd_tile_index(batch, height, width, pad):
    """The 4x4 tiles at stride 2 of x (batch, height, width, c) mirror-padded by `pad` pixels, with a row
    (column) of zeros at the end where that makes an odd-sized output: for x flattened to rows
    (batch height width, c) and a row of zeros after them, the rows of the tiles' 16 elements (a, b),
    (16 n t s,) tile by tile. Also whether any is the row of zeros. Constant (numpy) for known sizes."""
    known = all(isinstance(size, int) for size in (batch, height, width))
    xp, arange = (np, np.arange) if known else (tf, tf.range)

    def along(values, axis):  # shaped to broadcast over (a, b, n, t, s)
        return xp.reshape(values, [-1 if k == axis else 1 for k in range(5)])

    def source(size, element_axis, tile_axis):  # each element's row (column) of x, and whether it is in x
        position = along(2 * arange((size + 2 * pad - 1) // 2), tile_axis) + along(arange(4), element_axis) - pad
        mirrored = abs(position)
        return xp.where(mirrored < size, mirrored, 2 * size - 2 - mirrored), position < size + pad

    rows, in_rows = source(height, 0, 3)
    columns, in_columns = source(width, 1, 4)
    flat = (along(arange(batch), 2) * height + rows) * width + columns
    index = xp.reshape(xp.where(in_rows & in_columns, flat, batch * height * width), [-1])
    if known:
        return index.astype(np.int32), bool((height + 2 * pad) % 2 or (width + 2 * pad) % 2)
    return index, True


def winograd_tiles(x, pad=0):
    """x (n, h, w, c), mirror-padded by `pad`, as its n t s overlapping 4x4 tiles at stride 2 in the
    Winograd domain: (16, n t s, c). The padding is in the gather's index, never a tensor of its own."""
    batch, height, width, channels = sizes(x)
    index, zeros = winograd_tile_index(batch, height, width, pad)
    rows = tf.reshape(x, [-1, channels])
    if zeros:
        rows = tf.concat([rows, tf.zeros([1, channels], x.dtype)], 0)
    elements = tf.gather(rows, index)
    return tf.reshape(tf.matmul(WINOGRAD_INPUT, tf.reshape(elements, [16, -1])), [16, -1, channels])


def winograd_tiles_adjoint(domain, shape, pad=0):
    """The adjoint of `winograd_tiles`: (16, n t s, c) back to x's `shape` (n, h, w, c), where
    overlapping tiles' (and mirrored) elements add up."""
    batch, height, width, channels = shape
    elements = tf.matmul(WINOGRAD_INPUT, tf.reshape(domain, [16, -1]), transpose_a=True)
    index, zeros = winograd_tile_index(batch, height, width, pad)
    flat = tf.scatter_nd(tf.reshape(index, [-1, 1]), tf.reshape(elements, [-1, channels]),
                         [batch * height * width + int(zeros), channels])
    return tf.reshape(flat[:-1] if zeros else flat, [batch, height, width, channels])


def winograd_kernel(kernel):
    """A 3x3 kernel (3, 3, c, k) in the Winograd domain: (16, c, k)."""
    channels, outputs = kernel.shape[2:]
    return tf.reshape(tf.matmul(WINOGRAD_KERNEL, tf.reshape(kernel, [9, -1])), [16, channels, outputs])


def winograd_outputs(domain, batch, tiles_down, tiles_across):
    """Products in the Winograd domain (16, n t s, k) as the outputs (n, 2t, 2s, k) of the n t s tiles."""
    outputs = domain.shape[2]
    blocks = tf.matmul(WINOGRAD_OUTPUT, tf.reshape(domain, [16, -1]))  # (row, column) in the block, n t s k
    blocks = tf.reshape(blocks, [2, 2, batch, tiles_down, tiles_across, outputs])
    return tf.reshape(tf.transpose(blocks, [2, 3, 0, 4, 1, 5]), [batch, 2 * tiles_down, 2 * tiles_across, outputs])


def winograd_outputs_adjoint(upstream):
    """The adjoint of `winograd_outputs`: a gradient (n, 2t, 2s, k) in the Winograd domain (16, n t s, k)."""
    batch, height, width, outputs = sizes(upstream)
    blocks = tf.reshape(upstream, [batch, height // 2, 2, width // 2, 2, outputs])
    blocks = tf.reshape(tf.transpose(blocks, [2, 4, 0, 1, 3, 5]), [4, -1])
    return tf.reshape(tf.matmul(WINOGRAD_OUTPUT, blocks, transpose_a=True), [16, -1, outputs])


def turned(kernel):
    """The kernel flipped in H and W, its in and out channels swapped: the transposed convolution's."""
    return tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])


def valid_conv_by_space_to_depth(x, kernel):
    """tf.nn.conv2d(x, kernel, 1, "VALID") for a square odd kernel, as a convolution of x's 2x2 blocks
    folded into channels (tf.nn.space_to_depth) by a kernel that makes each 2x2 block of outputs at once.
    Four times the channels in and out: where a convolution has few outputs, oneDNN's kernels run it
    2.5x faster so (the generator's 7x7 one to 3 colours: 57 against 21 ms at 256x256x64), for 30 %
    more multiplications."""
    size, _, channels, outputs = kernel.shape
    taps = (size + 2) // 2  # the folded kernel's height and width
    # folded[a, b, (p, q, c), (r, s, o)] = kernel[2a + p - r, 2b + q - s, c, o], zero outside the kernel
    index = np.array([[[2 * a + p - r + 1 for r in (0, 1)] for p in (0, 1)] for a in range(taps)])
    edged = tf.pad(kernel, [[1, 2 * taps - size], [1, 2 * taps - size], [0, 0], [0, 0]])
    folded = tf.gather(tf.gather(edged, index, axis=0), index, axis=3)  # a, p, r, b, q, s, c, o
    folded = tf.reshape(tf.transpose(folded, [0, 3, 1, 4, 6, 2, 5, 7]), [taps, taps, 4 * channels, 4 * outputs])
    height, width = tf.shape(x)[1] - size + 1, tf.shape(x)[2] - size + 1
    # zeros at the end for an odd output size, which makes one row (column) of blocks too many, cut off
    x = tf.pad(x, [[0, 0], [0, height % 2], [0, width % 2], [0, 0]])
    y = tf.nn.depth_to_space(tf.nn.conv2d(tf.nn.space_to_depth(x, 2), folded, 1, "VALID"), 2)
    return y[:, :height, :width]


def kernel_gradient_by_swapped_roles(x, upstream, kernel_shape):
    """Conv2DBackpropFilter(x, upstream) of a stride-1 'valid' convolution, with the two roles swapped:
    the upstream gradient, zero-padded by the kernel's size - 1, is the input, and x the gradient. That
    yields the kernel turned round (`turned`); with few output channels it is oneDNN's fast direction
    (the generator's last convolution: 54 against 11 ms at 256x256x64)."""
    height, width, channels, outputs = kernel_shape
    swapped = tf.raw_ops.Conv2DBackpropFilter(input=padded_for_full_conv(upstream, kernel_shape),
                                              filter_sizes=[height, width, outputs, channels],
                                              out_backprop=x, strides=[1, 1, 1, 1], padding="VALID")
    return turned(swapped)


def padded_for_full_conv(x, kernel_shape):
    """x with kernel size - 1 zeros on every side: a 'valid' convolution of it is the full one."""
    height, width = kernel_shape[:2]
    return tf.pad(x, [[0, 0], [height - 1, height - 1], [width - 1, width - 1], [0, 0]])


# ---- the thread layout of a training step on a CPU ---------------------------------------------

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
    alone: under another backend than TensorFlow, on a GPU, where the user sets TF_NUM_INTRAOP_THREADS or TF_NUM_INTEROP_THREADS, and once
    TensorFlow has started in another layout (it makes its thread pools then: call this before any op runs).
    """
    if backend() != "tensorflow" or {"TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"} & set(os.environ):
        return None
    if tf.config.list_physical_devices("GPU"):
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
