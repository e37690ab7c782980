"""bench.py's PyTorch yardstick: one CycleGAN training iteration as the reference implementation runs it
(junyanz/pytorch-CycleGAN-and-pix2pix, model cycle_gan, norm 'instance', gan_mode lsgan), timed here.

    python benchmark/torch_step.py --config S --warmup 2 --steps 10
    python benchmark/torch_step.py --config P --device cuda --steps 3 --warmup 1
    python benchmark/torch_step.py --config P --count-params

Run by an interpreter that has torch (`bench.py --torch PYTHON`, in a process of its own): nothing in
the project imports this file, and torch is no requirement of the project. It needs torch alone.

What one iteration is, as in the reference's optimize_parameters: both translations and both cycles,
then the generators' Adam step on the least-squares adversarial terms, the L1 cycle terms (x 10) and the
L1 identity terms (x 5) with the discriminators' parameters frozen (requires_grad off), then both
discriminators' losses, each 0.5 * (real + fake) on a fake from a history pool of 50 past ones, and
their Adam step. Adam 2e-4, betas (0.5, 0.999), batch 1, float32, the reference's initial weights.

The networks are the reference's ResnetGenerator (reflection padding, stride-2 convolutions down,
transposed ones up) and its PatchGAN discriminator of 4x4 convolutions: NLayerDiscriminator with
n_layers=3 for P (strides 2, 2, 2, 1: the 70x70 patches), four stride-2 convolutions for S (the book's,
networks.DISCRIMINATOR_STRIDES). Instance norm is the reference's: no running statistics and no learned
scale and shift, so every convolution has a bias. The project's InstanceNormalization learns a scale and
a shift; --affine-norm adds them here too, which makes the parameter counts the project's exactly.

Prints one line, `RESULT {json}`: the seconds of each timed iteration ("times"), their median, min and
max, the peak resident memory in MB ("peak_rss_MB"; Linux keeps a process's peak across exec, so start
this from a shell, as bench.py does, not straight from a big process), on CUDA PyTorch's peak GPU memory
("peak_gpu_MB"), the torch version ("torch") and the parameter counts. With --count-params it prints
`PARAMS {json}` (the generator's and the discriminator's, and the sizes) and times nothing.
"""
import argparse
import itertools
import json
import os
import random
import resource
import statistics
import sys
import time

import torch
from torch import nn
from torch.nn import functional

# bench.py's two sizes, config.BENCH's "S" and "P" (tests/test_bench.py checks that they agree).
CONFIGS = {"S": dict(image_size=128, ngf=32, ndf=64, n_res_blocks=6, netd="book"),
           "P": dict(image_size=256, ngf=64, ndf=64, n_res_blocks=9, netd="patch70")}
STRIDES = {"patch70": (2, 2, 2, 1), "book": (2, 2, 2, 2)}  # networks.DISCRIMINATOR_STRIDES
LAMBDA_CYCLE = 10.0
LAMBDA_IDENTITY = 0.5  # of LAMBDA_CYCLE
POOL_SIZE = 50
LEARNING_RATE, BETAS = 2e-4, (0.5, 0.999)
INIT_STD = 0.02


def instance_norm(channels, affine):
    """The reference's norm 'instance': each image's own statistics, none kept across calls."""
    return nn.InstanceNorm2d(channels, affine=affine, track_running_stats=False)


