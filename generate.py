"""Translate images with a trained run's generators and draw sample grids.

    python generate.py --run-dir runs/h2z                      # testA -> runs/h2z/generated/AtoB/
    python generate.py --run-dir runs/h2z --direction BtoA --input my_photos --output out

Each output keeps its input's file name and resolution (the image is mirror-padded to a multiple of
4 for the network and cropped back). A grid of input | translated | reconstructed is written beside
the output folder as OUTPUT_grid.png.
"""
import argparse
import os
from collections import defaultdict

import numpy as np

import data  # first: it imports TensorFlow without the start-up noise
import keras
import tensorflow as tf

import networks  # noqa: F401  (registers the custom layers the saved generators use)
from checkpoints import read_json

DIRECTIONS = {"AtoB": ("generator_ab", "generator_ba", "A"), "BtoA": ("generator_ba", "generator_ab", "B")}


def build_parser():
    p = argparse.ArgumentParser(
        description="Translate a folder of images with a trained CycleGAN and draw sample grids.",
        formatter_class=data.HelpFormatter)
    p.add_argument("--run-dir", help="a run made by train.py (holds config.json and the generators)")
    p.add_argument("--direction", choices=sorted(DIRECTIONS), default="AtoB", help="translation direction")
    p.add_argument("--input", help="folder of images (default: the run's dataset testA/ or testB/)")
    p.add_argument("--output", help="folder for the translations (default: RUN_DIR/generated/DIRECTION/)")
    p.add_argument("--generator", help="explicit .keras file for the forward generator")
    p.add_argument("--reverse-generator", help="explicit .keras file for the backward generator (grids)")
    p.add_argument("--batch-size", type=int, default=8, help="images per inference batch")
    p.add_argument("--grid-count", type=int, default=6, help="images in the sample grid (0: no grid)")
    return p


def load_generator(path):
    """A generator saved by train.py, loaded in Keras' safe mode (no code from the file runs)."""
    if not os.path.isfile(path):
        raise data.UsageError(f"{path}: no such model file (train a run first, or pass --generator)")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types for a bad file; all mean the same here
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise data.UsageError(f"{path}: not a Keras model file ({reason[:200]})") from None


def pad_to_multiple(image, multiple=4):
    """Mirror-pads H and W up to a multiple; returns the padded image and the original (H, W)."""
    height, width = image.shape[:2]
    pad_h, pad_w = -height % multiple, -width % multiple
    mode = "reflect" if pad_h < height and pad_w < width else "edge"
    return np.pad(image, [(0, pad_h), (0, pad_w), (0, 0)], mode=mode), (height, width)


def translate_images(generator, images, batch_size=8):
    """Translates a list of [-1, 1] images of any sizes, batching images of equal size together."""
    by_shape = defaultdict(list)
    for index, image in enumerate(images):
        by_shape[image.shape].append(index)
    results = [None] * len(images)
    for indices in by_shape.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            padded = [pad_to_multiple(images[i]) for i in chunk]
            batch = np.stack([p[0] for p in padded])
            translated = np.asarray(generator.predict_on_batch(batch))
            for i, output, (_, (height, width)) in zip(chunk, translated, padded):
                results[i] = output[:height, :width]
    return results


def read_image(path):
    """A file -> float32 [-1, 1] RGB array at its own resolution."""
    return data.to_unit_range(data.decode_image(tf.io.read_file(path))).numpy()


def write_image(path, image):
    import imageio.v3 as iio

    pixels = data.to_uint8(image)
    if path.lower().endswith((".jpg", ".jpeg")):
        iio.imwrite(path, pixels, quality=95)
    else:
        iio.imwrite(path, pixels)


def save_grid(path, inputs, translated, reconstructed, direction):
    """input | translated | reconstructed, one row per image, as a PNG with column titles."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    source, target = direction.split("to")
    titles = (f"input ({source})", f"translated ({target})", f"reconstructed ({source})")
    figure, axes = plt.subplots(len(inputs), 3, figsize=(9, 3 * len(inputs)), squeeze=False)
    for row, images in enumerate(zip(inputs, translated, reconstructed)):
        for column, image in enumerate(images):
            axes[row, column].imshow(data.to_uint8(image))
            axes[row, column].axis("off")
            if row == 0:
                axes[row, column].set_title(titles[column])
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def resolve(args):
    """Fills in the defaults that come from the run: input folder, output folder, model files."""
    forward_name, backward_name, domain = DIRECTIONS[args.direction]
    if args.run_dir:
        if not os.path.isdir(args.run_dir):
            raise data.UsageError(f"--run-dir {args.run_dir}: no such folder (a run made by train.py)")
        args.generator = args.generator or os.path.join(args.run_dir, f"{forward_name}.keras")
        if args.reverse_generator is None and os.path.exists(os.path.join(args.run_dir, f"{backward_name}.keras")):
            args.reverse_generator = os.path.join(args.run_dir, f"{backward_name}.keras")
        if args.input is None:
            dataroot = read_json(os.path.join(args.run_dir, "config.json"))["dataroot"]
            args.input = os.path.join(dataroot, f"test{domain}")
        args.output = args.output or os.path.join(args.run_dir, "generated", args.direction)
    elif not (args.generator and args.input and args.output):
        raise data.UsageError("give --run-dir, or all of --generator, --input and --output")
    if args.batch_size <= 0:
        raise data.UsageError(f"--batch-size {args.batch_size}: expected a positive integer")
    return args


def generate(args):
    """Translates args.input into args.output; returns (written paths, grid path or None)."""
    args = resolve(args)
    paths = data.list_images(args.input)
    if not paths:
        raise data.UsageError(f"{args.input}: no .jpg/.png/.bmp images to translate")
    paths = data.usable_images(paths)
    forward = load_generator(args.generator)
    backward = load_generator(args.reverse_generator) if args.reverse_generator else None
    os.makedirs(args.output, exist_ok=True)
    written = []
    bar = keras.utils.Progbar(len(paths), unit_name="image")
    for start in range(0, len(paths), 64):
        chunk = paths[start:start + 64]
        images = [read_image(p) for p in chunk]
        for path, output in zip(chunk, translate_images(forward, images, args.batch_size)):
            target = os.path.join(args.output, os.path.basename(path))
            write_image(target, output)
            written.append(target)
        bar.add(len(chunk))
    grid = None
    if backward is not None and args.grid_count > 0:
        inputs = [read_image(p) for p in paths[:args.grid_count]]
        translated = translate_images(forward, inputs, args.batch_size)
        reconstructed = translate_images(backward, translated, args.batch_size)
        grid = os.path.normpath(args.output) + "_grid.png"
        save_grid(grid, inputs, translated, reconstructed, args.direction)
    return written, grid


def main(argv=None):
    args = build_parser().parse_args(argv)
    written, grid = generate(args)
    print(f"translated {len(written)} images into {args.output}")
    if grid:
        print(f"sample grid: {grid}")


if __name__ == "__main__":
    data.run_cli(main, "generate.py")
