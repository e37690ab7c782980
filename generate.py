"""Translate images with a trained run's generators and draw a sample grid.

    python generate.py --run-dir runs/h2z                      # testA -> runs/h2z/generated/AtoB/
    python generate.py --run-dir runs/h2z --direction BtoA --input my_photos --output out
    python generate.py --run-dir runs/monet --direction BtoA --input photo_jpg --format jpg --zip images.zip

Each output keeps its input's file name (and format, unless --format) and resolution (the image is
mirror-padded for the network and cropped back). A grid of input | translated | reconstructed goes
beside the output folder as OUTPUT_grid.png (optional: if it fails, a WARNING and the translations
stay). The inputs are never written over; nor, unless --overwrite, any file generate.py did not write.
What it wrote is listed in OUTPUT/.generate.json with the input folder and generator, so it can be
rerun into its own output (another input's or generator's are replaced only with --overwrite). --zip
FILE writes one zip instead (a competition's submission), whole or not at all; an existing FILE, or
FILE_grid.png, is only replaced with --overwrite.

Every file is written to a temporary beside it and renamed (checkpoints.write_atomically): a stop of
any kind (a full disk, Ctrl-C, SIGKILL) leaves whole images only, and the next run removes the
temporaries a killed one left. One generate.py at a time writes an output, however spelled (a link to
it): it holds a lock beside it (.OUTPUT.generate.lock, removed at the end).
"""
import argparse
import contextlib
import io
import logging
import os
import time
import zipfile

import checkpoints
import cli
import config
import cpu_kernels
import data
import image_io
import inference
import pretrained
import samples
from checkpoints import dump_json, read_json, write_atomically

DIRECTIONS = {"AtoB": ("generator_ab", "generator_ba", "A"), "BtoA": ("generator_ba", "generator_ab", "B")}
DIRECTION = "AtoB"
GRID_COUNT = 6
CHUNK = 64  # images held in memory at once
MANIFEST = ".generate.json"
FORMATS = ("png", "jpg")
log = logging.getLogger("cyclegan")


def build_parser():
    p = argparse.ArgumentParser(
        description="Translate a folder of images with a trained CycleGAN and draw a sample grid.",
        formatter_class=cli.HelpFormatter)
    p.add_argument("--run-dir", type=cli.path, help="a run made by train.py (holds config.json and the generators; "
                                                    "default: none, give --generator, --input and --output)")
    p.add_argument("--direction", choices=sorted(DIRECTIONS), default=DIRECTION, help="translation direction")
    p.add_argument("--input", type=cli.path, help="folder of images (default: the run's dataset testA/ or testB/)")
    p.add_argument("--output", type=cli.path,
                   help="folder for the translations (default: RUN_DIR/generated/DIRECTION/)")
    p.add_argument("--generator", type=cli.path, help="explicit .keras file, or PyTorch CycleGAN .pth, for the "
                                                      "forward generator (default: the run's, for DIRECTION)")
    p.add_argument("--reverse-generator", type=cli.path, help="explicit .keras or .pth file for the backward "
                                                              "generator of the grid (default: the run's other one)")
    p.add_argument("--batch-size", type=cli.positive_int, default=inference.TRANSLATE_BATCH,
                   help="images per inference batch")
    p.add_argument("--grid-count", type=cli.non_negative_int, default=GRID_COUNT,
                   help="images in the sample grid, 0 for none")
    p.add_argument("--format", choices=FORMATS,
                   help="write every translation in this format, its name's extension changed to match (jpg: "
                        "quality 95; default: each input's own format)")
    p.add_argument("--zip", metavar="FILE", type=cli.path,
                   help="write the translations into this zip file instead of an output folder (the grid: "
                        "FILE_grid.png, FILE without .zip)")
    p.add_argument("--overwrite", action="store_true",
                   help="write over files in --output that generate.py did not write, or wrote from another "
                        "input or generator, or an existing --zip (never over the inputs)")
    return p


def run_files(run_dir, direction=DIRECTION):
    """A run's generator files (reverse_generator None when missing), the test folder of the direction's
    source domain (data.domain_folders: a TFRecord one is refused when read) and its default output
    folder, as generate()'s keyword arguments."""
    if not os.path.isdir(run_dir):
        raise cli.UsageError(f"--run-dir {run_dir}: no such folder (a run made by train.py)")
    forward_name, backward_name, domain = DIRECTIONS[direction]
    reverse = os.path.join(run_dir, f"{backward_name}.keras")
    path = os.path.join(run_dir, "config.json")
    run_config = config.load(path)
    config.check_absolute_paths(run_config, path, "give --input and --output")
    folders = data.domain_folders(run_config)
    return dict(generator=os.path.join(run_dir, f"{forward_name}.keras"),
                reverse_generator=reverse if os.path.exists(reverse) else None,
                input=folders.folder("test", domain),
                output=os.path.join(run_dir, "generated", direction), direction=direction)


