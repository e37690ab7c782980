import io
import os
import re
import subprocess
import sys

import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Clock:
    """time.monotonic for cli, moved by hand: the speed and ETA arithmetic without waiting."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_stream_that_is_not_a_terminal_gets_plain_lines(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(cli.time, "monotonic", clock)
    stream = io.StringIO()
    progress = cli.Progress(10, print_every=4, stream=stream)
    for step in range(1, 11):
        clock.now += 0.5
        progress.update(step, {"D_A": 0.21345, "G": 3.41234, "epoch": "2/9"})
    assert stream.getvalue().splitlines() == [
        "step 4/10  D_A 0.213  G 3.41  epoch 2/9  0.5 s/step  ETA 0:00:03",
        "step 8/10  D_A 0.213  G 3.41  epoch 2/9  0.5 s/step  ETA 0:00:01",
        "step 10/10  D_A 0.213  G 3.41  epoch 2/9  0.5 s/step  took 0:00:05",
    ]
    assert not set("\r\b\x1b") & set(stream.getvalue())


def test_a_resumed_loop_counts_its_speed_from_where_it_started(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(cli.time, "monotonic", clock)
    stream = io.StringIO()
    progress = cli.Progress(20000, unit="image", print_every=1000, stream=stream, start=12345)
    clock.now += 655 * 2.0
    progress.update(13000)
    progress.update(13001)  # no multiple of print_every crossed: no line
    assert stream.getvalue() == "image 13000/20000  2 s/image  ETA 3:53:20\n"


def read_all(master):
    """Everything written to a closed pty: a read returns one chunk of it, then EIO at the end."""
    chunks = []
    try:
        while chunk := os.read(master, 1 << 16):
            chunks.append(chunk)
    except OSError:
        pass
    os.close(master)
    return b"".join(chunks)


def test_a_terminal_gets_keras_progress_bar():
    master, slave = os.openpty()
    with open(slave, "w") as terminal:
        progress = cli.Progress(3, stream=terminal)
        for step in range(1, 4):
            progress.update(step, {"G": 1.5 * step, "epoch": "2/9"})
    shown = read_all(master).decode()
    assert "\r" in shown and "\x1b[" in shown  # Keras' live bar
    assert re.search(r"3/3.* - G: 4\.5000", shown)  # the last value, not the mean
    assert shown.count("epoch 2/9") == 1  # a text gets its own line when it changes


def test_cli_imports_no_tensorflow():
    check = "import sys, cli; assert not {'tensorflow', 'keras'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", check], cwd=ROOT, check=True, timeout=60)


def test_a_download_that_is_not_on_a_terminal_gets_a_plain_line_at_each_tenth_and_the_last_once(tmp_path):
    import download

    source, tenth_size = tmp_path / "served.zip", 10 * download.DOWNLOAD_CHUNK  # a tenth ends with a chunk
    source.write_bytes(bytes(10 * tenth_size))
    stream = io.StringIO()
    download.fetch(source.as_uri(), str(tmp_path / "x.zip"), stream)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and (tmp_path / "x.zip").read_bytes() == source.read_bytes()
    assert [line.split("  ")[:2] for line in lines] == [
        ["x.zip", f"{tenth * tenth_size / 1e6:.1f}/6.6 MB [{'#' * 3 * tenth}{'.' * (30 - 3 * tenth)}]"]
        for tenth in range(1, 11)]
    assert all(line.endswith(" MB/s") for line in lines)
