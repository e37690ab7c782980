"""Padded convolutions arranged for the kernels TensorFlow runs fastest, with their gradients.

networks.PaddedConv2D calls `padded_conv`. Every function here computes what tf.pad then a 'valid'
tf.nn.conv2d computes, forward and backward, to float32 rounding (tests/test_networks.py checks them
against TensorFlow's own gradients); only the arrangement of the work differs, chosen by timing oneDNN's
kernels on a CPU with one thread per op (training's layout).
"""
import numpy as np

from distribute import tf

BLOCKED_KERNEL_BYTES = 2 * 2 ** 20  # a core's L2 cache on current server CPUs (1-2 MiB)
FEW_CHANNELS = 4  # convolutions to (from) this few channels are rearranged for oneDNN's faster kernels
PADDED_AGAIN_BYTES = 4 * 2 ** 20  # padded inputs from this size on are padded again for the gradients


def padded_conv(x, kernel, pad, reflect, stride):
    """tf.nn.conv2d of x padded by `pad` pixels (zeros, or a mirror image with `reflect`), 'valid'.

    Its gradients are the convolution's usual two. In float32 on a CPU the sums are arranged for
    oneDNN's faster kernels, measured on a 2-core Xeon (one thread per op, training's layout):
    - Memory: a padded input of PADDED_AGAIN_BYTES or more is padded again for the gradients instead of
      kept from the forward pass to the backward one. The paper's generator then holds about 90 MB less
      per pass at 256x256 (a training step runs six), for a few ms of copying; the book's 128x128
      network keeps its small ones.
    - Large kernels: TensorFlow gives oneDNN's forward convolution the weights in their plain HWIO
      layout, and its backward-data convolution a blocked copy. Once a kernel outgrows a core's L2 cache
      (the paper's residual blocks: 3x3x256x256, 2.4 MB) the blocked one is faster, so such a kernel's
      stride-1 forward pass is run as that backward-data convolution (`valid_conv_by_backward_data`).
    - Few channels: a convolution to FEW_CHANNELS outputs or fewer (the generator's last one, 64 -> 3
      colours) runs at a fifth of oneDNN's speed. Its forward pass goes through 2x2 blocks folded into
      channels (`valid_conv_by_space_to_depth`), its kernel gradient with the two roles swapped
      (`kernel_gradient_by_swapped_roles`); from FEW_CHANNELS inputs or fewer (the first one) the input
      gradient is likewise a folded convolution.
    """
    paddings = [[0, 0], [pad, pad], [pad, pad], [0, 0]]
    mode = "REFLECT" if reflect else "CONSTANT"
    strides = [1, stride, stride, 1]
    height, width, channels, outputs = kernel.shape
    on_cpu = not tf.config.list_physical_devices("GPU")
    rearranged = (stride == 1 and height == width and height % 2 and x.dtype == "float32"
                  and kernel.dtype == "float32" and on_cpu)
    by_backward_data = rearranged and 4 * int(np.prod(kernel.shape)) > BLOCKED_KERNEL_BYTES
    few_outputs = rearranged and outputs <= FEW_CHANNELS
    few_inputs = rearranged and channels <= FEW_CHANNELS

    def padding(x):
        return mirror_pad(x, pad) if reflect and on_cpu else tf.pad(x, paddings, mode)

    @tf.custom_gradient
    def conv(x, kernel):
        padded = padding(x) if pad else x
        if by_backward_data:
            y = valid_conv_by_backward_data(padded, kernel)
        elif few_outputs:
            y = valid_conv_by_space_to_depth(padded, kernel)
        else:
            y = tf.nn.conv2d(padded, kernel, strides, "VALID")
        size = padded.shape.num_elements() * padded.dtype.size if padded.shape.is_fully_defined() else 0
        again = pad and size >= PADDED_AGAIN_BYTES

        def gradients(upstream):
            source = padded
            if again:
                with tf.control_dependencies([upstream]):  # padded when needed, not kept from the forward pass
                    source = padding(x)
            if few_inputs:  # the full convolution of the upstream gradient by the kernel turned round
                d_padded = valid_conv_by_space_to_depth(padded_for_full_conv(upstream, kernel.shape), turned(kernel))
            else:
                d_padded = tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(source), filter=kernel,
                                                          out_backprop=upstream, strides=strides, padding="VALID")
            if few_outputs:
                d_kernel = kernel_gradient_by_swapped_roles(source, upstream, kernel.shape)
            else:
                d_kernel = tf.raw_ops.Conv2DBackpropFilter(input=source, filter_sizes=tf.shape(kernel),
                                                           out_backprop=upstream, strides=strides, padding="VALID")
            if not pad:
                return d_padded, d_kernel
            if reflect:
                return tf.raw_ops.MirrorPadGrad(input=d_padded, paddings=paddings, mode="REFLECT"), d_kernel
            return d_padded[:, pad:-pad, pad:-pad], d_kernel

        return y, gradients

    return conv(x, kernel)


def mirror_pad(x, pad):
    """tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], "REFLECT") as two concatenations, of the
    mirrored rows and then columns: on a CPU thread 2-2.5x as fast as TensorFlow's MirrorPad kernel
    (64x64x256 by 1: 2.5 against 1.3 ms; 256x256x64 by 3: 9.2 against 3.8 ms)."""
    mirrored = lambda lines, axis: lines if pad == 1 else tf.reverse(lines, [axis])
    x = tf.concat([mirrored(x[:, 1:pad + 1], 1), x, mirrored(x[:, -pad - 1:-1], 1)], 1)
    return tf.concat([mirrored(x[:, :, 1:pad + 1], 2), x, mirrored(x[:, :, -pad - 1:-1], 2)], 2)


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


def valid_conv_by_backward_data(x, kernel):
    """tf.nn.conv2d(x, kernel, 1, "VALID") for an odd-sized kernel: `same_conv_by_backward_data`, whose
    frame of kernel // 2 pixels is then cut off."""
    cut_h, cut_w = kernel.shape[0] // 2, kernel.shape[1] // 2
    y = same_conv_by_backward_data(x, kernel)
    return y[:, cut_h:tf.shape(y)[1] - cut_h, cut_w:tf.shape(y)[2] - cut_w, :]


def same_conv_by_backward_data(x, kernel):
    """tf.nn.conv2d(x, kernel, 1, "SAME") for an odd-sized kernel, computed as the gradient of a 'same'
    convolution of the kernel turned round (the transposed convolution), which oneDNN runs with
    blocked weights."""
    with tf.control_dependencies([x]):  # turned when needed: else every layer's copy is made at the step's start
        flipped = turned(kernel)
    frame = tf.concat([tf.shape(x)[:3], tf.shape(kernel)[3:]], axis=0)
    return tf.raw_ops.Conv2DBackpropInput(input_sizes=frame, filter=flipped, out_backprop=x, strides=[1, 1, 1, 1],
                                          padding="SAME")
