"""Download an official CycleGAN dataset and unpack it into the standard layout, or one of the
reference's pretrained generators, resumably.

    python download.py horse2zebra                # into datasets/horse2zebra/
    python download.py --list
    python download.py --pretrained horse2zebra   # into pretrained/horse2zebra.pth (PyTorch)
    python download.py --pretrained --list

The zip grows as NAME.zip.part (a rerun resumes it with an HTTP Range request), is renamed when
complete, tested, unpacked into a temporary folder and renamed into place (a full disk keeps the .part,
or the zip: the same command goes on once there is room). Refused, with nothing
extracted: entries that would land outside the target, entries that conflict (a file where another
needs a folder), a zip without trainA/ and trainB/, and one that unpacks to more than MAX_EXPANSION
times its size (a zip bomb) unless --max-unpacked-gb allows it. --url takes http:// and https:// only.
A pretrained generator is renamed into place only once it reads as one (pretrained.py, no TensorFlow).
"""
import argparse
import errno
import http.client
import logging
import os
import shutil
import stat
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile

from cli import HelpFormatter, UsageError, positive_float, run_cli
import pretrained

log = logging.getLogger("cyclegan")

DATASETS = ("apple2orange", "summer2winter_yosemite", "horse2zebra", "monet2photo", "cezanne2photo",
            "ukiyoe2photo", "vangogh2photo", "maps", "cityscapes", "facades", "iphone2dslr_flower", "ae_photos")
DATASET_URL = "http://efrosgans.eecs.berkeley.edu/cyclegan/datasets/{name}.zip"  # the reference's address
# The generators of the reference's scripts/download_cyclegan_model.sh, one direction each (style_*: photo
# to painting), and their address there.
PRETRAINED = ("apple2orange", "orange2apple", "summer2winter_yosemite", "winter2summer_yosemite", "horse2zebra",
              "zebra2horse", "monet2photo", "style_monet", "style_cezanne", "style_ukiyoe", "style_vangogh", "sat2map",
              "map2sat", "cityscapes_photo2label", "cityscapes_label2photo", "facades_photo2label",
              "facades_label2photo", "iphone2dslr_flower")
PRETRAINED_URL = "http://efrosgans.eecs.berkeley.edu/cyclegan/pretrained_models/{name}.pth"
ROOTS = {"dataset": "datasets", "pretrained": "pretrained"}  # where each kind goes without --root
DOWNLOAD_TIMEOUT = 60
DOWNLOAD_RETRIES = 3
DOWNLOAD_CHUNK = 1 << 16
PLAIN_EVERY = 10_000_000  # bytes between plain progress lines when the total is unknown
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # errors that making room mends
MAX_EXPANSION = 100  # image datasets barely compress; a zip that unpacks to 100x its size is no dataset
TRAIN_FOLDERS = ("trainA", "trainB")


class DownloadProgress:
    """Bytes so far / total, a bar, and the speed of this session: one self-overwriting line on a
    terminal; anywhere else (a log file, a pipe) a plain line at each tenth of the total (of each
    PLAIN_EVERY bytes when the total is unknown), as cli.Progress does, and one at the end."""

    def __init__(self, stream, label, start, total):
        self.stream, self.label, self.start, self.total = stream, label, start, total
        self.started = self.shown = time.monotonic()
        self.terminal = stream.isatty()
        self.shown_done = start

    def update(self, done, final=False):
        now = time.monotonic()
        if self.terminal:
            due = final or now - self.shown >= 0.25
        else:
            every = self.total / 10 if self.total else PLAIN_EVERY
            due = done // every > self.shown_done // every or final and done > self.shown_done
        if not due:
            return
        self.shown, self.shown_done = now, done
        speed = (done - self.start) / max(now - self.started, 1e-6) / 1e6
        if self.total:
            filled = int(30 * done / self.total)
            size = f"{done / 1e6:.1f}/{self.total / 1e6:.1f} MB [{'#' * filled}{'.' * (30 - filled)}]"
        else:
            size = f"{done / 1e6:.1f} MB"
        line = f"{self.label}  {size}  {speed:.2f} MB/s"
        self.stream.write(f"\r{line}" + ("\n" if final else "") if self.terminal else f"{line}\n")
        self.stream.flush()