class ResnetBlock(nn.Module):
    """x + (mirror pad 1, conv 3x3, norm, ReLU, mirror pad 1, conv 3x3, norm)(x)."""

    def __init__(self, channels, affine):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), instance_norm(channels, affine), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), instance_norm(channels, affine))

    def forward(self, x):
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """c7s1-ngf, two stride-2 convolutions to 4 ngf, n_blocks residual blocks, two stride-2 transposed
    convolutions back to ngf, c7s1-3 and tanh: the paper's generator, as the reference builds it."""

    def __init__(self, ngf, n_blocks, affine):
        super().__init__()
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7), instance_norm(ngf, affine), nn.ReLU(True)]
        channels = ngf
        for _ in range(2):
            layers += [nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1),
                       instance_norm(2 * channels, affine), nn.ReLU(True)]
            channels *= 2
        layers += [ResnetBlock(channels, affine) for _ in range(n_blocks)]
        for _ in range(2):
            layers += [nn.ConvTranspose2d(channels, channels // 2, 3, stride=2, padding=1, output_padding=1),
                       instance_norm(channels // 2, affine), nn.ReLU(True)]
            channels //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(channels, 3, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class PatchDiscriminator(nn.Module):
    """The reference's NLayerDiscriminator with the strides given: 4x4 convolutions padded by 1 to ndf,
    2 ndf, 4 ndf, 8 ndf channels (norm from the second on, LeakyReLU 0.2), then a 4x4 stride-1 one to a
    linear score per patch (least squares takes no sigmoid)."""

    def __init__(self, ndf, strides, affine):
        super().__init__()
        layers, channels = [], 3
        for index, stride in enumerate(strides):
            filters = ndf * min(2 ** index, 8)
            layers.append(nn.Conv2d(channels, filters, 4, stride=stride, padding=1))
            if index:
                layers.append(instance_norm(filters, affine))
            layers.append(nn.LeakyReLU(0.2, True))
            channels = filters
        layers.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


def initialised(network):
    """The reference's init_weights(net, 'normal', 0.02): convolution weights N(0, 0.02), biases zero
    (a norm's scale and shift, where there are any, keep 1 and 0)."""
    for module in network.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(module.weight, 0.0, INIT_STD)
            nn.init.zeros_(module.bias)
    return network


class ImagePool:
    """The reference's history of generated images: until it holds `size` of them every new one goes in
    and is used; then each new one, with probability 1/2, takes the place of a random stored one, which
    is used instead."""

    def __init__(self, size):
        self.size, self.images = size, []

    def query(self, images):
        if self.size == 0:
            return images
        chosen = []
        for image in images.detach().split(1):
            if len(self.images) < self.size:
                self.images.append(image)
                chosen.append(image)
            elif random.random() > 0.5:
                index = random.randrange(self.size)
                chosen.append(self.images[index].clone())
                self.images[index] = image
            else:
                chosen.append(image)
        return torch.cat(chosen)


def least_squares(scores, real):
    """The reference's GANLoss('lsgan'): mean squared distance of the scores to 1 (real) or 0 (fake)."""
    return functional.mse_loss(scores, torch.full_like(scores, 1.0 if real else 0.0))


def set_trainable(networks, flag):
    for network in networks:
        for parameter in network.parameters():
            parameter.requires_grad_(flag)


class CycleGAN:
    """The reference's four networks and two Adams. The reference's netG_A / netG_B are generator_ab /
    generator_ba here, and its netD_A (which judges domain B) is discriminator_b, as in the project."""

    def __init__(self, ngf, ndf, n_res_blocks, netd, affine=False, device="cpu"):
        self.generator_ab, self.generator_ba = (initialised(ResnetGenerator(ngf, n_res_blocks, affine)).to(device)
                                                for _ in range(2))
        self.discriminator_a, self.discriminator_b = (
            initialised(PatchDiscriminator(ndf, STRIDES[netd], affine)).to(device) for _ in range(2))
        generators = (self.generator_ab, self.generator_ba)
        discriminators = (self.discriminator_a, self.discriminator_b)
        self.discriminators = discriminators
        self.optimizer_g = torch.optim.Adam(itertools.chain(*(n.parameters() for n in generators)),
                                            lr=LEARNING_RATE, betas=BETAS)
        self.optimizer_d = torch.optim.Adam(itertools.chain(*(n.parameters() for n in discriminators)),
                                            lr=LEARNING_RATE, betas=BETAS)
        self.pool_a, self.pool_b = ImagePool(POOL_SIZE), ImagePool(POOL_SIZE)

    def parameter_counts(self):
        def count(network):
            return sum(parameter.numel() for parameter in network.parameters())

        return {"generator": count(self.generator_ab), "discriminator": count(self.discriminator_a)}

    def step(self, real_a, real_b):
        """One iteration (optimize_parameters); the three losses as tensors."""
        g_ab, g_ba, d_a, d_b = self.generator_ab, self.generator_ba, self.discriminator_a, self.discriminator_b
        fake_b = g_ab(real_a)
        cycled_a = g_ba(fake_b)
        fake_a = g_ba(real_b)
        cycled_b = g_ab(fake_a)

        set_trainable(self.discriminators, False)
        self.optimizer_g.zero_grad()
        identity_weight = LAMBDA_CYCLE * LAMBDA_IDENTITY
        loss_g = (least_squares(d_b(fake_b), True) + least_squares(d_a(fake_a), True)
                  + LAMBDA_CYCLE * (functional.l1_loss(cycled_a, real_a) + functional.l1_loss(cycled_b, real_b))
                  + identity_weight * (functional.l1_loss(g_ab(real_b), real_b)
                                       + functional.l1_loss(g_ba(real_a), real_a)))
        loss_g.backward()
        self.optimizer_g.step()

        set_trainable(self.discriminators, True)
        self.optimizer_d.zero_grad()
        losses_d = []
        for discriminator, real, fake in ((d_b, real_b, self.pool_b.query(fake_b)),
                                          (d_a, real_a, self.pool_a.query(fake_a))):
            loss = 0.5 * (least_squares(discriminator(real), True)
                          + least_squares(discriminator(fake.detach()), False))
            loss.backward()
            losses_d.append(loss)
        self.optimizer_d.step()
        return loss_g, *losses_d


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="S",
                   help="S: 128x128, ngf 32, 6 blocks, the book's discriminator; P: 256x256, ngf 64, 9 blocks, "
                        "the 70x70 PatchGAN")
    for name in ("image_size", "ngf", "ndf", "n_res_blocks"):
        p.add_argument("--" + name.replace("_", "-"), type=int, help="override the config's")
    p.add_argument("--netd", choices=sorted(STRIDES), help="override the config's discriminator")
    p.add_argument("--steps", type=int, default=10, help="timed iterations")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the tensors live")
    p.add_argument("--threads", type=int, default=int(os.environ.get("TORCH_THREADS", os.cpu_count() or 1)),
                   help="PyTorch's threads per op (default: TORCH_THREADS, else one per CPU)")
    p.add_argument("--affine-norm", action="store_true",
                   help="a learned scale and shift in every instance norm, as the project's (the reference has none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, the images and the pool")
    p.add_argument("--count-params", action="store_true", help="print the parameter counts and exit")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    sizes = {name: getattr(args, name) if getattr(args, name) is not None else value
             for name, value in CONFIGS[args.config].items()}
    if args.steps < 1 or args.warmup < 0 or sizes["image_size"] % 4 or sizes["image_size"] < 32:
        sys.exit("torch_step.py: error: --steps >= 1, --warmup >= 0 and an image size that is a multiple of 4, "
                 ">= 32, please")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"torch_step.py: error: --device cuda: this torch {torch.__version__} sees no CUDA device")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    gan = CycleGAN(sizes["ngf"], sizes["ndf"], sizes["n_res_blocks"], sizes["netd"], args.affine_norm, args.device)
    if args.count_params:
        print("PARAMS " + json.dumps({**gan.parameter_counts(), "sizes": sizes}))
        return
    side = sizes["image_size"]
    real_a, real_b = (torch.rand(1, 3, side, side, device=args.device) * 2 - 1 for _ in "AB")
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    times, first_losses = [], None
    for index in range(args.warmup + args.steps):
        started = time.perf_counter()
        losses = gan.step(real_a, real_b)
        sync()
        times.append(time.perf_counter() - started)
        if index == 0:
            first_losses = [loss.item() for loss in losses]
    timed = times[args.warmup:]
    result = dict(framework="torch", torch=torch.__version__, config=args.config, **sizes, batch_size=1,
                  affine_norm=args.affine_norm, device=args.device, threads=torch.get_num_threads(),
                  interop_threads=torch.get_num_interop_threads(), params=gan.parameter_counts(),
                  warmup_times=times[:args.warmup], times=timed, median=statistics.median(timed),
                  min=min(timed), max=max(timed), first_losses=first_losses,
                  last_losses=[loss.item() for loss in losses],
                  peak_rss_MB=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if args.device == "cuda":
        result["peak_gpu_MB"] = torch.cuda.max_memory_allocated() / 2 ** 20
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
