"""`python download.py`, against zips this test builds and serves from http.server on 127.0.0.1:
a good one, a truncated one, hostile ones, a zip bomb, one that is no dataset, a connection cut
mid-file (with and without a Content-Length), a 404, a page that is no zip, a full disk; and `--pretrained`
against PyTorch generators from tests/fixtures/: a good one, one cut mid-file, a discriminator."""
import errno
import functools
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import io
import os
from pathlib import Path
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import zipfile

import numpy as np
import pytest

import cli
import download
from conftest import cli_error

REPO = Path(__file__).resolve().parent.parent
FILES = {"mini/trainA/0.png": np.random.default_rng(0).bytes(300_000),
         "mini/trainB/0.png": np.random.default_rng(1).bytes(200_000),
         "mini/testA/0.png": b"a", "mini/testB/0.png": b"b"}


def build_zip(entries):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name if isinstance(name, zipfile.ZipInfo) else zipfile.ZipInfo(name), content)
    return buffer.getvalue()


def symlink_entry(name):
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def zeros_zip(megabytes):
    """A dataset-shaped zip whose trainA image is `megabytes` MB of zeros: about 1000x smaller."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("mini/trainA/0.png", "w") as entry:
            for _ in range(megabytes):
                entry.write(bytes(1_000_000))
        archive.writestr("mini/trainB/0.png", b"b")
    return buffer.getvalue()


zip_bomb = functools.cache(lambda: zeros_zip(100))  # 0.1 MB -> 100 MB, built when first served


def lying_zip():
    """A zip whose trainA entry declares 1000 bytes (in both headers) and holds 1 MB of zeros."""
    archive = bytearray(zeros_zip(1))
    central = archive.find(b"PK\x01\x02")
    struct.pack_into("<I", archive, 22, 1000)  # the local header's uncompressed size
    struct.pack_into("<I", archive, central + 24, 1000)  # the central directory's
    return bytes(archive)


GOOD = build_zip(FILES)
FIXTURES = REPO / "tests" / "fixtures"
GENERATOR = (FIXTURES / "reference_legacy.pth").read_bytes()
ANSWERS = {
    **dict.fromkeys(("/good.zip", "/cut.zip", "/norange.zip", "/nolength.zip", "/stuck.zip"), GOOD),
    "/truncated.zip": GOOD[: len(GOOD) * 6 // 10],
    "/evil.zip": build_zip({"mini/trainA/0.png": b"ok", "../evil.txt": b"gotcha"}),
    "/absolute.zip": build_zip({"mini/trainA/0.png": b"ok", "/tmp/absolute_evil.txt": b"gotcha"}),
    "/link.zip": build_zip({"mini/trainA/0.png": b"ok", symlink_entry("mini/trainA/link.png"): b"/etc/passwd"}),
    "/page.zip": b"<html><body>Moved to our new site</body></html>",
    "/bomb.zip": zip_bomb,
    "/zeros.zip": zeros_zip(2),
    "/lying.zip": lying_zip(),
    "/photos.zip": build_zip({"photos/0.png": b"a", "photos/1.png": b"b"}),
    "/flat.zip": build_zip({name.split("/", 1)[1]: content for name, content in FILES.items()}),
    "/conflict.zip": build_zip({"cf/trainA": b"a file", "cf/trainA/0.png": b"a", "cf/trainB/0.png": b"b"}),
    "/conflict_folder_first.zip": build_zip({"cf/trainA/0.png": b"a", "cf/trainA": b"a file", "cf/trainB/0.png": b"b"}),
    "/conflict_folder_entry.zip": build_zip({"cf/trainA": b"a file", "cf/trainA/": b"", "cf/trainB/0.png": b"b"}),
    "/long_name.zip": build_zip({f"cf/trainA/{'x' * 300}.png": b"a", "cf/trainB/0.png": b"b"}),
    "/generator.pth": GENERATOR,
    "/cut.pth": GENERATOR,
    "/discriminator.pth": (FIXTURES / "discriminator_zip.pth").read_bytes(),
}
CUT_AT = len(GOOD) // 3
CUT_ONCE = {"/cut.zip": CUT_AT, "/nolength.zip": CUT_AT, "/cut.pth": len(GENERATOR) // 3}
NO_RANGE = ("/norange.zip", "/stuck.zip")
NO_LENGTH = ("/nolength.zip", "/stuck.zip")


class Handler(BaseHTTPRequestHandler):
    """Serves ANSWERS with Range support, except NO_RANGE (always all of it) and with a Content-Length,
    except NO_LENGTH. /cut.zip's first answer promises the whole file but the connection drops after
    CUT_AT bytes; so does /nolength.zip's first answer, and every answer of /stuck.zip. /cut.pth's
    first answer drops after a third of the file (CUT_ONCE)."""
    ranges = []
    cut_done = set()

    def do_GET(self):
        body = ANSWERS.get(self.path)
        if body is None:
            self.send_error(404)
            return
        body = body() if callable(body) else body
        asked = self.headers.get("Range")
        self.ranges.append((self.path, asked))
        start = int(asked[len("bytes="):].rstrip("-")) if asked and self.path not in NO_RANGE else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        if self.path not in NO_LENGTH:
            self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if self.path in CUT_ONCE and self.path not in self.cut_done or self.path == "/stuck.zip":
            self.cut_done.add(self.path)
            self.wfile.write(body[:CUT_ONCE.get(self.path, CUT_AT)])
            self.close_connection = True
            return
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def root(tmp_path):
    (tmp_path / "datasets").mkdir()
    Handler.ranges.clear()
    Handler.cut_done.clear()
    return tmp_path / "datasets"


def assert_unpacked(folder):
    for name, content in FILES.items():
        assert (folder / name.split("/", 1)[1]).read_bytes() == content


def test_a_good_zip_is_unpacked_into_place(server, root):
    target = download.download_dataset("mini", str(root), f"{server}/good.zip", io.StringIO())
    assert target == str(root / "mini")
    assert_unpacked(root / "mini")
    assert os.listdir(root) == ["mini"]


def test_a_connection_cut_mid_file_is_resumed_with_a_range_request(server, root):
    download.download_dataset("mini", str(root), f"{server}/cut.zip", io.StringIO())
    assert Handler.ranges == [("/cut.zip", None), ("/cut.zip", f"bytes={CUT_AT}-")]
    assert_unpacked(root / "mini")
    assert os.listdir(root) == ["mini"]


def test_a_partial_file_from_an_earlier_run_is_resumed(server, root):
    (root / "mini.zip.part").write_bytes(GOOD[:CUT_AT])
    download.download_dataset("mini", str(root), f"{server}/good.zip", io.StringIO())
    assert Handler.ranges == [("/good.zip", f"bytes={CUT_AT}-")]
    assert_unpacked(root / "mini")


def test_a_server_that_ignores_range_makes_the_download_restart_cleanly(server, root):
    (root / "mini.zip.part").write_bytes(GOOD[:CUT_AT])
    download.download_dataset("mini", str(root), f"{server}/norange.zip", io.StringIO())
    assert_unpacked(root / "mini")
    assert os.listdir(root) == ["mini"]


@pytest.mark.parametrize("path, expected", [
    ("/truncated.zip", "the download is not a complete zip file"),
    ("/page.zip", "the download is not a complete zip file"),
    ("/evil.zip", "refusing the entry '../evil.txt', a path that leaves the target folder; nothing extracted"),
    ("/absolute.zip", "refusing the entry '/tmp/absolute_evil.txt', an absolute path; nothing extracted"),
    ("/link.zip", "refusing the entry 'mini/trainA/link.png', a symbolic link; nothing extracted"),
    ("/missing.zip", "download failed (HTTP 404 Not Found)"),
])
def test_a_bad_answer_is_one_line_naming_the_url_and_leaves_nothing(server, root, path, expected):
    with pytest.raises(cli.UsageError) as error:
        download.download_dataset("mini", str(root), f"{server}{path}", io.StringIO())
    message = str(error.value)
    assert expected in message and message.endswith(f"{server}{path})" if "entry" in expected else f"{server}{path}")
    assert "\n" not in message and os.listdir(root) == []
    assert not (root.parent / "evil.txt").exists() and not Path("/tmp/absolute_evil.txt").exists()


def test_no_network_is_one_line_naming_the_url(root):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{closed_port}/mini.zip"
    with pytest.raises(cli.UsageError, match=r"^download failed \(.*refused.*\): " + url):
        download.download_dataset("mini", str(root), url, io.StringIO())
    assert os.listdir(root) == []


def test_names_and_existing_datasets(root, capsys):
    download.main(["--list"])
    assert capsys.readouterr().out.split() == list(download.DATASETS)
    assert "horse2zebra" in download.DATASETS and len(download.DATASETS) == 12
    with pytest.raises(cli.UsageError, match="unknown dataset 'horse2giraffe'.*--list"):
        download.download_dataset("horse2giraffe", str(root))
    (root / "horse2zebra").mkdir()
    (root / "horse2zebra" / "mine.txt").write_text("kept")
    assert download.download_dataset("horse2zebra", str(root), "http://127.0.0.1:9/unused.zip") == str(root / "horse2zebra")
    assert os.listdir(root / "horse2zebra") == ["mine.txt"]


def test_the_command_line_downloads_and_fails_without_a_traceback(server, root):
    """Two real processes side by side: one download that works, one 404."""
    commands = {"good": [f"{server}/good.zip", "ok"], "missing": [f"{server}/missing.zip", "fail"]}
    processes = {name: subprocess.Popen([sys.executable, "download.py", name, "--root", str(root),
                                         "--url", url], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
                 for name, (url, _) in commands.items()}
    good_out, good_err = processes["good"].communicate(timeout=120)
    missing_out, missing_err = processes["missing"].communicate(timeout=120)
    assert processes["good"].returncode == 0 and f"dataset ready: {root / 'good'}" in good_out
    assert "MB/s" in good_err
    assert (root / "good" / "trainA" / "0.png").read_bytes() == FILES["mini/trainA/0.png"]
    assert processes["missing"].returncode == 1 and "Traceback" not in missing_err
    assert missing_err.strip().splitlines()[-1] == \
        f"download.py: error: download failed (HTTP 404 Not Found): {server}/missing.zip"
    assert sorted(os.listdir(root)) == ["good"]


def run_download(*args):
    return subprocess.run([sys.executable, "download.py", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


class FillingFile(io.FileIO):
    """A file on a disk with `room` bytes left for all files: a write takes what fits, the next fails (ENOSPC)."""
    room = 0

    def write(self, data):
        if not FillingFile.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        taken = min(len(data), FillingFile.room)
        FillingFile.room -= taken
        return super().write(data[:taken])


def test_a_full_disk_keeps_what_was_written_and_says_to_make_room(server, root, monkeypatch):
    """Downloading: no connection problem (no retry), the .part kept; unpacking (full disk, Ctrl-C): the zip kept."""
    url, part, archive = f"{server}/good.zip", root / "mini.zip.part", root / "mini.zip"
    argv = ["mini", "--root", str(root), "--url", url]
    monkeypatch.setattr(download, "open", lambda path, mode="r", **options: open(path, mode, **options)
                        if "r" in mode else FillingFile(path, mode), raising=False)  # download.py's files fill it
    FillingFile.room = CUT_AT
    assert cli_error(download.main, argv) == (
        f"download.py: error: {part}: cannot write the download (No space left on device); {CUT_AT} bytes kept, "
        f"make room, then run the same command to resume: {url}")
    assert part.read_bytes() == GOOD[:CUT_AT] and Handler.ranges == [("/good.zip", None)]
    FillingFile.room = len(GOOD) - CUT_AT + 100_000  # room for the zip, not for its first entry
    assert cli_error(download.main, argv) == (
        f"download.py: error: {archive}: cannot extract the entry 'mini/trainA/0.png' (No space left on device); "
        "removed what was extracted and kept the zip: make room, then run the same command (the zip is not "
        f"downloaded again) (from {url})")
    assert Handler.ranges[1:] == [("/good.zip", f"bytes={CUT_AT}-")] and os.listdir(root) == ["mini.zip"]
    monkeypatch.setattr(download, "extract", lambda *args: signal.raise_signal(signal.SIGINT))  # Ctrl-C instead
    pytest.raises(KeyboardInterrupt, download.main, argv)
    assert os.listdir(root) == ["mini.zip"]  # kept too
    monkeypatch.undo()
    download.main(argv)
    assert len(Handler.ranges) == 2 and os.listdir(root) == ["mini"]
    assert_unpacked(root / "mini")


def test_a_dropped_connection_without_content_length_is_resumed(server, root):
    download.download_dataset("mini", str(root), f"{server}/nolength.zip", io.StringIO())
    assert Handler.ranges == [("/nolength.zip", None), ("/nolength.zip", f"bytes={CUT_AT}-")]
    assert_unpacked(root / "mini")
    assert os.listdir(root) == ["mini"]


@pytest.mark.slow
def test_a_download_that_keeps_dropping_keeps_its_part_file_for_the_next_run(server, root):
    """No Content-Length and every answer cut: the .part stays, and the same command resumes it."""
    url = f"{server}/stuck.zip"
    result = run_download("mini", "--root", str(root), "--url", url)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"download.py: error: download cut off (IncompleteRead) with {CUT_AT} bytes kept in "
        f"{root / 'mini.zip.part'}, run the same command to resume: {url}")
    assert (root / "mini.zip.part").read_bytes() == GOOD[:CUT_AT]
    download.download_dataset("mini", str(root), f"{server}/good.zip", io.StringIO())  # the server is well again
    assert Handler.ranges[-1] == ("/good.zip", f"bytes={CUT_AT}-")
    assert_unpacked(root / "mini")
    assert os.listdir(root) == ["mini"]


def test_a_zip_bomb_is_refused_from_its_directory_before_anything_is_written(server, root):
    url = f"{server}/bomb.zip"
    result = run_download("bomb", "--root", str(root), "--url", url)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"download.py: error: {root / 'bomb.zip'}: would unpack to 100.0 MB, more than 100x the "
        f"{len(zip_bomb()) / 1e3:.1f} KB zip (--max-unpacked-gb raises it); nothing extracted (from {url})")
    assert 900 < 100e6 / len(zip_bomb()) < 1100
    assert os.listdir(root) == []


def test_max_unpacked_gb_sets_the_limit(server, root):
    """A 2 KB zip of 2 MB is refused by default and unpacked with a 0.01 GB limit; a 0.5 MB dataset
    that does not compress is refused with a 0.0001 GB limit."""
    with pytest.raises(cli.UsageError, match=r"zeros\.zip: would unpack to 2\.0 MB, more than 100x the 2\.\d KB zip"):
        download.download_dataset("zeros", str(root), f"{server}/zeros.zip", io.StringIO())
    result = run_download("zeros", "--root", str(root), "--url", f"{server}/zeros.zip", "--max-unpacked-gb", "0.01")
    assert result.returncode == 0, result.stderr
    assert (root / "zeros" / "trainA" / "0.png").read_bytes() == bytes(2_000_000)
    with pytest.raises(cli.UsageError, match=r"would unpack to 500\.0 KB, more than --max-unpacked-gb 0\.0001; "):
        download.download_dataset("mini", str(root), f"{server}/good.zip", io.StringIO(), max_unpacked_gb=0.0001)
    assert os.listdir(root) == ["zeros"]


@pytest.mark.parametrize("limit", ["0", "-1", "inf", "nan", "lots"])
def test_max_unpacked_gb_must_be_a_positive_number(limit, capsys):
    """A limit of 0 would refuse every zip after downloading it: refused before anything is fetched."""
    with pytest.raises(SystemExit) as ended:
        download.build_parser().parse_args(["horse2zebra", "--max-unpacked-gb", limit])
    assert ended.value.code == 2
    assert f"argument --max-unpacked-gb: expected a finite number > 0, got {limit}" in capsys.readouterr().err


def test_what_is_written_is_bounded_whatever_the_entries_declare(server, root, tmp_path):
    with pytest.raises(cli.UsageError, match=r"lying\.zip: the entry 'mini/trainA/0\.png' is damaged"):
        download.download_dataset("lying", str(root), f"{server}/lying.zip", io.StringIO())
    assert os.listdir(root) == []
    with zipfile.ZipFile(io.BytesIO(GOOD)) as archive, pytest.raises(cli.UsageError, match="^too much$"):
        download.extract(archive, str(tmp_path / "out"), 400_000, "too much")
    assert (tmp_path / "out" / "mini" / "trainA" / "0.png").read_bytes() == FILES["mini/trainA/0.png"]
    written = sum(path.stat().st_size for path in (tmp_path / "out").rglob("*") if path.is_file())
    assert 300_000 <= written <= 400_000


def test_a_zip_without_train_folders_is_no_dataset(server, root):
    url = f"{server}/photos.zip"
    with pytest.raises(cli.UsageError) as error:
        download.download_dataset("photos", str(root), url, io.StringIO())
    assert str(error.value) == (f"{root / 'photos.zip'}: no dataset in this zip, expected trainA/ and trainB/ with "
                                f"images (at its top or in its one top folder); nothing extracted (from {url})")
    assert os.listdir(root) == []
    download.download_dataset("flat", str(root), f"{server}/flat.zip", io.StringIO())
    assert_unpacked(root / "flat")
    assert os.listdir(root) == ["flat"]


@pytest.mark.parametrize("path, expected", [
    ("/conflict.zip", "the entry 'cf/trainA/0.png' needs a folder where the entry 'cf/trainA' is a file; "
                      "nothing extracted"),
    ("/conflict_folder_first.zip", "the entry 'cf/trainA/0.png' needs a folder where the entry 'cf/trainA' is "
                                   "a file; nothing extracted"),
    ("/conflict_folder_entry.zip", "the entry 'cf/trainA/' needs a folder where the entry 'cf/trainA' is a file; "
                                   "nothing extracted"),
    ("/long_name.zip", f"cannot extract the entry 'cf/trainA/{'x' * 300}.png' (File name too long); nothing kept"),
], ids=["file_then_folder", "folder_then_file", "folder_entry", "long_name"])
def test_entries_that_cannot_be_written_are_one_line_naming_the_zip_the_entry_and_the_url(server, root, path, expected):
    """Not the temporary folder they would have been extracted into; nothing is left of it."""
    url = f"{server}{path}"
    result = run_download("cf", "--root", str(root), "--url", url)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"download.py: error: {root / 'cf.zip'}: {expected} (from {url})"
    assert os.listdir(root) == []


@pytest.mark.parametrize("url", ["notaurl", "", "file:///etc/passwd", "ftp://127.0.0.1/good.zip", "http://",
                                 "https:///good.zip", "http://[::1/good.zip", "http://127.0.0.1:99999/good.zip"])
def test_a_url_that_is_no_http_address_is_one_line_and_writes_nothing(tmp_path, url):
    """An empty --url is refused too, rather than taken for the official address."""
    root = tmp_path / "downloads"
    for command in (["good"], ["--pretrained", "horse2zebra"]):
        result = run_download(*command, "--root", str(root), "--url", url)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.strip() == f"download.py: error: --url {url or repr(url)}: expected an http:// or " \
                                        "https:// URL"
    assert os.listdir(tmp_path) == []


def test_download_needs_no_tensorflow():
    imports = subprocess.run([sys.executable, "-c", "import download, sys; print('tensorflow' in sys.modules)"],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert imports.stdout.strip() == "False", imports.stderr
    help_text = run_download("--help")
    assert help_text.returncode == 0 and "--max-unpacked-gb" in help_text.stdout
    assert "Traceback" not in help_text.stderr and "(default: the official address of NAME)" in " ".join(
        help_text.stdout.split())


# ---- --pretrained ------------------------------------------------------------------------------

def test_a_pretrained_generator_is_resumed_checked_and_renamed_into_place(server, tmp_path):
    root = tmp_path / "pretrained"
    path = download.download_pretrained("horse2zebra", str(root), f"{server}/cut.pth", io.StringIO())
    assert path == str(root / "horse2zebra.pth")
    assert Handler.ranges[-2:] == [("/cut.pth", None), ("/cut.pth", f"bytes={len(GENERATOR) // 3}-")]
    assert (root / "horse2zebra.pth").read_bytes() == GENERATOR
    assert os.listdir(root) == ["horse2zebra.pth"]
    mine = root / "zebra2horse.pth"
    mine.write_bytes(b"kept")  # an existing file is left as it is, without a download
    assert download.download_pretrained("zebra2horse", str(root), "http://127.0.0.1:9/unused.pth") == str(mine)
    assert mine.read_bytes() == b"kept"


@pytest.mark.parametrize("path, expected", [
    ("/discriminator.pth", "tensor '0.weight' float32 (2, 3, 4, 4) does not fit a CycleGAN ResnetGenerator"),
    ("/page.zip", "not a PyTorch .pth file"),
])
def test_a_download_that_is_no_generator_is_one_line_and_leaves_nothing(server, tmp_path, path, expected):
    root = tmp_path / "pretrained"
    with pytest.raises(cli.UsageError) as error:
        download.download_pretrained("facades_label2photo", str(root), f"{server}{path}", io.StringIO())
    message = str(error.value)
    assert message.startswith(f"the download is not a CycleGAN generator ({root / 'facades_label2photo.pth.part'}: ")
    assert expected in message and message.endswith(f"; removed it: {server}{path}") and "\n" not in message
    assert os.listdir(root) == []


def test_pretrained_names_and_the_command_line(server, tmp_path):
    assert len(download.PRETRAINED) == 18
    assert {"horse2zebra", "zebra2horse", "style_vangogh", "iphone2dslr_flower"} <= set(download.PRETRAINED)
    assert download.PRETRAINED_URL.format(name="horse2zebra") == \
        "http://efrosgans.eecs.berkeley.edu/cyclegan/pretrained_models/horse2zebra.pth"
    listed = run_download("--pretrained", "--list")
    assert listed.returncode == 0 and listed.stdout.split() == list(download.PRETRAINED)
    unknown = run_download("--pretrained", "horse2giraffe")
    assert unknown.returncode == 1 and unknown.stderr.strip() == (
        "download.py: error: unknown pretrained model 'horse2giraffe', expected one of: "
        f"{', '.join(download.PRETRAINED)} (or give --url)")
    fetched = subprocess.run([sys.executable, str(REPO / "download.py"), "--pretrained", "monet2photo", "--url",
                              f"{server}/generator.pth"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert fetched.returncode == 0, fetched.stderr
    path = os.path.join("pretrained", "monet2photo.pth")
    assert fetched.stdout.splitlines() == [
        f"generator ready: {path}",
        f"  translate with: python generate.py --generator {path} --input PHOTOS --output OUT"]
    assert (tmp_path / path).read_bytes() == GENERATOR and sorted(os.listdir(tmp_path)) == ["pretrained"]
