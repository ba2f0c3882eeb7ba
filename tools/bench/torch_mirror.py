"""torch_mirror.py - PyTorch mirror of scorediff's reference score networks.

The modules below build `unet` and `mlp` exactly as ../../shared/reference-model.md
(and models/unet.c, models/mlp.c) do. Their state_dict keys, shapes and order
equal the C parameter names (sd_params declaration order), so a parameter
vector can be moved between the two implementations by name, and the
benchmarks and the cross-check (tests/crosscheck/crosscheck_models.py)
compare the same network number for number.

    net = UNet(unet_preset("unet-28"))
    score = net(x, cond, sigma)   # x [N,C,H,W], cond [N] (log sigma or t), sigma [N]

Only torch.nn modules are used: GroupNorm(groups, c) (eps 1e-5), Conv2d,
Linear, SiLU and F.interpolate(mode="nearest").
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

FOURIER_HALF = 16
FOURIER_DIM = 2 * FOURIER_HALF
FOURIER_SCALE = 16.0
INV_SQRT2 = 1.0 / math.sqrt(2.0)

UNET_PRESETS = {
    "unet-28": dict(channels=1, resolution=28, ch=32, mult=(1, 2, 2), num_res_blocks=2, groups=8),
    "unet-32": dict(channels=3, resolution=32, ch=64, mult=(1, 2, 2, 2), num_res_blocks=2, groups=8),
}


def unet_preset(name):
    return dict(UNET_PRESETS[name])


class Fourier(nn.Module):
    """e0 = [sin(2 pi W c), cos(2 pi W c)] with fixed W[16] ~ N(0, 16^2) (a buffer)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("W", torch.randn(FOURIER_HALF) * FOURIER_SCALE)

    def forward(self, c):
        # Same float32 rounding sequence as models/fourier.c: c * (W * 2pi).
        arg = c[:, None] * (self.W * (2.0 * math.pi))[None, :]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


class TimeEmbed(nn.Module):
    """temb = fc2(SiLU(fc1(e0)))."""

    def __init__(self, tdim):
        super().__init__()
        self.fc1 = nn.Linear(FOURIER_DIM, tdim)
        self.fc2 = nn.Linear(tdim, tdim)

    def forward(self, e0):
        return self.fc2(F.silu(self.fc1(e0)))


class ResBlock(nn.Module):
    def __init__(self, cin, cout, tdim, groups):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb_proj = nn.Linear(tdim, cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, temb_act):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(temb_act)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.skip is None else self.skip(x)
        return (skip + h) * INV_SQRT2


class Level(nn.Module):
    """One resolution level: `block` ResBlocks and an optional resampling conv
    registered as `downsample` (encoder) or `upsample` (decoder)."""

    def __init__(self, blocks, resample_name=None, c=None):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.resample_name = resample_name
        if resample_name == "downsample":
            self.downsample = nn.Conv2d(c, c, 3, stride=2, padding=1)
        elif resample_name == "upsample":
            self.upsample = nn.Conv2d(c, c, 3, padding=1)


class UNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C, ch, mult, R, G = cfg["channels"], cfg["ch"], cfg["mult"], cfg["num_res_blocks"], cfg["groups"]
        L = len(mult)
        tdim = 4 * ch
        self.L, self.R = L, R
        self.fourier = Fourier()
        self.temb = TimeEmbed(tdim)
        self.conv_in = nn.Conv2d(C, ch, 3, padding=1)
        stack, cur = [ch], ch
        down = []
        for i in range(L):
            blocks = []
            for _ in range(R):
                blocks.append(ResBlock(cur, ch * mult[i], tdim, G))
                cur = ch * mult[i]
                stack.append(cur)
            if i != L - 1:
                stack.append(cur)
                down.append(Level(blocks, "downsample", cur))
            else:
                down.append(Level(blocks))
        self.down = nn.ModuleList(down)
        self.mid = nn.ModuleList([ResBlock(cur, cur, tdim, G) for _ in range(2)])
        up = [None] * L
        for i in reversed(range(L)):
            blocks = []
            for _ in range(R + 1):
                blocks.append(ResBlock(cur + stack.pop(), ch * mult[i], tdim, G))
                cur = ch * mult[i]
            up[i] = Level(blocks, "upsample", cur) if i != 0 else Level(blocks)
        self.up = nn.ModuleList(up)  # indexed by level, like down
        self.norm_out = nn.GroupNorm(G, cur)
        self.conv_out = nn.Conv2d(cur, C, 3, padding=1)

    def forward(self, x, cond, sigma):
        temb_act = F.silu(self.temb(self.fourier(cond)))
        h = self.conv_in(x)
        hs = [h]
        for i in range(self.L):
            for blk in self.down[i].block:
                h = blk(h, temb_act)
                hs.append(h)
            if i != self.L - 1:
                h = self.down[i].downsample(h)
                hs.append(h)
        for blk in self.mid:
            h = blk(h, temb_act)
        for i in reversed(range(self.L)):
            for blk in self.up[i].block:
                h = blk(torch.cat([h, hs.pop()], dim=1), temb_act)
            if i != 0:
                h = self.up[i].upsample(F.interpolate(h, scale_factor=2, mode="nearest"))
        h = self.conv_out(F.silu(self.norm_out(h)))
        return h / sigma[:, None, None, None]


class MLP(nn.Module):
    """s(x, sigma) = MLP([x, e0]) / sigma, n_hidden_layers x hidden with SiLU."""

    def __init__(self, dim, hidden=128, n_hidden_layers=3):
        super().__init__()
        self.fourier = Fourier()
        widths = [dim + FOURIER_DIM] + [hidden] * n_hidden_layers
        self.layers = nn.ModuleList(nn.Linear(widths[i], widths[i + 1]) for i in range(n_hidden_layers))
        self.out = nn.Linear(hidden, dim)

    def forward(self, x, cond, sigma):
        h = torch.cat([x, self.fourier(cond)], dim=1)
        for layer in self.layers:
            h = F.silu(layer(h))
        return self.out(h) / sigma[:, None]


def trainable_count(module):
    return sum(p.numel() for p in module.parameters())


if __name__ == "__main__":
    for name in UNET_PRESETS:
        print(name, trainable_count(UNet(unet_preset(name))))
    print("mlp(2)", trainable_count(MLP(2)))