def _fetch_once(url, partial, progress):
    """Appends the rest of `url` to `partial` (all of it when the server ignores the Range asked for)."""
    have = os.path.getsize(partial) if os.path.exists(partial) else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # the partial file is no prefix of what is there now
            os.remove(partial)
            return _fetch_once(url, partial, progress)
        raise UsageError(f"download failed (HTTP {error.code} {error.reason}): {url}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", None) or error
        raise UsageError(f"download failed ({reason}): {url}") from None
    with response:
        resumed = have and response.status == 206
        if not resumed:
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length else None
        bar = DownloadProgress(progress, os.path.basename(partial)[:-len(".part")], have, total)
        done = have
        try:  # unbuffered: the write that fills the disk fails, not the close after the loop
            part = open(partial, "ab" if resumed else "wb", buffering=0)
        except OSError as error:
            raise cannot_write(partial, error, url) from None
        with part:
            while chunk := response.read(DOWNLOAD_CHUNK):
                append(part, chunk, url)
                done += len(chunk)
                bar.update(done)
        bar.update(done, final=True)
        cut = done < total if total is not None else cut_inside_a_zip(partial)
        if cut:
            raise http.client.IncompleteRead(b"")


def cannot_write(partial, error, url):
    """The UsageError for a .part file that cannot be written (a full disk): no connection problem,
    so fetch does not retry it; what was written stays for the next run."""
    kept = os.path.getsize(partial) if os.path.exists(partial) else 0
    return UsageError(f"{partial}: cannot write the download ({error.strerror or error}); {kept} bytes kept, "
                      f"make room, then run the same command to resume: {url}")


def append(part, chunk, url):
    """Writes all of `chunk` to the unbuffered file `part` (a write may take only some of it as the disk
    fills up)."""
    view = memoryview(chunk)
    try:
        while view:
            view = view[part.write(view):]
    except OSError as error:
        raise cannot_write(part.name, error, url) from None


def cut_inside_a_zip(path):
    """Whether a download of unknown length ended inside a zip: its start is there, its end record
    is not. (Without a Content-Length a dropped connection looks like the end of the file.)"""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04" and not zipfile.is_zipfile(path)


def fetch(url, path, progress=sys.stderr, check=None):
    """Downloads `url` to `path`, growing PATH.part and renaming it only when complete (and, with
    `check`, once check(PATH.part) raised no UsageError; a failing .part is removed). A cut
    connection is resumed with an HTTP Range request, here and on the next call; a full disk is a
    UsageError (see cannot_write), the .part kept for the next call."""
    partial = f"{path}.part"
    for attempt in range(DOWNLOAD_RETRIES + 1):
        try:
            _fetch_once(url, partial, progress)
            break
        except (http.client.HTTPException, OSError) as error:
            kept = os.path.getsize(partial) if os.path.exists(partial) else 0
            if attempt == DOWNLOAD_RETRIES:
                raise UsageError(f"download cut off ({type(error).__name__}) with {kept} bytes kept in {partial}, "
                                 f"run the same command to resume: {url}") from None
            log.warning("connection lost (%s); resuming at byte %d", type(error).__name__, kept)
            time.sleep(attempt)
    if check:
        try:
            check(partial)
        except UsageError:
            os.remove(partial)
            raise
    os.replace(partial, path)
    return path


def unsafe_entry(info):
    """Why a zip entry may not be extracted (a link, an absolute path, a way out with ..), or None."""
    name = info.filename.replace("\\", "/")
    if stat.S_ISLNK(info.external_attr >> 16):
        return "a symbolic link"
    if name.startswith("/") or name[1:2] == ":":
        return "an absolute path"
    if ".." in name.split("/"):
        return "a path that leaves the target folder"
    return None


def check_url(url):
    """UsageError unless `url` is an http:// or https:// address with a host: the only ones fetch can
    resume (Range requests), checked before anything is written."""
    try:
        parts = urllib.parse.urlsplit(url)
        valid = parts.scheme.lower() in ("http", "https") and parts.hostname and parts.port != 0
    except ValueError:  # an unclosed IPv6 address (http://[::1), a port that is no number from 0 to 65535
        valid = False
    if not valid:
        raise UsageError(f"--url {url or repr(url)}: expected an http:// or https:// URL")


def folder_conflict(names):
    """(entry, file entry) for the first entry that needs a folder where another entry is a file
    (cf/trainA/x.png beside a file cf/trainA), or None: such a zip cannot be extracted as it is."""
    def parts(name):
        return [part for part in name.split("/") if part not in ("", ".")]

    files = {"/".join(parts(name)): name for name in names if not name.endswith("/")}
    for name in names:
        path = parts(name)
        folders = range(1, len(path) + 1) if name.endswith("/") else range(1, len(path))
        for end in folders:
            if "/".join(path[:end]) in files:
                return name, files["/".join(path[:end])]
    return None


