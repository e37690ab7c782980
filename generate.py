"""Translate images with a trained run's generators and draw a sample grid.

    python generate.py --run-dir runs/h2z                      # testA -> runs/h2z/generated/AtoB/
    python generate.py --run-dir runs/h2z --direction BtoA --input my_photos --output out

Each output keeps its input's file name and resolution (the image is mirror-padded for the network
and cropped back). A grid of input | translated | reconstructed is written beside the output folder
as OUTPUT_grid.png. The input images are never written over; nor is any other file that generate.py
did not write itself, unless --overwrite. What it wrote is listed in OUTPUT/.generate.json, so it can
be rerun into its own output folder.
"""
import argparse
import os

import cli
import config
import data
import networks
import samples
from checkpoints import read_json, write_json

DIRECTIONS = {"AtoB": ("generator_ab", "generator_ba", "A"), "BtoA": ("generator_ba", "generator_ab", "B")}
DIRECTION = "AtoB"
GRID_COUNT = 6
CHUNK = 64  # images held in memory at once
MANIFEST = ".generate.json"


def build_parser():
    p = argparse.ArgumentParser(
        description="Translate a folder of images with a trained CycleGAN and draw a sample grid.",
        formatter_class=cli.HelpFormatter)
    p.add_argument("--run-dir", help="a run made by train.py (holds config.json and the generators)")
    p.add_argument("--direction", choices=sorted(DIRECTIONS), default=DIRECTION, help="translation direction")
    p.add_argument("--input", help="folder of images (default: the run's dataset testA/ or testB/)")
    p.add_argument("--output", help="folder for the translations (default: RUN_DIR/generated/DIRECTION/)")
    p.add_argument("--generator", help="explicit .keras file for the forward generator")
    p.add_argument("--reverse-generator", help="explicit .keras file for the backward generator (grids)")
    p.add_argument("--batch-size", type=int, default=networks.TRANSLATE_BATCH, help="images per inference batch")
    p.add_argument("--grid-count", type=cli.non_negative_int, default=GRID_COUNT,
                   help="images in the sample grid (0: no grid)")
    p.add_argument("--overwrite", action="store_true",
                   help="write over files in --output that generate.py did not write (never over the inputs)")
    return p


def run_files(run_dir, direction=DIRECTION):
    """A run's generator files (reverse_generator None when missing), its dataset's test folder for the
    direction and its default output folder, as generate()'s keyword arguments."""
    if not os.path.isdir(run_dir):
        raise cli.UsageError(f"--run-dir {run_dir}: no such folder (a run made by train.py)")
    forward_name, backward_name, domain = DIRECTIONS[direction]
    reverse = os.path.join(run_dir, f"{backward_name}.keras")
    dataroot = config.load(os.path.join(run_dir, "config.json")).dataroot
    return dict(generator=os.path.join(run_dir, f"{forward_name}.keras"),
                reverse_generator=reverse if os.path.exists(reverse) else None,
                input=os.path.join(dataroot, f"test{domain}"),
                output=os.path.join(run_dir, "generated", direction), direction=direction)


def resolve(args):
    """generate()'s keyword arguments from the command line; what it leaves out comes from the run."""
    if args.batch_size <= 0:
        raise cli.UsageError(f"--batch-size {args.batch_size}: expected a positive integer")
    if args.run_dir:
        settings = run_files(args.run_dir, args.direction)
    elif args.generator and args.input and args.output:
        settings = {}
    else:
        raise cli.UsageError("give --run-dir, or all of --generator, --input and --output")
    given = dict(generator=args.generator, reverse_generator=args.reverse_generator, input=args.input,
                 output=args.output)
    settings.update({name: value for name, value in given.items() if value is not None})
    return dict(settings, direction=args.direction, batch_size=args.batch_size, grid_count=args.grid_count,
                overwrite=args.overwrite)


def grid_path(output):
    """OUTPUT_grid.png beside the output folder (`out/`, `./out` and `out` give the same file)."""
    return os.path.abspath(output) + "_grid.png"


