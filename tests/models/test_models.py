"""The model registry: offline Lite weights mapped right, checkpoints round-trip, every model kind works."""

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from skimage import data

from isc.core.files import InputError
from isc.models import (
    DescriptorModel,
    create_model,
    efficientnet_lite_state_dict,
    load_checkpoint,
    save_checkpoint,
)


def _imagenet_batch(image: np.ndarray, size: int = 224) -> torch.Tensor:
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return (x - mean) / std


@pytest.fixture(scope="module")
def lite0_classifier() -> torch.nn.Module:
    net = timm.create_model("efficientnet_lite0", pretrained=False)
    net.load_state_dict(efficientnet_lite_state_dict(0))
    return net.eval()


@pytest.mark.parametrize(
    ("photo", "classes"),
    [("chelsea", {281, 282, 283, 284, 285}), ("coffee", {967}), ("rocket", {657, 744})],
)
def test_lite0_offline_weights_classify_real_photos(lite0_classifier, photo, classes):
    with torch.no_grad():
        top1 = int(lite0_classifier(_imagenet_batch(getattr(data, photo)())).argmax())
    assert top1 in classes


def test_default_model_carries_the_mapped_lite0_backbone():
    model = create_model()
    assert isinstance(model, DescriptorModel)
    assert model.name == "efficientnet_lite0" and model.dim == 1280
    backbone = model.net.backbone.state_dict()
    for name, tensor in efficientnet_lite_state_dict(0).items():
        if not name.startswith("classifier"):
            assert torch.equal(backbone[name], tensor), name
    with torch.no_grad():
        out = model(_imagenet_batch(data.coffee(), 96))
    assert out.shape == (1, 1280)
    assert torch.allclose(out.norm(dim=1), torch.ones(1), atol=1e-5)


def test_random_init_timm_model_differs_from_offline_weights():
    random_lite = create_model("timm:efficientnet_lite0", image_size=64)
    assert random_lite.fingerprint() != create_model("efficientnet_lite0", image_size=64).fingerprint()


def test_timm_pooling_projection_and_preprocessing_attributes():
    model = create_model("resnet10t", pool="max", dim=24, image_size=48, resize="short-edge")
    with torch.no_grad():
        out = model(torch.randn(3, 3, 48, 64))
    assert out.shape == (3, 24)
    config = model.config()
    assert config["model"] == "resnet10t" and config["dimension"] == 24
    assert config["image_size"] == 48 and config["resize"] == "short-edge"
    gem = create_model("resnet10t", pool="gem", gem_p=4.0, gem_learnable=False, image_size=48)
    assert not gem.net.head.gem.p.requires_grad and float(gem.net.head.gem.p) == 4.0


def test_checkpoint_round_trip_keeps_weights_and_options(tmp_path):
    model = create_model("resnet10t", pool="mean", dim=16, image_size=48)
    with torch.no_grad():
        model.net.head.projection.weight.mul_(3)
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(model, path, optimizer={"lr": 0.1}, epoch=7)
    assert load_checkpoint(path)["epoch"] == 7
    for name in ("resnet10t", None):
        loaded = create_model(name, checkpoint=path)
        assert loaded.options == model.options and loaded.fingerprint() == model.fingerprint()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)
    with pytest.raises(InputError, match="checkpoint of model 'resnet10t'"):
        create_model("resnet18", checkpoint=path)
    with pytest.raises(InputError, match="do not fit"):
        create_model("resnet10t", checkpoint=path, dim=8)


def test_bad_names_options_and_files_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="unknown model"):
        create_model("no_such_net")
    with pytest.raises(InputError, match=r"model .resnet10t. takes no option colour \(--colour\)"):
        create_model("resnet10t", colour="blue")
    with pytest.raises(InputError, match="unknown pooling"):
        create_model("resnet10t", pool="median")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a PyTorch checkpoint"):
        create_model("resnet10t", checkpoint=junk)
    with pytest.raises(InputError, match="no such TorchScript"):
        create_model(f"torchscript:{tmp_path / 'missing.pt'}")


def test_torchscript_model_runs_the_scripted_module(tmp_path):
    source = create_model("resnet10t", dim=8, image_size=32).eval()
    scripted = torch.jit.script(source.net)
    path = tmp_path / "model.torchscript.pt"
    scripted.save(str(path))
    model = create_model(f"torchscript:{path}", image_size=32)
    assert model.dim == 8 and model.resize == "short-edge"
    x = torch.randn(2, 3, 32, 40)
    with torch.no_grad():
        assert torch.allclose(model(x), source(x), atol=1e-5)


def test_pdq_gives_plus_minus_one_bits_that_survive_a_small_edit():
    model = create_model("pdq", image_size=128)
    image = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float()[None] / 255
    image = F.interpolate(image, size=(128, 128), mode="bilinear", antialias=True)
    other = torch.from_numpy(data.coffee()).permute(2, 0, 1).float()[None] / 255
    other = F.interpolate(other, size=(128, 128), mode="bilinear", antialias=True)
    out = model(torch.cat([image, (image * 0.9 + 0.05), other]))
    assert out.shape == (3, 256) and set(out.unique().tolist()) == {-1.0, 1.0}
    hamming_edit = int((out[0] != out[1]).sum())
    hamming_other = int((out[0] != out[2]).sum())
    assert hamming_edit < 40 < hamming_other

