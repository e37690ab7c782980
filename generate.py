"""Translate images with a trained run's generators and draw sample grids.

    python generate.py --run-dir runs/h2z                      # testA -> runs/h2z/generated/AtoB/
    python generate.py --run-dir runs/h2z --direction BtoA --input my_photos --output out

Each output keeps its input's file name and resolution (the image is mirror-padded to a multiple of
4 for the network and cropped back). A grid of input | translated | reconstructed is written beside
the output folder as OUTPUT_grid.png.
"""
import argparse
import os

import cli
import data
import networks
from checkpoints import read_json
import keras  # noqa: E402  (after the library: TensorFlow imported quietly)

DIRECTIONS = {"AtoB": ("generator_ab", "generator_ba", "A"), "BtoA": ("generator_ba", "generator_ab", "B")}


def build_parser():
    p = argparse.ArgumentParser(
        description="Translate a folder of images with a trained CycleGAN and draw sample grids.",
        formatter_class=cli.HelpFormatter)
    p.add_argument("--run-dir", help="a run made by train.py (holds config.json and the generators)")
    p.add_argument("--direction", choices=sorted(DIRECTIONS), default="AtoB", help="translation direction")
    p.add_argument("--input", help="folder of images (default: the run's dataset testA/ or testB/)")
    p.add_argument("--output", help="folder for the translations (default: RUN_DIR/generated/DIRECTION/)")
    p.add_argument("--generator", help="explicit .keras file for the forward generator")
    p.add_argument("--reverse-generator", help="explicit .keras file for the backward generator (grids)")
    p.add_argument("--batch-size", type=int, default=8, help="images per inference batch")
    p.add_argument("--grid-count", type=int, default=6, help="images in the sample grid (0: no grid)")
    return p


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
            raise cli.UsageError(f"--run-dir {args.run_dir}: no such folder (a run made by train.py)")
        args.generator = args.generator or os.path.join(args.run_dir, f"{forward_name}.keras")
        if args.reverse_generator is None and os.path.exists(os.path.join(args.run_dir, f"{backward_name}.keras")):
            args.reverse_generator = os.path.join(args.run_dir, f"{backward_name}.keras")
        if args.input is None:
            dataroot = read_json(os.path.join(args.run_dir, "config.json"))["dataroot"]
            args.input = os.path.join(dataroot, f"test{domain}")
        args.output = args.output or os.path.join(args.run_dir, "generated", args.direction)
    elif not (args.generator and args.input and args.output):
        raise cli.UsageError("give --run-dir, or all of --generator, --input and --output")
    if args.batch_size <= 0:
        raise cli.UsageError(f"--batch-size {args.batch_size}: expected a positive integer")
    return args


def generate(args):
    """Translates args.input into args.output; returns (written paths, grid path or None)."""
    args = resolve(args)
    paths = data.list_images(args.input)
    if not paths:
        raise cli.UsageError(f"{args.input}: no .jpg/.png/.bmp images to translate")
    paths = data.usable_images(paths)
    forward = networks.load_generator(args.generator)
    backward = networks.load_generator(args.reverse_generator) if args.reverse_generator else None
    os.makedirs(args.output, exist_ok=True)
    written = []
    bar = keras.utils.Progbar(len(paths), unit_name="image")
    for start in range(0, len(paths), 64):
        chunk = paths[start:start + 64]
        images = [data.read_image(p) for p in chunk]
        for path, output in zip(chunk, networks.translate_images(forward, images, args.batch_size)):
            target = os.path.join(args.output, os.path.basename(path))
            data.write_image(target, output)
            written.append(target)
        bar.add(len(chunk))
    grid = None
    if backward is not None and args.grid_count > 0:
        inputs = [data.read_image(p) for p in paths[:args.grid_count]]
        translated = networks.translate_images(forward, inputs, args.batch_size)
        reconstructed = networks.translate_images(backward, translated, args.batch_size)
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
    cli.run_cli(main, "generate.py")