def resolve(args):
    """generate()'s keyword arguments from the command line; what it leaves out comes from the run."""
    if args.run_dir:
        settings = run_files(args.run_dir, args.direction)
        if not args.generator and not os.path.exists(settings["generator"]):
            raise cli.UsageError(f"--run-dir {args.run_dir}: no {os.path.basename(settings['generator'])} yet "
                                 "(train.py writes a run's generators when it stops, at its end or on Ctrl-C; a run "
                                 "in progress has none): wait for it, or give --generator")
        if not args.input:  # the run's test folder: one generate.py cannot read says what to give instead
            try:
                data.list_images(settings["input"])
            except cli.UsageError as error:
                raise cli.UsageError(f"{error}; give --input a folder of images") from None
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
    """OUTPUT_grid.png beside the output folder, resolved: `out/`, `./out` and a link to `out` give one file."""
    return os.path.realpath(output) + "_grid.png"


def read_manifest(output):
    """The output folder's manifest (write_manifest), {} where there is none."""
    manifest = os.path.join(output, MANIFEST)
    return read_json(manifest) if os.path.isfile(manifest) else {}


def written_before(manifest):
    """The files (relative to the output folder) that the manifest lists as generate.py's: written whole,
    or being written by a run that was stopped (each is whole or absent: it is renamed into place)."""
    return set(manifest.get("files", [])) | set(manifest.get("writing", []))


def write_manifest(output, manifest, source, written=(), writing=()):
    """Adds the paths `written` to the output folder's manifest (updated in place: "files", once whole), lists
    `writing` as being written now (what a stopped run may have left, for a rerun to replace), and writes it
    atomically with `source`: this run's input folder, generator and date."""
    files = set(manifest.get("files", [])) | {os.path.relpath(path, output) for path in written}
    manifest.update(source, files=sorted(files), writing=sorted(os.path.relpath(path, output) for path in writing))
    write_whole(os.path.join(output, MANIFEST), lambda temporary: dump_json(temporary, manifest), output)