def written_before(output):
    """The files (relative to `output`) that generate.py listed in the folder's manifest."""
    manifest = os.path.join(output, MANIFEST)
    return set(read_json(manifest)["files"]) if os.path.isfile(manifest) else set()


def record_written(output, paths):
    """Adds `paths` to the output folder's manifest, written atomically. Called before the files are
    written, so a run stopped halfway can be rerun over its own partial output."""
    files = written_before(output) | {os.path.relpath(path, output) for path in paths}
    write_json(os.path.join(output, MANIFEST), {"files": sorted(files)})


def file_id(path):
    """What makes two paths the same file, whatever links lead there."""
    status = os.stat(path)
    return status.st_dev, status.st_ino


def refuse_writing_over_users_files(input, output, targets, overwrite):
    """UsageError if writing `targets` would replace an input file (real paths compared: links, `a/`
    and `./a` are the same folder) or, unless `overwrite`, a file generate.py did not write."""
    if os.path.isdir(output) and os.path.samefile(output, input):
        raise cli.UsageError(f"--output {output} is the input folder: the translations would replace the images")
    inputs = {file_id(entry.path) for entry in os.scandir(input) if entry.is_file()}
    ours = written_before(output)
    foreign = []
    for target in targets:
        if not os.path.lexists(target):
            continue
        if os.path.exists(target) and file_id(target) in inputs:
            raise cli.UsageError(f"--output {output}: {target} is an input image, it would be replaced "
                                 "(choose another output folder)")
        if os.path.relpath(target, output) not in ours:
            foreign.append(target)
    if foreign and not overwrite:
        raise cli.UsageError(f"--output {output}: would write over {len(foreign)} files that generate.py did "
                             f"not write ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); "
                             "pass --overwrite to replace them, or choose another output folder")


def generate(generator, input, output, reverse_generator=None, direction=DIRECTION,
             batch_size=networks.TRANSLATE_BATCH, grid_count=GRID_COUNT, overwrite=False):
    """Translates the readable images of the folder `input` into the folder `output` with the .keras
    generator file `generator`; with `reverse_generator` also draws the first `grid_count` of them
    as a grid. Checks everything before writing anything. Returns (written paths, grid path or None)."""
    paths = data.list_images(input)
    if not paths:
        raise cli.UsageError(f"{input}: no .jpg/.png/.bmp images to translate")
    paths = data.usable_images(paths)
    if not paths:
        raise cli.UsageError(f"{input}: no readable images (every .jpg/.png/.bmp there failed to decode)")
    targets = [os.path.join(output, os.path.basename(path)) for path in paths]
    grid = grid_path(output) if reverse_generator and grid_count > 0 else None
    outputs = targets + ([grid] if grid else [])
    refuse_writing_over_users_files(input, output, outputs, overwrite)
    forward = networks.load_generator(generator)
    backward = networks.load_generator(reverse_generator) if grid else None
    os.makedirs(output, exist_ok=True)
    record_written(output, outputs)
    progress = cli.Progress(len(paths), unit="image")
    for start in range(0, len(paths), CHUNK):
        images = [data.read_image(path) for path in paths[start:start + CHUNK]]
        for target, translated in zip(targets[start:], networks.translate_images(forward, images, batch_size)):
            data.write_image(target, translated)
        progress.update(start + len(images))
    if grid:
        inputs = [data.read_image(path) for path in paths[:grid_count]]
        translated = networks.translate_images(forward, inputs, batch_size)
        reconstructed = networks.translate_images(backward, translated, batch_size)
        samples.save_grid(grid, [inputs, translated, reconstructed], samples.direction_titles(direction))
    return targets, grid


def main(argv=None):
    settings = resolve(build_parser().parse_args(argv))
    written, grid = generate(**settings)
    print(f"translated {len(written)} images into {settings['output']}")
    if grid:
        print(f"sample grid: {grid}")


if __name__ == "__main__":
    cli.run_cli(main, "generate.py")
