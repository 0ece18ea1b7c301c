"""Tiny torch networks and their ONNX export, shared by the tests of ONNX models, of the pixel path and of the
runs without torch (a helper module, not a test module: pytest puts this folder on the path for conftest)."""

import warnings
from pathlib import Path

import torch

from isc.models import IMAGENET_MEAN, IMAGENET_STD


class TinyNet(torch.nn.Module):
    """A small convolutional descriptor: normalised [B, 3, H, W] -> L2-normalised [B, 16], any size."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Conv2d(3, 12, 3, stride=2)
        self.conv2 = torch.nn.Conv2d(12, 24, 3, stride=2)
        self.fc = torch.nn.Linear(24, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return torch.nn.functional.normalize(self.fc(x.mean(dim=(2, 3))), dim=1)


class PixelsIn(torch.nn.Module):
    """TinyNet behind SSCD's contract: uint8 RGB [B, H, W, 3] in, ImageNet normalisation inside."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float() / 255
        return self.net((x - self.mean) / self.std)


def export_onnx(module: torch.nn.Module, example: torch.Tensor, path: Path, dynamic: dict[int, str]) -> Path:
    """``module`` written as an ONNX graph at ``path``, its axes ``dynamic`` (e.g. ``{0: "batch"}``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter is deprecated; the new one needs onnxscript
        torch.onnx.export(module.eval(), (example,), str(path), input_names=["image"], output_names=["embedding"],
                          dynamic_axes={"image": dynamic, "embedding": {0: "batch"}} if dynamic else None,
                          dynamo=False)
    return path