def dataset_prefix(names):
    """Where trainA/ and trainB/ (each with a file) are in a zip of these entry names: "TOP/" for one
    top folder (as in the official zips), "" for the zip's top, None when in neither."""
    tops = {n.split("/")[0] for n in names} - {"__MACOSX"}
    for prefix in ([f"{tops.pop()}/"] if len(tops) == 1 else []) + [""]:
        if all(any(n.startswith(f"{prefix}{folder}/") and not n.endswith("/") for n in names)
               for folder in TRAIN_FOLDERS):
            return prefix
    return None


def extract(zf, folder, limit, error_message):
    """Writes the zip's entries under `folder`, raising UsageError(error_message) before more than
    `limit` bytes are written in all: counted as written, since an entry's declared size can lie. An
    OSError carries the entry it failed on as its `entry` (its path is in a temporary folder)."""
    written = 0
    for info in zf.infolist():
        path = os.path.join(folder, info.filename)
        try:
            if info.is_dir():
                os.makedirs(path, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with zf.open(info) as source, open(path, "wb") as destination:
                while chunk := source.read(DOWNLOAD_CHUNK):
                    written += len(chunk)
                    if written > limit:
                        raise UsageError(error_message)
                    destination.write(chunk)
        except OSError as error:
            error.entry = info.filename
            raise


def size_text(size):
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} KB"


def unpack(archive, target, url, max_unpacked_gb=None):
    """Tests the zip and unpacks it into a temporary folder that becomes `target` only when complete.

    A zip whose single top folder holds everything (as the official ones) becomes `target` itself.
    Nothing is written if any entry is unsafe (see unsafe_entry), if there is no trainA/ and trainB/,
    or if it would unpack to more than `max_unpacked_gb` (default: MAX_EXPANSION times the zip's
    size). The archive is removed either way, unless the disk filled up or Ctrl-C came: then the next
    run unpacks it without downloading it again.
    """
    keep_archive = False
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                reason = unsafe_entry(info)
                if reason:
                    raise UsageError(f"{archive}: refusing the entry {info.filename!r}, {reason}; "
                                     f"nothing extracted (from {url})")
            conflict = folder_conflict(zf.namelist())
            if conflict:
                raise UsageError(f"{archive}: the entry {conflict[0]!r} needs a folder where the entry "
                                 f"{conflict[1]!r} is a file; nothing extracted (from {url})")
            prefix = dataset_prefix(zf.namelist())
            if prefix is None:
                raise UsageError(f"{archive}: no dataset in this zip, expected trainA/ and trainB/ with images "
                                 f"(at its top or in its one top folder); nothing extracted (from {url})")
            size = os.path.getsize(archive)
            limit = MAX_EXPANSION * size if max_unpacked_gb is None else max_unpacked_gb * 1e9
            allowed = (f"{MAX_EXPANSION}x the {size_text(size)} zip (--max-unpacked-gb raises it)"
                       if max_unpacked_gb is None else f"--max-unpacked-gb {max_unpacked_gb:g}")
            declared = sum(info.file_size for info in zf.infolist())
            if declared > limit:
                raise UsageError(f"{archive}: would unpack to {size_text(declared)}, more than {allowed}; "
                                 f"nothing extracted (from {url})")
            damaged = zf.testzip()
            if damaged:
                raise UsageError(f"{archive}: the entry {damaged!r} is damaged (CRC mismatch): {url}")
            staging = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.", dir=os.path.dirname(target) or ".")
            try:
                extract(zf, staging, limit, f"{archive}: unpacks to more than its entries declare, more than "
                                            f"{allowed}; nothing kept (from {url})")
                os.replace(os.path.join(staging, prefix), target)
            except OSError as error:
                if not getattr(error, "entry", None):
                    raise
                if error.errno in DISK_FULL:
                    keep_archive = True
                    raise UsageError(f"{archive}: cannot extract the entry {error.entry!r} ({error.strerror}); "
                                     "removed what was extracted and kept the zip: make room, then run the same "
                                     f"command (the zip is not downloaded again) (from {url})") from None
                raise UsageError(f"{archive}: cannot extract the entry {error.entry!r} ({error.strerror}); "
                                 f"nothing kept (from {url})") from None
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except (zipfile.BadZipFile, EOFError) as error:
        raise UsageError(f"the download is not a complete zip file ({error}): {url}") from None
    except KeyboardInterrupt:  # Ctrl-C while unpacking: the complete zip stays for the next run
        keep_archive = True
        raise
    finally:
        if not keep_archive:
            os.remove(archive)
    return target


