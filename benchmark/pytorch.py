"""bench.py's side of the PyTorch yardstick: benchmark/torch_step.py run by another interpreter, in a process
of its own, on the device the Keras backend computes on. Any backend: nothing here imports TensorFlow,
and torch is imported only by that interpreter.
"""
import json
import os
import subprocess

from cli import UsageError

TORCH_STEP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_step.py")


def torch_env(device):
    """PyTorch's threads (TORCH_THREADS if set, else one per CPU, as TensorFlow takes them) and device
    (TORCH_DEVICE, read by benchmark/torch_layers.py)."""
    return dict(os.environ, TORCH_THREADS=os.environ.get("TORCH_THREADS", str(os.cpu_count())), TORCH_DEVICE=device)


def run_torch_step(python, config, steps, warmup, device):
    """The PyTorch step at `config`'s sizes (float32, batch 1) timed by torch_step.py under `python`:
    {"times", "peak_rss_mb", "version", "params"} and "peak_gpu_mb" on CUDA."""
    command = [python, TORCH_STEP, "--image-size", str(config.image_size), "--ngf", str(config.ngf),
               "--ndf", str(config.ndf), "--n-res-blocks", str(config.n_res_blocks), "--netd", config.netd,
               "--steps", str(steps), "--warmup", str(warmup), "--device", device]
    # Started by a shell that forks it: a process exec'd straight from this one would report this
    # process's resident memory at the fork as its own peak (Linux keeps ru_maxrss across exec).
    command = ["/bin/sh", "-c", '"$0" "$@"; exit $?'] + command
    try:
        done = subprocess.run(command, env=torch_env(device), capture_output=True, text=True)
    except OSError as error:
        raise UsageError(f"--torch {python}: cannot run ({error})") from None
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise UsageError(f"--torch {python}: benchmark/torch_step.py failed: {done.stderr.strip()[-300:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    report = {"times": result["times"], "peak_rss_mb": result["peak_rss_MB"], "version": result["torch"],
              "params": result["params"]}
    if "peak_gpu_MB" in result:
        report["peak_gpu_mb"] = result["peak_gpu_MB"]
    return report
