"""PyTorch's side of `bench.py --layers`: the same layer kinds, at the same shapes, timed the same way.

    echo SPEC_JSON | TORCH_THREADS=2 /tmp/torchvenv/bin/python benchmark/torch_layers.py

A yardstick only: bench.py runs it in a subprocess with an interpreter that has torch; nothing imports it
and torch is not a requirement of the project. SPEC_JSON is {"steps", "warmup", "rows": [...]} as
benchmark.layers.layer_rows writes it (input shapes channels-last, as Keras sees them); it prints one JSON line
with each row's median forward and forward+backward milliseconds. TORCH_DEVICE=cuda runs it on the GPU.
"""
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn

torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "2")))  # as torch_reference_step.py
DEVICE = torch.device(os.environ.get("TORCH_DEVICE", "cpu"))  # bench.py sets cuda where TensorFlow has a GPU


def instance_norm(channels):
    return nn.InstanceNorm2d(channels, affine=True)  # affine like the project's InstanceNormalization


class Residual(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


def generator(ngf, n_res_blocks):
    """The reference's ResnetGenerator (reflection padding, transposed-conv upsampling) with the rows' affine
    instance norm (as ours): bench.py times its inference beside generate.py's."""
    def conv_norm_relu(cin, cout, kernel, stride=1, reflect=0):
        pad = [nn.ReflectionPad2d(reflect), nn.Conv2d(cin, cout, kernel, stride)] if reflect else [
            nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2)]
        return [*pad, instance_norm(cout), nn.ReLU(True)]

    layers = conv_norm_relu(3, ngf, 7, reflect=3) + conv_norm_relu(ngf, 2 * ngf, 3, 2) + conv_norm_relu(
        2 * ngf, 4 * ngf, 3, 2)
    layers += [build({"kind": "resblock", "shape": [None, None, 4 * ngf]}) for _ in range(n_res_blocks)]
    for cin in (4 * ngf, 2 * ngf):
        layers += [nn.ConvTranspose2d(cin, cin // 2, 3, stride=2, padding=1, output_padding=1),
                   instance_norm(cin // 2), nn.ReLU(True)]
    return nn.Sequential(*layers, nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh())


def build(row):
    """The torch.nn modules of one row, as the reference's ResnetGenerator / NLayerDiscriminator has them."""
    kind, channels = row["kind"], row["shape"][-1]
    if kind == "generator":
        modules = [generator(row["ngf"], row["n_res_blocks"])]
    elif kind == "identity":
        modules = [nn.Identity()]
    elif kind == "conv":
        pad, kernel = row["pad"], row["kernel"]
        if row["pad_mode"] == "reflect":
            modules = [nn.ReflectionPad2d(pad), nn.Conv2d(channels, row["filters"], kernel, row["stride"])]
        else:
            modules = [nn.Conv2d(channels, row["filters"], kernel, row["stride"], padding=pad)]
        modules += [nn.Tanh()] if row.get("tanh") else []
    elif kind == "upconv":
        modules = [nn.ConvTranspose2d(channels, row["filters"], 3, stride=2, padding=1, output_padding=1)]
    elif kind == "norm":
        modules = [instance_norm(channels)] + ([nn.ReLU(True)] if row["relu"] else [])
    elif kind == "resblock":
        body = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), instance_norm(channels),
                             nn.ReLU(True), nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3),
                             instance_norm(channels))
        modules = [Residual(body)]
    elif kind == "disc":
        modules = [nn.Conv2d(channels, row["filters"], 4, row["stride"], padding=1)]
        modules += [instance_norm(row["filters"])] if row["norm"] else []
        modules += [nn.LeakyReLU(0.2, True)] if row["lrelu"] else []
    else:
        raise ValueError(f"unknown layer kind {kind!r}")
    module = nn.Sequential(*modules)
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(layer.weight, 0.0, 0.02)
            nn.init.zeros_(layer.bias)
    return module.to(DEVICE)


def median_ms(function, steps, warmup):
    sync = torch.cuda.synchronize if DEVICE.type == "cuda" else (lambda: None)  # CUDA calls return at once
    for _ in range(warmup):
        function()
    sync()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        function()
        sync()
        times.append(time.perf_counter() - started)
    return 1000 * float(np.median(times))


def time_layer(row, steps, warmup):
    module = build(row)
    height, width, channels = row["shape"]
    x = torch.randn(row.get("batch", 1), channels, height, width, device=DEVICE)
    with torch.no_grad():
        upstream = torch.randn_like(module(x))

    def forward():
        with torch.no_grad():
            module(x)

    def forward_backward():
        x.requires_grad_(True)
        module(x).backward(upstream)
        x.grad = None
        module.zero_grad(set_to_none=True)

    if row.get("forward_only"):
        return {"fwd_ms": median_ms(forward, steps, warmup), "fwdbwd_ms": None}
    return {"fwd_ms": median_ms(forward, steps, warmup), "fwdbwd_ms": median_ms(forward_backward, steps, warmup)}


def time_adam(row, steps, warmup):
    """One Adam step over parameters of the network's shapes, as the reference's optimizers are set up."""
    parameters = [nn.Parameter(torch.randn(shape, device=DEVICE) * 0.02) for shape in row["param_shapes"]]
    for parameter in parameters:
        parameter.grad = torch.randn_like(parameter) * 1e-3
    optimizer = torch.optim.Adam(parameters, lr=2e-4, betas=(0.5, 0.999))
    return {"fwd_ms": None, "fwdbwd_ms": median_ms(optimizer.step, steps, warmup)}


def main():
    spec = json.load(sys.stdin)
    torch.manual_seed(0)
    rows = [(time_adam if row["kind"] == "adam" else time_layer)(row, spec["steps"], spec["warmup"])
            for row in spec["rows"]]
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(DEVICE),
                      "rows": rows}))


if __name__ == "__main__":
    main()
