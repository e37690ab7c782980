"""Translate images with a trained run's generators and draw a sample grid.

    python generate.py --run-dir runs/h2z                      # testA -> runs/h2z/generated/AtoB/
    python generate.py --run-dir runs/h2z --direction BtoA --input my_photos --output out
    python generate.py --run-dir runs/monet --direction BtoA --input photo_jpg --format jpg --zip images.zip

Each output keeps its input's file name (and format, unless --format) and resolution (the image is
mirror-padded for the network and cropped back). A grid of input | translated | reconstructed is written
beside the output folder as OUTPUT_grid.png. The input images are never written over; nor is any other
file that generate.py did not write itself, unless --overwrite. What it wrote is listed in
OUTPUT/.generate.json, so it can be rerun into its own output folder. --zip FILE writes the translations
into one zip instead (a competition's submission), whole or not at all; an existing FILE, or its grid
FILE_grid.png, is only replaced with --overwrite.
"""
import argparse
import io
import os
import zipfile

import cli
import config
import data
import inference
import pretrained
import samples
from checkpoints import read_json, write_atomically, write_json

DIRECTIONS = {"AtoB": ("generator_ab", "generator_ba", "A"), "BtoA": ("generator_ba", "generator_ab", "B")}
DIRECTION = "AtoB"
GRID_COUNT = 6
CHUNK = 64  # images held in memory at once
MANIFEST = ".generate.json"
FORMATS = ("png", "jpg")


def build_parser():
    p = argparse.ArgumentParser(
        description="Translate a folder of images with a trained CycleGAN and draw a sample grid.",
        formatter_class=cli.HelpFormatter)
    p.add_argument("--run-dir", help="a run made by train.py (holds config.json and the generators)")
    p.add_argument("--direction", choices=sorted(DIRECTIONS), default=DIRECTION, help="translation direction")
    p.add_argument("--input", help="folder of images (default: the run's dataset testA/ or testB/)")
    p.add_argument("--output", help="folder for the translations (default: RUN_DIR/generated/DIRECTION/)")
    p.add_argument("--generator", help="explicit .keras file, or PyTorch CycleGAN .pth, for the forward generator")
    p.add_argument("--reverse-generator", help="explicit .keras or .pth file for the backward generator (grids)")
    p.add_argument("--batch-size", type=int, default=inference.TRANSLATE_BATCH, help="images per inference batch")
    p.add_argument("--grid-count", type=cli.non_negative_int, default=GRID_COUNT,
                   help="images in the sample grid (0: no grid)")
    p.add_argument("--format", choices=FORMATS,
                   help="write every translation in this format, its name's extension changed to match (jpg: "
                        "quality 95; default: each input's own format)")
    p.add_argument("--zip", metavar="FILE",
                   help="write the translations into this zip file instead of an output folder")
    p.add_argument("--overwrite", action="store_true",
                   help="write over files in --output that generate.py did not write, or an existing --zip "
                        "(never over the inputs)")
    return p


def run_files(run_dir, direction=DIRECTION):
    """A run's generator files (reverse_generator None when missing), the test folder of the direction's
    source domain (data.domain_folders: a TFRecord one is refused when read) and its default output
    folder, as generate()'s keyword arguments."""
    if not os.path.isdir(run_dir):
        raise cli.UsageError(f"--run-dir {run_dir}: no such folder (a run made by train.py)")
    forward_name, backward_name, domain = DIRECTIONS[direction]
    reverse = os.path.join(run_dir, f"{backward_name}.keras")
    folders = data.domain_folders(config.load(os.path.join(run_dir, "config.json")))
    return dict(generator=os.path.join(run_dir, f"{forward_name}.keras"),
                reverse_generator=reverse if os.path.exists(reverse) else None,
                input=folders.folder("test", domain),
                output=os.path.join(run_dir, "generated", direction), direction=direction)


def resolve(args):
    """generate()'s keyword arguments from the command line; what it leaves out comes from the run."""
    if args.batch_size <= 0:
        raise cli.UsageError(f"--batch-size {args.batch_size}: expected a positive integer")
    if args.run_dir:
        settings = run_files(args.run_dir, args.direction)
    elif args.generator and args.input and (args.output or args.zip):
        settings = {}
    else:
        raise cli.UsageError("give --run-dir, or all of --generator, --input and --output (or --zip)")
    if args.zip:
        settings.pop("output", None)  # the zip replaces the run's default output folder
    given = dict(generator=args.generator, reverse_generator=args.reverse_generator, input=args.input,
                 output=args.output, zip_path=args.zip)
    settings.update({name: value for name, value in given.items() if value is not None})
    return dict(settings, direction=args.direction, batch_size=args.batch_size, grid_count=args.grid_count,
                overwrite=args.overwrite, image_format=args.format)


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


def input_file_ids(input):
    return {file_id(entry.path) for entry in os.scandir(input) if entry.is_file()}


def refuse_writing_over_users_files(input, output, targets, overwrite):
    """UsageError if writing `targets` would replace an input file (real paths compared: links, `a/`
    and `./a` are the same folder) or, unless `overwrite`, a file generate.py did not write."""
    if os.path.isdir(output) and os.path.samefile(output, input):
        raise cli.UsageError(f"--output {output} is the input folder: the translations would replace the images")
    inputs = input_file_ids(input)
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


