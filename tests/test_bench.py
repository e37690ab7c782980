import json
import math
import sys
import tempfile

import numpy as np
import pytest

import bench
import cli
import networks

from conftest import TINY

BENCH_TINY = [*TINY, "--steps", "2", "--warmup", "0", "--pipeline-images", "8", "--rounds", "2"]


def numbers(report, prefix=""):
    """Every leaf of the report that should be a measurement, as (name, value)."""
    for key, value in report.items():
        if isinstance(value, dict):
            yield from numbers(value, f"{prefix}{key}.")
        elif isinstance(value, list):
            yield from numbers(dict(enumerate(value)), f"{prefix}{key}.")
        elif key not in ("config", "tensorflow", "onednn", "jit", "policy", "version", "warmup", "device", "threads"):
            yield f"{prefix}{key}", value


def test_bench_reports_every_figure_as_a_positive_number(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    bench.main([*BENCH_TINY, "--deterministic"])
    printed = capsys.readouterr().out
    last = printed.strip().splitlines()[-1]
    assert last.startswith("BENCH ")
    report = json.loads(last[len("BENCH "):])
    assert (report["image_size"], report["ngf"], report["n_res_blocks"], report["steps"]) == (32, 4, 1, 2)
    assert report["policy"] == "float32"
    expected = {"loop.median_s", "loop.min_s", "loop.max_s", "loop.peak_rss_mb", "fused.median_s",
                "loop_over_fused", "loop_deterministic.median_s", "deterministic_over_loop", "flops.iteration_gflop", "flops.matmul_gflops", "flops.conv3x3_gflops",
                "flops.loop_gflops", "inference.batch1_images_per_s", "inference.batch8_images_per_s",
                "pipeline.images_per_s", "pipeline.training_consumes_images_per_s", "peak_rss_mb"}
    values = dict(numbers(report))
    assert expected <= set(values)
    for name, value in values.items():
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (name, value)
    assert report["loop"]["min_s"] <= report["loop"]["median_s"] <= report["loop"]["max_s"]
    assert report["rounds"] == 2 and len(report["round_ratios"]["loop_over_fused"]) == 2
    for ratio in ("loop_over_fused", "deterministic_over_loop"):
        assert report[ratio] == pytest.approx(float(np.median(report["round_ratios"][ratio])))
        assert len(report["round_ratios"][ratio]) == 2
    consumed = report["pipeline"]["training_consumes_images_per_s"]
    assert consumed == pytest.approx(2 / report["loop"]["median_s"])
    assert "project loop (CycleGAN.train_step)" in printed and "fused GradientTape step" in printed
    assert "project loop, op determinism on" in printed and "deterministic / loop" in printed


def test_conv_macs_counts_each_convolution_of_the_discriminator():
    discriminator = networks.build_discriminator(8, "book", False, 0.02)
    # 32 -> 16 -> 8 -> 4 -> 2 through the stride-2 4x4 convs, then a 4x4 valid conv on the padded 2x2.
    expected = (16 * 16 * 16 * 3 * 8 + 8 * 8 * 16 * 8 * 16 + 4 * 4 * 16 * 16 * 32
                + 2 * 2 * 16 * 32 * 64 + 1 * 1 * 16 * 64 * 1)
    assert bench.conv_macs(discriminator, 32, 32) == expected
    assert bench.conv_macs(discriminator, 32, 32, batch=3) == 3 * expected


def test_torch_comparison_refuses_a_resized_config():
    with pytest.raises(cli.UsageError, match="--image-size"):
        bench.parse_config(["--torch", sys.executable, "--image-size", "64"])


def test_torch_comparison_refuses_a_missing_interpreter(tmp_path):
    with pytest.raises(cli.UsageError, match="no such interpreter"):
        bench.parse_config(["--torch", str(tmp_path / "python")])


def test_layers_mode_times_every_layer_kind_of_the_networks(capsys):
    bench.main(["--layers", *TINY, "--steps", "1", "--warmup", "0"])
    printed = capsys.readouterr().out
    report = json.loads(printed.strip().splitlines()[-1][len("BENCH "):])
    rows = report["rows"]
    kinds = {row["kind"] for row in rows}
    assert kinds == {"identity", "conv", "upconv", "norm", "resblock", "disc", "adam"}
    for row in rows:
        timings = row["tf"]
        assert timings["fwdbwd_ms"] > 0 and row["count"] > 0, row["name"]
        assert (timings["fwd_ms"] is None) == (row["kind"] == "adam"), row["name"]
        if timings["fwd_ms"] is not None:
            assert timings["fwd_ms"] > 0, row["name"]
        assert timings["per_iteration_ms"] == pytest.approx(row["count"] * timings["fwdbwd_ms"])
    by_name = {row["name"]: row for row in rows}
    # TINY: 32 px, ngf 4, 1 block, the book discriminator (4 stride-2 convs of ndf 8 .. 64, then the score).
    assert by_name["c7s1 conv 7x7 reflect"]["shape"] == [32, 32, 3]
    assert by_name["c7s1 conv 7x7 reflect"]["tf"]["out_shape"] == [32, 32, 4]
    assert by_name["up2 transposed conv 3x3 s2"]["tf"]["out_shape"] == [32, 32, 4]
    assert by_name["res conv 3x3 reflect"]["count"] == 2 * 6
    assert by_name["D score 4x4 s1"]["shape"] == [2, 2, 64]
    assert by_name["D score 4x4 s1"]["tf"]["out_shape"] == [1, 1, 1]
    assert not by_name["residual block (whole)"]["summed"]
    summed = sum(row["tf"]["per_iteration_ms"] for row in rows if row["summed"])
    assert report["total_ms"]["tf"] == pytest.approx(summed)
    calls = sum(row["count"] for row in rows if row["summed"])
    overhead = by_name["call overhead (identity)"]["tf"]["fwdbwd_ms"]
    assert report["net_total_ms"]["tf"] == pytest.approx(summed - calls * overhead)
    assert "torch" not in report and "total per iteration" in printed


def test_layers_mode_refuses_options_it_does_not_time():
    with pytest.raises(cli.UsageError, match="--layers .*--jit"):
        bench.parse_config(["--layers", "--jit"])
