"""`python download.py`, against zips this test builds and serves from http.server on 127.0.0.1:
a good one, a truncated one, hostile ones, a connection cut mid-file, a 404, a page that is no zip."""
import io
import os
import socket
import stat
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import data
import download
import cli

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


GOOD = build_zip(FILES)
ANSWERS = {
    "/good.zip": GOOD,
    "/cut.zip": GOOD,
    "/norange.zip": GOOD,
    "/truncated.zip": GOOD[: len(GOOD) * 6 // 10],
    "/evil.zip": build_zip({"mini/trainA/0.png": b"ok", "../evil.txt": b"gotcha"}),
    "/absolute.zip": build_zip({"mini/trainA/0.png": b"ok", "/tmp/absolute_evil.txt": b"gotcha"}),
    "/link.zip": build_zip({"mini/trainA/0.png": b"ok", symlink_entry("mini/trainA/link.png"): b"/etc/passwd"}),
    "/page.zip": b"<html><body>Moved to our new site</body></html>",
}
CUT_AT = len(GOOD) // 3


class Handler(BaseHTTPRequestHandler):
    """Serves ANSWERS with Range support, except /norange.zip (always all of it) and /cut.zip, whose
    first answer promises the whole file but the connection drops after CUT_AT bytes."""
    ranges = []
    cut_done = set()

    def do_GET(self):
        body = ANSWERS.get(self.path)
        if body is None:
            self.send_error(404)
            return
        asked = self.headers.get("Range")
        self.ranges.append((self.path, asked))
        start = int(asked[len("bytes="):].rstrip("-")) if asked and self.path != "/norange.zip" else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if self.path == "/cut.zip" and self.path not in self.cut_done:
            self.cut_done.add(self.path)
            self.wfile.write(body[:CUT_AT])
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


def test_a_good_zip_is_unpacked_into_place_with_a_progress_line(server, root):
    progress = io.StringIO()
    target = download.download_dataset("mini", str(root), f"{server}/good.zip", progress)
    assert target == str(root / "mini")
    assert_unpacked(root / "mini")
    assert os.listdir(root) == ["mini"]
    last = progress.getvalue().split("\r")[-1]
    assert last.startswith(f"mini.zip  {len(GOOD) / 1e6:.1f}/{len(GOOD) / 1e6:.1f} MB [{'#' * 30}]")
    assert last.rstrip().endswith("MB/s")


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
    assert "\n" not in message
    assert os.listdir(root) == []
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
