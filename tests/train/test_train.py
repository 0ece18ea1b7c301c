"""isc-train: the loss, the mixing, the data order, and tiny end-to-end runs (resume, torchrun, extraction)."""

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_line_error, run_python

from isc.cli.extract import main as extract_main
from isc.cli.train import main as train_main
from isc.core.descriptors import read_descriptors
from isc.core.files import SettingError
from isc.models import create_model, load_checkpoint
from isc.train.objective import instance_targets, learning_rate, sscd_loss
from isc.train.training import TrainConfig, check_config, setup_process
from isc.train.training_data import MixBatch, TrainingOrder, mix_images


def plain_targets(n_images: int, n_views: int) -> torch.Tensor:
    sources = torch.arange(n_images).repeat_interleave(n_views)[:, None].repeat(1, 2)
    return instance_targets(sources, torch.tensor([[1.0, 0.0]]).repeat(len(sources), 1), n_images)


def test_loss_is_lower_when_views_of_an_image_agree():
    torch.manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(8, 32), dim=1)
    targets = plain_targets(8, 2)
    aligned = centres.repeat_interleave(2, dim=0) + 0.05 * torch.randn(16, 32)
    scrambled = aligned[torch.randperm(16)]
    aligned_loss, aligned_stats = sscd_loss(aligned, targets, entropy_weight=0)
    scrambled_loss, _ = sscd_loss(scrambled, targets, entropy_weight=0)
    assert aligned_loss < 0.1 < scrambled_loss
    assert aligned_stats["positive_similarity"] > 0.9 > aligned_stats["negative_similarity"]
    # the entropy regulariser rewards spreading: collapsed negatives cost more than spread ones
    collapsed = torch.randn(1, 32).repeat(16, 1) + 0.01 * torch.randn(16, 32)
    assert sscd_loss(collapsed, targets, temperature=1.0)[1]["entropy"] > aligned_stats["entropy"]