def refuse_writing_over_files_with_zip(input, zip_path, grid, overwrite):
    """UsageError if the zip or the grid beside it would replace an input image or a folder, or, unless
    `overwrite`, any file: a zip has no manifest to tell generate.py's earlier output from the user's."""
    if os.path.isdir(zip_path):
        raise cli.UsageError(f"--zip {zip_path}: is a folder, expected the name of the zip file to write")
    inputs = input_file_ids(input)
    targets = [zip_path] + ([grid] if grid else [])
    for target in targets:
        if os.path.exists(target) and file_id(target) in inputs:
            raise cli.UsageError(f"--zip {zip_path}: {target} is an input image, it would be replaced")
    existing = [target for target in targets if os.path.lexists(target)]
    if existing and not overwrite:
        raise cli.UsageError(f"--zip {zip_path}: would write over {', '.join(existing)}; pass --overwrite to "
                             "replace, or choose another name")


def output_names(paths, image_format):
    """The translations' file names: the inputs', with the extension of `image_format` if given. Two
    inputs that would share a name (a.png and a.jpg as jpg) are refused."""
    names, sources = [], {}
    for path in paths:
        name = os.path.basename(path)
        if image_format:
            name = os.path.splitext(name)[0] + "." + image_format
        if name in sources:
            raise cli.UsageError(f"--format {image_format}: {sources[name]} and {path} would both be written "
                                 f"as {name}")
        sources[name] = path
        names.append(name)
    return names


def translations(generator, paths, targets, batch_size):
    """(target, translated image) for each of the image files `paths`, in order, CHUNK read at a time,
    with a progress line."""
    progress = cli.Progress(len(paths), unit="image")
    for start in range(0, len(paths), CHUNK):
        images = [data.read_image(path) for path in paths[start:start + CHUNK]]
        yield from zip(targets[start:], inference.translate_images(generator, images, batch_size))
        progress.update(start + len(images))


def write_zip(path, named_images):
    """(name, image) pairs as the files of a new zip (stored: PNG and JPEG are compressed already)."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, image in named_images:
            encoded = io.BytesIO()
            data.write_image(encoded, image, os.path.splitext(name)[1])
            archive.writestr(name, encoded.getvalue())


def generate(generator, input, output=None, reverse_generator=None, direction=DIRECTION,
             batch_size=inference.TRANSLATE_BATCH, grid_count=GRID_COUNT, overwrite=False, image_format=None,
             zip_path=None):
    """Translates the readable images of the folder `input` with the generator file `generator` (.keras
    or .pth) into the folder `output`, or into the zip file `zip_path`, in the inputs' formats or
    `image_format` ("png" or "jpg"); with `reverse_generator` also draws the first `grid_count` of them
    as a grid beside it. Checks everything before writing anything; a zip is written whole or not at
    all. Returns (the written paths, or the names in the zip; the grid path or None)."""
    if (output is None) == (zip_path is None):
        raise cli.UsageError("give an output folder (--output) or a zip file (--zip), one of them")
    paths = data.list_images(input)
    if not paths:
        raise cli.UsageError(f"{input}: no .jpg/.png/.bmp images to translate")
    paths = data.usable_images(paths)
    if not paths:
        raise cli.UsageError(f"{input}: no readable images (every .jpg/.png/.bmp there failed to decode)")
    names = output_names(paths, image_format)
    beside = os.path.splitext(zip_path)[0] if zip_path else output
    grid = grid_path(beside) if reverse_generator and grid_count > 0 else None
    grids = [grid] if grid else []
    targets = names if zip_path else [os.path.join(output, name) for name in names]
    if zip_path:
        refuse_writing_over_files_with_zip(input, zip_path, grid, overwrite)
    else:
        refuse_writing_over_users_files(input, output, targets + grids, overwrite)
    forward = pretrained.load_generator(generator)
    backward = pretrained.load_generator(reverse_generator) if grid else None
    results = translations(forward, paths, targets, batch_size)
    if zip_path:
        os.makedirs(os.path.dirname(os.path.abspath(zip_path)), exist_ok=True)
        write_atomically(zip_path, lambda temporary: write_zip(temporary, results))
    else:
        os.makedirs(output, exist_ok=True)
        record_written(output, targets + grids)
        for target, image in results:
            data.write_image(target, image)
    if grid:
        inputs = [data.read_image(path) for path in paths[:grid_count]]
        translated = inference.translate_images(forward, inputs, batch_size)
        reconstructed = inference.translate_images(backward, translated, batch_size)
        samples.save_grid(grid, [inputs, translated, reconstructed], samples.direction_titles(direction))
    return targets, grid


def main(argv=None):
    settings = resolve(build_parser().parse_args(argv))
    written, grid = generate(**settings)
    print(f"translated {len(written)} images into {settings.get('zip_path') or settings['output']}")
    if grid:
        print(f"sample grid: {grid}")


if __name__ == "__main__":
    cli.run_cli(main, "generate.py")