def describe_source(input, generator):
    """What the manifest records of a run: the input folder and generator file (resolved, so that any
    spelling compares equal) and the date."""
    return {"input": os.path.realpath(input), "generator": os.path.realpath(generator),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def file_id(path):
    """What makes two paths the same file, whatever links lead there."""
    status = os.stat(path)
    return status.st_dev, status.st_ino


def input_file_ids(input):
    """The ids of the files in `input`; a name that leads to no file (a dangling link, a link loop) is
    not one."""
    ids = set()
    for entry in os.scandir(input):
        try:
            if entry.is_file():
                ids.add(file_id(entry.path))
        except OSError:  # ELOOP: is_file() only hides FileNotFoundError
            continue
    return ids


def refuse_writing_over_users_files(input, output, targets, overwrite, manifest, source):
    """UsageError if writing `targets` would replace an input file (real paths compared: links, `a/`
    and `./a` are the same folder) or, unless `overwrite`, a file generate.py did not write, or
    translations it wrote from another input or generator (refuse_mixing)."""
    if os.path.isdir(output) and os.path.samefile(output, input):
        raise cli.UsageError(f"--output {output} is the input folder: the translations would replace the images")
    inputs = input_file_ids(input)
    ours = written_before(manifest)
    foreign, folders = [], []
    for target in targets:
        if not os.path.lexists(target):
            continue
        if os.path.exists(target) and file_id(target) in inputs:
            raise cli.UsageError(f"--output {output}: {target} is an input image, it would be replaced "
                                 "(choose another output folder)")
        if os.path.isdir(target):
            folders.append(target)
        elif os.path.relpath(target, output) not in ours:
            foreign.append(target)
    if folders:
        raise cli.UsageError(f"--output {output}: {counted(folders, 'folder')} where generate.py writes a file "
                             "(not replaced, even with --overwrite); choose another output folder")
    if foreign and not overwrite:
        raise cli.UsageError(f"--output {output}: would write over {counted(foreign, 'file')} that generate.py did "
                             "not write; pass --overwrite to replace, or choose another output folder")
    if not overwrite:
        refuse_mixing(output, manifest, source)


def counted(paths, noun):
    """"1 file (a)", "4 files (a, b, c, ...)": `paths` in a one-line message."""
    more = ", ..." if len(paths) > 3 else ""
    return f"{len(paths)} {noun}{'' if len(paths) == 1 else 's'} ({', '.join(paths[:3])}{more})"


def refuse_mixing(output, manifest, source):
    """UsageError if the output folder holds images that generate.py wrote from another input folder or
    with another generator than `source`'s: a rerun would leave a mix of two translations."""
    if not any(os.path.exists(os.path.join(output, name)) for name in written_before(manifest)):
        return
    differences = [f"{how} another {what} ({manifest[key]}, now {source[key]})"
                   for key, how, what in (("input", "from", "input folder"), ("generator", "with", "generator"))
                   if manifest.get(key, source[key]) != source[key]]
    if differences:
        when = f" on {manifest['date']}" if "date" in manifest else ""
        raise cli.UsageError(f"--output {output}: holds images that generate.py translated{when} "
                             f"{' and '.join(differences)}; --overwrite replaces them, or choose another output "
                             "folder")


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


def read_input(path):
    """An input image; one that can no longer be read (removed meanwhile) is one line, so that an
    OSError while generate.py writes always means a file it writes."""
    try:
        return image_io.read_image(path)
    except OSError as error:
        raise cli.UsageError(f"{path}: could not read ({error.strerror or error})") from None


def translated_chunks(generator, paths, targets, batch_size):
    """Lists of (target, translated image), CHUNK images each, for the image files `paths`; a progress line."""
    progress = cli.Progress(len(paths), unit="image")
    for start in range(0, len(paths), CHUNK):
        images = [read_input(path) for path in paths[start:start + CHUNK]]
        yield list(zip(targets[start:], inference.translate_images(generator, images, batch_size)))
        progress.update(start + len(images))


def write_whole(path, write, folder, after=""):
    """write_atomically(path, write), with an OSError (a full disk) as one line naming the file: its
    temporary is removed, so `folder` holds no half-written file. `after` says what was done already."""
    try:
        write_atomically(path, write)
    except OSError as error:
        raise cli.UsageError(f"{path}: could not write ({error.strerror or error}); nothing half-written is left "
                             f"in {os.path.join(folder or '.', '')}{after}") from None


def zip_images(path, named_images):
    """(name, image) pairs as the files of a new zip (stored: PNG and JPEG are compressed already)."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, image in named_images:
            encoded = io.BytesIO()
            image_io.write_image(encoded, image, os.path.splitext(name)[1])
            archive.writestr(name, encoded.getvalue())


def write_zip(zip_path, chunks):
    """The translations as the zip `zip_path`, whole or not at all."""
    folder = os.path.dirname(zip_path)  # made by output_lock
    unchanged = "; the earlier one is unchanged" if os.path.exists(zip_path) else ""
    write_whole(zip_path, lambda temporary: zip_images(temporary, (pair for chunk in chunks for pair in chunk)),
                folder, f" (no zip written{unchanged})")


def write_folder(output, chunks, manifest, source, grids):
    """Writes each chunk's images whole (write_whole), listing them in the manifest as they are written
    (with the grid, written later, as being written)."""
    os.makedirs(output, exist_ok=True)
    count = 0
    for chunk in chunks:
        written = []
        write_manifest(output, manifest, source, writing=[target for target, _ in chunk] + grids)
        try:
            for target, image in chunk:
                write_whole(target, lambda temporary: image_io.write_image(temporary, image), output,
                            f" ({count} images written whole so far, listed in {os.path.join(output, MANIFEST)}; "
                            "run the same command again to finish)")
                written.append(target)
                count += 1
        except BaseException:  # a full disk, Ctrl-C: the manifest lists what is whole (if it can be written)
            with contextlib.suppress(OSError, cli.UsageError):
                write_manifest(output, manifest, source, written=written)
            raise
        write_manifest(output, manifest, source, written=written, writing=grids)


def replaced_line(output, targets, manifest):
    """The INFO line that says which images of an earlier generate.py writing `targets` replaces (None:
    none), from the manifest as it was before."""
    ours = written_before(manifest)  # a killed run's last chunk too
    count = sum(os.path.relpath(target, output) in ours and os.path.exists(target) for target in targets)
    if not count:
        return None
    known = f" on {manifest['date']} from {manifest['input']}" if {"date", "input"} <= manifest.keys() else ""
    return f"replaced {count} images written by an earlier generate.py{known}"


def output_lock(output=None, zip_path=None):
    """checkpoints.writer_lock for the output folder or zip and its grid: one generate.py per output. The
    lock is a hidden file beside it, .NAME.generate.lock (a zip's NAME without .zip: an output folder
    `out` and `out.zip` share the grid out_grid.png), removed at the end. A folder it cannot write there
    is one line (checkpoints.unwritable). Resolved: two spellings of one output (a link) share its lock."""
    option = "--zip" if zip_path else "--output"
    folder, name = os.path.split(os.path.realpath(os.path.splitext(zip_path)[0] if zip_path else output))
    problem = checkpoints.unwritable(folder)
    if problem:
        raise cli.UsageError(f"{option} {zip_path or output}: cannot write there ({problem}); expected a folder it "
                             "can write")
    os.makedirs(folder, exist_ok=True)
    return checkpoints.writer_lock(os.path.join(folder, f".{name}.generate.lock"), f"{option} {zip_path or output}",
                                   "generate.py", f"give another {option}", remove=True)


def remove_stale_temporaries(output, zip_path, grid):
    """Removes what a killed generate.py left half-written: the temporaries (write_atomically's
    NAME.tmpPID.EXT, PID no longer running) of the manifest's files in the output folder, of the zip
    and of the grid; a user's own file of such a name is kept. Call it holding the lock."""
    stale = []
    for path in filter(None, (zip_path, grid)):
        stale += checkpoints.stale_temporaries(os.path.dirname(os.path.abspath(path)), {os.path.basename(path)})
    if output:
        stale += checkpoints.stale_temporaries(output, written_before(read_manifest(output)) | {MANIFEST})
    checkpoints.remove_temporaries(stale, "a killed generate.py")


def write_grid(grid, forward, backward, paths, direction, batch_size, translations):
    """The grid of input | translated | reconstructed for the image files `paths`, written whole; True if it
    was. Optional: a failure (out of memory, a full disk) is a WARNING line, the translations stay."""
    try:
        inputs = [read_input(path) for path in paths]
        translated = inference.translate_images(forward, inputs, batch_size)
        reconstructed = inference.translate_images(backward, translated, batch_size)
        columns, titles = [inputs, translated, reconstructed], samples.direction_titles(direction)
        write_atomically(grid, lambda temporary: samples.save_grid(temporary, columns, titles))
        return True
    except Exception as error:  # any failure of the optional grid; Ctrl-C still stops
        log.warning("sample grid %s not written (%s: %s); the %d translations are written whole", grid,
                    type(error).__name__, inference.brief(getattr(error, "strerror", None) or str(error)), translations)
        return False


def generate(generator, input, output=None, reverse_generator=None, direction=DIRECTION,
             batch_size=inference.TRANSLATE_BATCH, grid_count=GRID_COUNT, overwrite=False, image_format=None,
             zip_path=None):
    """Translates the readable images of the folder `input` with the generator file `generator` (.keras or
    .pth) into the folder `output`, or the zip file `zip_path`, in the inputs' formats or `image_format`
    ("png" or "jpg"); with `reverse_generator` also draws the first `grid_count` as a grid beside it.
    Checks everything before writing anything, holding the output's lock (one generate.py per output);
    each file is written whole, a zip whole or not at all. Returns (the written paths, or the names in
    the zip; the grid path, None if none was written)."""
    if (output is None) == (zip_path is None):
        raise cli.UsageError("give an output folder (--output) or a zip file (--zip), one of them")
    if not os.path.isdir(input):
        state = "is a file" if os.path.exists(input) else "no such folder"
        raise cli.UsageError(f"--input {input}: {state}, expected a folder of images (.jpg/.png/.bmp)")
    if output is not None and os.path.exists(output) and not os.path.isdir(output):
        raise cli.UsageError(f"--output {output}: is a file, expected a folder for the translations")
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
    source = describe_source(input, generator)

    def refuse():
        """Once before the generators load (a quick answer), once holding the lock (another generate.py
        may have written meanwhile); nothing is written yet. Returns the output folder's manifest."""
        if zip_path:
            refuse_writing_over_files_with_zip(input, zip_path, grid, overwrite)
            return {}
        manifest = read_manifest(output)
        refuse_writing_over_users_files(input, output, targets + grids, overwrite, manifest, source)
        return manifest

    refuse()
    forward = pretrained.load_cyclegan_generator(generator)[0]  # refused here, before anything is written
    backward = pretrained.load_cyclegan_generator(reverse_generator)[0] if grid else None
    with output_lock(output, zip_path):
        remove_stale_temporaries(output, zip_path, grid)
        manifest = refuse()
        chunks = translated_chunks(forward, paths, targets, batch_size)
        if zip_path:
            write_zip(zip_path, chunks)
        else:
            replaced = replaced_line(output, targets, manifest)
            write_folder(output, chunks, manifest, source, grids)
            if replaced:
                log.info(replaced)
        if grid and write_grid(grid, forward, backward, paths[:grid_count], direction, batch_size, len(targets)):
            if not zip_path:
                write_manifest(output, manifest, source, written=grids)
        else:
            grid = None
    return targets, grid


def main(argv=None):
    settings = resolve(build_parser().parse_args(argv))
    cpu_kernels.use(True)  # faster on a CPU with TensorFlow; CYCLEGAN_CPU_KERNELS=off keeps the plain path
    written, grid = generate(**settings)
    print(f"translated {len(written)} images into {settings.get('zip_path') or settings['output']}")
    if grid:
        print(f"sample grid: {grid}")


if __name__ == "__main__":
    cli.run_cli(main, "generate.py")