def download_target(root, name, target_name, plain, holds):
    """ROOT/TARGET_NAME once NAME is a plain name and ROOT no file; an existing target is said to be
    kept, never downloaded over."""
    if name in ("", ".", "..") or "/" in name or os.sep in name:
        raise UsageError(f"{name!r}: expected a plain {plain}")
    if os.path.exists(root) and not os.path.isdir(root):
        raise UsageError(f"--root {root}: is a file, expected a folder for {holds}")
    target = os.path.join(root, target_name)
    if os.path.exists(target):
        log.info("%s is already there; delete it to download again", target)
    return target


def download_dataset(name, root="datasets", url=None, progress=sys.stderr, max_unpacked_gb=None):
    """Downloads and unpacks a dataset into ROOT/NAME, which appears only complete; returns its path.

    Without `url` NAME must be an official one and comes from the reference's address. An existing
    ROOT/NAME is left as it is. `max_unpacked_gb`: see unpack.
    """
    if url is not None:
        check_url(url)
    elif name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}: python download.py --list shows the names "
                         "(or give --url)")
    target = download_target(root, name, name, "folder name for the dataset", "the datasets")
    if os.path.exists(target):
        return target
    url = DATASET_URL.format(name=name) if url is None else url
    os.makedirs(root, exist_ok=True)
    archive = os.path.join(root, f"{name}.zip")
    if not os.path.isfile(archive):
        fetch(url, archive, progress)
    return unpack(archive, target, url, max_unpacked_gb)


def download_pretrained(name, root=ROOTS["pretrained"], url=None, progress=sys.stderr):
    """Downloads the reference's pretrained generator NAME into ROOT/NAME.pth, which appears only complete
    and readable as a CycleGAN generator; returns its path. Without `url` NAME must be one of PRETRAINED.
    An existing ROOT/NAME.pth is left as it is."""
    if url is not None:
        check_url(url)
    elif name not in PRETRAINED:
        raise UsageError(f"unknown pretrained model {name!r}, expected one of: {', '.join(PRETRAINED)} "
                         "(or give --url)")
    target = download_target(root, name, f"{name}.pth", "file name for the model", "the pretrained models")
    if os.path.exists(target):
        return target
    url = PRETRAINED_URL.format(name=name) if url is None else url
    os.makedirs(root, exist_ok=True)

    def check(path):
        try:
            pretrained.generator_weights(path, pretrained.read_state_dict(path))
        except UsageError as error:
            raise UsageError(f"the download is not a CycleGAN generator ({error}); removed it: {url}") from None

    return fetch(url, target, progress, check)


def build_parser():
    p = argparse.ArgumentParser(description="Download and unpack an official CycleGAN dataset into ROOT/NAME/, "
                                            "or (--pretrained) one of the reference's pretrained PyTorch generators "
                                            "into ROOT/NAME.pth, which generate.py, convert.py and train.py "
                                            "--start-ab take.",
                                formatter_class=HelpFormatter)
    p.add_argument("name", nargs="?", help="dataset name, or with --pretrained model name (see --list)")
    p.add_argument("--pretrained", action="store_true",
                   help="download the pretrained generator NAME (one direction, e.g. horse2zebra or zebra2horse; "
                        "style_*: photo to painting) instead of a dataset")
    p.add_argument("--list", action="store_true", help="print the official dataset names (with --pretrained: "
                                                       "the model names) and exit")
    p.add_argument("--root", help=f"folder that receives ROOT/NAME/ (default: {ROOTS['dataset']}), or "
                                  f"ROOT/NAME.pth with --pretrained (default: {ROOTS['pretrained']})")
    p.add_argument("--url", help="address of the file to download, e.g. a mirror (default: the official "
                                 "address of NAME)")
    p.add_argument("--max-unpacked-gb", type=positive_float, metavar="GB",
                   help=f"refuse a zip that unpacks to more (default: {MAX_EXPANSION} times the zip's size)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    kind = "pretrained" if args.pretrained else "dataset"
    if args.list:
        print("\n".join(PRETRAINED if args.pretrained else DATASETS))
        return
    if not args.name:
        raise UsageError(f"give a {'model' if args.pretrained else 'dataset'} NAME (python download.py "
                         f"{'--pretrained ' if args.pretrained else ''}--list shows them)")
    root = args.root or ROOTS[kind]
    if args.pretrained:
        if args.max_unpacked_gb is not None:
            raise UsageError("--max-unpacked-gb: applies to datasets (zips), not to --pretrained")
        path = download_pretrained(args.name, root, args.url)
        print(f"generator ready: {path}\n  translate with: python generate.py --generator {path} "
              "--input PHOTOS --output OUT")
        return
    print(f"dataset ready: {download_dataset(args.name, root, args.url, max_unpacked_gb=args.max_unpacked_gb)}")


if __name__ == "__main__":
    run_cli(main, "download.py", "interrupted; run the same command again to resume the download")