def sscd_loss_by_the_formula(x: np.ndarray, targets: np.ndarray, temperature: float, entropy_weight: float) -> float:
    """SSCD's loss written out row by row in float64, from the paper's definitions, apart from isc.train.training:
    InfoNCE of each positive against the row's negatives (rows sharing no image), weighted by the share of
    images, averaged; plus the weight times the KoLeo term, -mean log ||x_i - its nearest negative||."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(x)
    infonce, koleo = [], []
    for i in range(n):
        negatives = [k for k in range(n) if k != i and targets[i] @ targets[k] == 0]
        weights = {j: targets[i] @ targets[j] for j in range(n) if j != i and targets[i] @ targets[j] > 0}
        terms = []
        for j, weight in weights.items():
            positive = math.exp(x[i] @ x[j] / temperature)
            against = positive + sum(math.exp(x[i] @ x[k] / temperature) for k in negatives)
            terms.append(-weight * math.log(positive / against))
        infonce.append(sum(terms) / sum(weights.values()))
        koleo.append(-math.log(min(np.linalg.norm(x[i] - x[k]) for k in negatives)))
    return float(np.mean(infonce) + entropy_weight * np.mean(koleo))


def test_loss_equals_the_formula_written_out():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((10, 8))
    # five images seen twice; the last row is a mix of image 4 (70%) and image 0 (30%)
    sources = torch.arange(5).repeat_interleave(2)[:, None].repeat(1, 2)
    shares = torch.tensor([[1.0, 0.0]]).repeat(10, 1)
    sources[-1], shares[-1] = torch.tensor([4, 0]), torch.tensor([0.7, 0.3])
    targets = instance_targets(sources, shares, 5)
    for temperature, weight in ((0.05, 3.0), (0.5, 0.0), (1.0, 1.0)):
        loss, stats = sscd_loss(torch.tensor(x, dtype=torch.float32), targets, temperature=temperature,
                                entropy_weight=weight)
        expected = sscd_loss_by_the_formula(x, targets.numpy().astype(np.float64), temperature, weight)
        assert loss.item() == pytest.approx(expected, rel=1e-4), (temperature, weight)


def test_loss_split_between_processes_equals_the_whole_batch():
    """What each torchrun process computes on its rows against the gathered batch averages to the full loss."""
    torch.manual_seed(1)
    embeddings = torch.randn(12, 16, requires_grad=True)
    targets = plain_targets(6, 2)
    whole, _ = sscd_loss(embeddings, targets)
    (whole_gradient,) = torch.autograd.grad(whole, embeddings)
    halves = [sscd_loss(embeddings[rows], targets[rows], embeddings, targets, offset=rows.start)[0]
              for rows in (slice(0, 6), slice(6, 12))]
    (split_gradient,) = torch.autograd.grad(sum(halves) / 2, embeddings)
    assert torch.allclose(sum(halves) / 2, whole, atol=1e-5)
    assert torch.allclose(split_gradient, whole_gradient, atol=1e-5)


def test_a_mixed_image_is_a_weighted_positive_of_both_sources():
    sources = torch.tensor([[0, 0], [0, 0], [1, 1], [1, 1], [2, 2], [2, 2], [0, 1]])
    shares = torch.tensor([[1.0, 0]] * 6 + [[0.7, 0.3]])
    targets = instance_targets(sources, shares, 3)
    overlap = targets @ targets.T
    assert torch.allclose(overlap[6, :6], torch.tensor([0.7, 0.7, 0.3, 0.3, 0.0, 0.0]))
    # raising the similarity of the mixed row to its main source lowers the loss more than to the minor one
    torch.manual_seed(2)
    base = torch.nn.functional.normalize(torch.randn(7, 8), dim=1)
    towards_major, towards_minor = base.clone(), base.clone()
    towards_major[6] = base[0] + base[1]
    towards_minor[6] = base[2] + base[3]
    assert sscd_loss(towards_major, targets, entropy_weight=0)[0] < sscd_loss(towards_minor, targets, entropy_weight=0)[0]


def test_mix_images_reports_the_share_of_the_first_image():
    rng = np.random.default_rng(0)
    first, second = torch.zeros(3, 20, 30), torch.ones(3, 20, 30)
    for _ in range(20):
        cut, share = mix_images(first, second, rng, cutmix_probability=1.0)
        assert share == pytest.approx((cut == 0).float().mean().item())
        blend, share = mix_images(first, second, rng, cutmix_probability=0.0)
        assert torch.allclose(blend, torch.full_like(blend, 1 - share))


def test_mix_batch_appends_mixed_rows():
    torch.manual_seed(3)
    samples = [torch.full((2, 3, 8, 8), float(i)) for i in range(8)]
    images, sources, shares = MixBatch(fraction=0.25)(samples)
    assert images.shape == (16 + 2, 3, 8, 8) and sources.shape == shares.shape == (18, 2)
    assert torch.equal(sources[:16, 0], torch.arange(8).repeat_interleave(2))
    assert torch.allclose(shares.sum(1), torch.ones(18))
    for image, (a, b), (share_a, share_b) in zip(images[16:], sources[16:], shares[16:], strict=True):
        assert a != b
        assert image.mean().item() == pytest.approx((share_a * a + share_b * b).item(), abs=1e-4)


def test_training_order_splits_batches_between_processes_and_resumes():
    full = [list(TrainingOrder(10, 2, 0, 6, seed=5, rank=r, world_size=2)) for r in (0, 1)]
    # 10 images, 2 per process and micro-batch, 2 processes: 2 micro-batches an epoch, 8 distinct images in it
    epochs = [full[0][4 * e : 4 * e + 4] + full[1][4 * e : 4 * e + 4] for e in range(3)]
    assert all(len(set(epoch)) == 8 for epoch in epochs) and epochs[0] != epochs[1]
    assert list(TrainingOrder(10, 2, 3, 6, seed=5, rank=1, world_size=2)) == full[1][6:]


def test_learning_rate_warms_up_then_decays():
    rates = [learning_rate(step, 100, 1e-3, 10) for step in range(100)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert max(rates) == pytest.approx(1e-3) and rates[-1] < 1e-5
    assert all(a >= b for a, b in zip(rates[9:], rates[10:], strict=False))


# ------------------------------------------------------------------------------------ end to end

TINY = ["--batch-size", "4", "--image-size", "32", "--workers", "0", "--quiet"]


def isc_train(*args: str, torchrun: int = 0) -> subprocess.CompletedProcess:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={torchrun}"] if torchrun else []
    return run_python(*launcher, "-m", "isc.cli.train", *args)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_train_resume_extract_and_torchscript(mini_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    run = tmp_path / "run"
    common = ["--data", str(mini_dataset / "training_images"), "-o", str(run), *TINY, "--checkpoint-every", "1"]
    assert train_main([*common, "--steps", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 2
    before = load_checkpoint(run / "last.pt")
    assert before["step"] == 2 and before["optimizer"]["state"]

    # a second run into the same folder must say --resume; then it continues at step 3
    assert train_main([*common, "--steps", "3"]) == 2
    one_line_error(capsys.readouterr().err, "isc-train", "--resume")
    resumed = isc_train(*common, "--steps", "3", "--resume", "--torchscript", "--eval-data", str(mini_dataset), "--json")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["start"] == 2 and summary["steps"] == 3
    after = load_checkpoint(run / "last.pt")
    assert after["step"] == 3
    assert any(not torch.equal(before["state_dict"][k], after["state_dict"][k]) for k in after["state_dict"])

    log = read_jsonl(run / "log.jsonl")
    assert [row["step"] for row in log] == [1, 2, 3]
    assert all(np.isfinite(row["loss"]) and row["lr"] > 0 for row in log)
    evaluations = read_jsonl(run / "eval.jsonl")
    assert [row["step"] for row in evaluations] == [3] == [row["step"] for row in summary["evaluations"]]
    assert all(0 <= row["muap"] <= 1 and 0 <= row["muap_normalized"] <= 1 for row in evaluations)

    # the checkpoint loads in isc-extract with the same --model, and the TorchScript export gives the same vectors
    images = mini_dataset / "reference_images"
    assert extract_main(["--images", str(images), "--model", "efficientnet_lite0", "--checkpoint",
                         str(run / "last.pt"), "-o", str(tmp_path / "ckpt.h5"), "--workers", "0", "--quiet"]) == 0
    assert extract_main(["--images", str(images), "--model", f"torchscript:{run / 'model.torchscript.pt'}",
                         "--image-size", "32", "--resize", "square", "-o", str(tmp_path / "ts.h5"),
                         "--workers", "0", "--quiet"]) == 0
    ids, from_checkpoint, attrs = read_descriptors(tmp_path / "ckpt.h5")
    ts_ids, from_torchscript, _ = read_descriptors(tmp_path / "ts.h5")
    assert ids == ts_ids and from_checkpoint.shape == (40, 256) and attrs["image_size"] == 32
    np.testing.assert_allclose(from_checkpoint, from_torchscript, atol=1e-4)
    model = create_model("efficientnet_lite0", checkpoint=run / "last.pt")
    assert model.dim == 256 and model.image_size == 32


@pytest.mark.slow
def test_torchrun_two_processes_on_the_cpu(mini_dataset: Path, tmp_path: Path):
    run = tmp_path / "ddp"
    result = isc_train("--data", str(mini_dataset / "training_images"), "-o", str(run), *TINY, "--steps", "2",
                       "--batch-size", "2", "--eval-data", str(mini_dataset), "--json", torchrun=2)
    assert result.returncode == 0, result.stderr
    summaries = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1  # only the first process reports
    assert [row["step"] for row in summaries[0]["evaluations"]] == [0, 2]
    assert load_checkpoint(run / "last.pt")["step"] == 2
    assert [row["step"] for row in read_jsonl(run / "log.jsonl")] == [1, 2]


def test_bad_input_is_one_line(tmp_path: Path, mini_dataset: Path, capsys: pytest.CaptureFixture):
    missing = isc_train("--data", str(tmp_path / "nowhere"), "-o", str(tmp_path / "run"), "--steps", "1")
    one_line_error(missing, "isc-train")
    training = ["--data", str(mini_dataset / "training_images"), "-o", str(tmp_path / "run"), "--steps", "1"]
    for extra, message in ((["--resume"], "last.pt does not exist"), (["--batch-size", "64"], "fewer than one batch"),
                           (["--views", "1"], "--views must be at least 2"),
                           (["--eval-data", str(tmp_path)], "no ground_truth.csv")):
        assert train_main([*training, *extra]) == 2
        one_line_error(capsys.readouterr().err, "isc-train", message)
    assert not (tmp_path / "run").exists()


def test_the_engine_names_a_setting_the_command_its_flag(monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(SettingError, match="^views must be at least 2"):
        check_config(TrainConfig(data="", run_dir="", views=1))
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun's: each process takes its own GPU
    with pytest.raises(SettingError, match="^device names one GPU"):
        setup_process("cuda:1")
