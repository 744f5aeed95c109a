"""Evaluation protocols: linear probe, kNN, fine-tuning, low-shot selection, extraction and its cache."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from torch import nn

from pretextlab.backbones import build_backbone
from pretextlab.data.sources import Split
from pretextlab.evaluation import (
    FeatureSet,
    FineTune,
    KNNProbe,
    LinearProbe,
    evaluate,
    extract_features,
    knn_scores,
    labelled_split,
    select_shots,
    stratified_split,
    train_linear_models,
)
from pretextlab.evaluation import linear as linear_module
from pretextlab.evaluation import runner as runner_module
from pretextlab.evaluation.encoder import EvaluationEncoder

NUM_CLASSES = 5

#: Tiny settings for composing the real configs with any eval option (the shared TINY list
#: overrides eval.protocols.linear.*, which does not exist under eval=knn or eval=finetune).
TINY_ANY_EVAL = [
    "data.source.num_train=200",
    "data.source.num_test=100",
    "data.batch_size=50",
    "data.eval_batch_size=100",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "logger=none",
]


def clusters(num: int, dims: tuple[int, ...], seed: int, spread: float = 0.3, num_classes: int = NUM_CLASSES,
             random_labels: bool = False) -> FeatureSet:
    """Gaussian clusters (one centre per class, fixed across calls) → an easy, known answer."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(num) % num_classes
    features = {}
    for index, dim in enumerate(dims):
        centres = 3.0 * torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(1000 + index))
        features[f"s{index}"] = centres[labels] + spread * torch.randn(num, dim, generator=generator)
    if random_labels:
        labels = torch.randint(0, num_classes, (num,), generator=generator)
    return FeatureSet(features, labels)


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests use tiny tensors: one thread avoids intra-op contention on a shared CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


FAST_LINEAR = dict(epochs=15, lrs=[0.01, 0.1], weight_decays=[0.0, 0.001], batch_size=128, seed=0)


# -- linear probe --------------------------------------------------------------------------------
def test_linear_probe_solves_separable_clusters_and_reports_every_stage():
    result = LinearProbe(**FAST_LINEAR).run(clusters(600, (8, 16), 0), clusters(300, (8, 16), 1), NUM_CLASSES)
    assert result["top1"] > 0.97
    assert set(result["per_stage"]) == {"s0", "s1"}
    assert result["last_stage"] == "s1" and result["best_stage"] in ("s0", "s1")
    for key in ("top1", "top5", "best_stage", "last_stage", "last_top1", "last_top5", "per_stage"):
        assert key in result
    assert result["top5"] >= result["top1"]
    assert len(result["per_stage"]["s0"]["grid"]) == 4  # every grid point was scored on validation


def test_linear_probe_is_at_chance_on_random_labels():
    result = LinearProbe(**FAST_LINEAR).run(clusters(600, (16,), 0, random_labels=True),
                                            clusters(600, (16,), 1, random_labels=True), NUM_CLASSES)
    assert abs(result["top1"] - 1 / NUM_CLASSES) < 0.08


def test_linear_best_stage_is_the_informative_one():
    informative = clusters(500, (8,), 0)
    noise_generator = torch.Generator().manual_seed(5)
    train = FeatureSet({"noise": torch.randn(500, 8, generator=noise_generator), "good": informative.features["s0"]},
                       informative.labels)
    test_set = clusters(200, (8,), 1)
    test = FeatureSet({"noise": torch.randn(200, 8, generator=noise_generator), "good": test_set.features["s0"]},
                      test_set.labels)
    result = LinearProbe(**FAST_LINEAR).run(train, test, NUM_CLASSES)
    assert result["best_stage"] == "good"
    assert result["per_stage"]["noise"]["top1"] < 0.45


def test_linear_validation_never_touches_test():
    """Poisoned test labels and features change the test score only, never a choice."""
    train, test = clusters(400, (8, 16), 0, spread=2.0), clusters(200, (8, 16), 1, spread=2.0)
    poisoned = FeatureSet({k: 1e3 * torch.randn_like(v) for k, v in test.features.items()},
                          (test.labels + 1) % NUM_CLASSES)
    clean = LinearProbe(**FAST_LINEAR).run(train, test, NUM_CLASSES)
    dirty = LinearProbe(**FAST_LINEAR).run(train, poisoned, NUM_CLASSES)
    assert dirty["best_stage"] == clean["best_stage"]
    assert dirty["val_top1"] == clean["val_top1"]
    for stage in clean["per_stage"]:
        for key in ("lr", "weight_decay", "val_top1", "grid"):
            assert dirty["per_stage"][stage][key] == clean["per_stage"][stage][key]
    assert dirty["top1"] < clean["top1"]  # the poison did reach the test score


def test_linear_probe_ignores_unlabeled_training_images():
    train = clusters(400, (8,), 0)
    labels = train.labels.clone()
    labels[::2] = -1
    result = LinearProbe(**FAST_LINEAR).run(FeatureSet(train.features, labels), clusters(100, (8,), 1), NUM_CLASSES)
    assert result["train_images"] == 200
    assert result["top1"] > 0.95


def test_linear_probe_rejects_bad_settings():
    with pytest.raises(ValueError, match="val_fraction"):
        LinearProbe(val_fraction=1.5)
    with pytest.raises(ValueError, match="shots_per_class"):
        LinearProbe(shots_per_class=0)


# -- low-shot --------------------------------------------------------------------------------------
def test_select_shots_takes_exactly_k_per_class_and_is_seeded():
    labels = torch.tensor([c for c in range(4) for _ in range(10)] + [-1] * 5)
    chosen = select_shots(labels, 3, seed=7)
    assert torch.bincount(labels[chosen], minlength=4).tolist() == [3, 3, 3, 3]
    assert (labels[chosen] >= 0).all()
    assert torch.equal(chosen, select_shots(labels, 3, seed=7))
    assert not torch.equal(chosen, select_shots(labels, 3, seed=8))
    with pytest.raises(ValueError, match="class 0 has only 10"):
        select_shots(labels, 11)


def test_low_shot_probes_train_on_k_per_class():
    train, test = clusters(500, (8,), 0), clusters(100, (8,), 1)
    linear = LinearProbe(**{**FAST_LINEAR, "shots_per_class": 4}).run(train, test, NUM_CLASSES)
    assert linear["shots_per_class"] == 4 and linear["train_images"] == 4 * NUM_CLASSES
    assert linear["top1"] > 0.9  # well-separated clusters need few labels
    knn = KNNProbe(k=10, shots_per_class=4).run(train, test, NUM_CLASSES)
    assert knn["train_images"] == 4 * NUM_CLASSES and knn["k"] == 10
    one_shot = LinearProbe(**{**FAST_LINEAR, "shots_per_class": 1}).run(train, test, NUM_CLASSES)
    assert one_shot["train_images"] == NUM_CLASSES and one_shot["val_top1"] is not None  # validation is separate


def test_semi_supervised_subsets_are_k_per_class_seeded_and_disjoint_from_validation():
    labels = torch.tensor([c for c in range(4) for _ in range(60)] + [-1] * 7)
    val_sets = []
    for k in (1, 5, 20):
        fit, val = labelled_split(labels, 0.2, shots_per_class=k, seed=3)
        assert torch.bincount(labels[fit], minlength=4).tolist() == [k] * 4
        assert not set(fit.tolist()) & set(val.tolist())  # never trained on a validation image
        assert (labels[fit] >= 0).all() and (labels[val] >= 0).all()
        assert torch.equal(fit, labelled_split(labels, 0.2, shots_per_class=k, seed=3)[0])  # seeded
        val_sets.append(val)
    assert all(torch.equal(val_sets[0], v) for v in val_sets)  # every k shares one validation split
    assert not torch.equal(labelled_split(labels, 0.2, 5, seed=4)[0], labelled_split(labels, 0.2, 5, seed=3)[0])
    with pytest.raises(ValueError, match="class 0 has only 48"):
        labelled_split(labels, 0.2, shots_per_class=49, seed=3)


def test_multi_candidate_probe_matches_each_candidate_trained_alone():
    """All (lr, wd) candidates in one wide layer end where each would end trained by itself."""
    data = clusters(300, (12,), 0, spread=2.0)
    x, y = data.features["s0"], data.labels
    lrs, wds = torch.tensor([0.01, 0.1, 0.01, 0.1]), torch.tensor([0.0, 0.0, 0.01, 0.01])
    together_w, together_b = train_linear_models(x, y, NUM_CLASSES, lrs, wds, epochs=4, batch_size=64, seed=5)
    for g in range(len(lrs)):
        alone_w, alone_b = train_linear_models(x, y, NUM_CLASSES, lrs[g : g + 1], wds[g : g + 1], epochs=4,
                                               batch_size=64, seed=5)
        torch.testing.assert_close(together_w[g], alone_w[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(together_b[g], alone_b[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(together_w[0], together_w[3])  # the candidates really differ


def test_multi_candidate_probe_minimises_the_regularised_cross_entropy():
    """The hand-written gradient is that of mean cross-entropy + wd/2 ||W||^2 (checked against autograd)."""
    data = clusters(64, (6,), 0, spread=2.0)
    x, y = data.features["s0"], data.labels
    weights = torch.randn(6, 2, NUM_CLASSES)
    biases = torch.randn(2, NUM_CLASSES)
    wds = torch.tensor([0.0, 0.3])
    grad_w, grad_b = linear_module._softmax_gradients(x, y, weights, biases, wds)
    w, b = weights.clone().requires_grad_(True), biases.clone().requires_grad_(True)
    loss = sum(nn.functional.cross_entropy(x @ w[:, g] + b[g], y) + 0.5 * wds[g] * w[:, g].square().sum()
               for g in range(2))
    loss.backward()
    torch.testing.assert_close(grad_w, w.grad)
    torch.testing.assert_close(grad_b, b.grad)


def test_stratified_split_keeps_every_class_on_both_sides():
    labels = torch.arange(100) % 5
    fit, val = stratified_split(labels, 0.2, seed=0)
    assert len(set(fit.tolist()) & set(val.tolist())) == 0 and len(fit) + len(val) == 100
    assert torch.bincount(labels[val], minlength=5).tolist() == [4] * 5


# -- kNN -------------------------------------------------------------------------------------------
def test_knn_solves_clusters_and_is_at_chance_on_random_labels():
    good = KNNProbe().run(clusters(600, (16,), 0), clusters(300, (16,), 1), NUM_CLASSES)
    assert good["top1"] > 0.97 and good["k"] == 200 and good["temperature"] == 0.1
    bad = KNNProbe().run(clusters(600, (16,), 0, random_labels=True), clusters(600, (16,), 1, random_labels=True),
                         NUM_CLASSES)
    assert abs(bad["top1"] - 1 / NUM_CLASSES) < 0.08


def test_knn_chunking_does_not_change_votes_and_matches_the_dense_rule():
    generator = torch.Generator().manual_seed(0)
    train_x, query_x = torch.randn(300, 6, generator=generator), torch.randn(70, 6, generator=generator)
    train_y = torch.randint(0, 4, (300,), generator=generator)
    chunked = knn_scores(train_x, train_y, query_x, 4, k=20, temperature=0.1, chunk_size=16)
    whole = knn_scores(train_x, train_y, query_x, 4, k=20, temperature=0.1, chunk_size=1000)
    assert torch.allclose(chunked, whole)
    # The rule written out densely: exp(cos/T) votes of the 20 nearest neighbours.
    sim = nn.functional.normalize(query_x, dim=1) @ nn.functional.normalize(train_x, dim=1).T
    top_sim, top_idx = sim.topk(20, dim=1)
    dense = torch.zeros(70, 4)
    for q in range(70):
        for s, i in zip(top_sim[q], top_idx[q]):
            dense[q, train_y[i]] += torch.exp(s / 0.1)
    assert torch.allclose(chunked, dense, rtol=1e-5)


def test_knn_names_a_missing_stage():
    with pytest.raises(ValueError, match="stage='s7' was not extracted"):
        KNNProbe(stage="s7").run(clusters(50, (4,), 0), clusters(20, (4,), 1), NUM_CLASSES)


# -- extraction, shapes and the cache ---------------------------------------------------------------
class TinyData:
    """The parts of PretextDataModule that evaluation uses, over random or colour-coded images."""

    def __init__(self, train: Split, test: Split, num_classes: int, batch_size: int = 32) -> None:
        self._splits = {"train": train, "test": test}
        self.num_classes = num_classes
        self.batch_size = batch_size

    def split(self, name: str) -> Split:
        return self._splits[name]

    def eval_dataloader(self, name: str):
        split = self._splits[name]
        for start in range(0, len(split), self.batch_size):
            yield split.images[start : start + self.batch_size], split.labels[start : start + self.batch_size]

    def prepare_images(self, images: torch.Tensor, augment: bool) -> torch.Tensor:
        floats = images.float() / 255.0
        return floats.flip(3) if augment and torch.rand(()) < 0.5 else floats


def random_split(num: int, seed: int, size: int = 32) -> Split:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (num, 3, size, size), dtype=torch.uint8, generator=generator)
    return Split(images, torch.arange(num) % 2)


def colour_split(num: int, seed: int, size: int = 16) -> Split:
    """Class = which colour channel is bright: trivially learnable, but not by a random linear head."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(num) % 3
    images = torch.rand(num, 3, size, size, generator=generator) * 0.3
    images[torch.arange(num), labels] += 0.6
    return Split((images * 255).to(torch.uint8), labels)


def encoder_for(name: str, **kwargs) -> EvaluationEncoder:
    torch.manual_seed(0)
    return EvaluationEncoder(build_backbone(name, **kwargs), lambda images: images - 0.5)


@pytest.mark.parametrize("name, kwargs", [("convnet", {"width": 8}), ("resnet18", {"cifar_stem": True})])
@pytest.mark.parametrize("pool_size", [1, 2])
def test_per_stage_extraction_shapes(name, kwargs, pool_size):
    encoder = encoder_for(name, **kwargs)
    data = TinyData(random_split(10, 0), random_split(6, 1), 2, batch_size=4)
    stages = list(encoder.stage_names)
    features = extract_features(encoder, data.eval_dataloader("train"), lambda x: data.prepare_images(x, False),
                                stages, pool_size)
    assert list(features.features) == stages and features.labels.shape == (10,)
    for stage in stages:
        assert features.features[stage].shape == (10, encoder.stage_feature_dim(stage, pool_size))
        assert features.features[stage].dtype == torch.float32


def test_vit_per_stage_extraction_shapes():
    vit = pytest.importorskip("pretextlab.backbones.vit")
    del vit
    from pretextlab.backbones import available_backbones

    names = [n for n in available_backbones() if n.startswith("vit")]
    if not names:
        pytest.skip("no ViT backbone registered")
    encoder = EvaluationEncoder(build_backbone(names[0]), lambda images: images)
    data = TinyData(random_split(4, 0), random_split(2, 1), 2)
    stages = list(encoder.stage_names)
    features = extract_features(encoder, data.eval_dataloader("train"), lambda x: data.prepare_images(x, False),
                                stages)
    for stage in stages:
        assert features.features[stage].shape == (4, encoder.stage_feature_dim(stage))


def test_evaluate_caches_features_by_weights(tmp_path: Path, monkeypatch):
    encoder = encoder_for("convnet", width=4)
    data = TinyData(random_split(40, 0, 16), random_split(20, 1, 16), 2)
    protocols = {"knn": KNNProbe(k=5)}
    first = evaluate(encoder, data, protocols, "all", 1, "cpu", cache_dir=tmp_path)
    assert first["knn"]["features_cached"] is False
    assert len(list((tmp_path / runner_module.CACHE_FOLDER).glob("features-*.pt"))) == 1

    def no_extraction(*args, **kwargs):
        raise AssertionError("features should have come from the cache")

    monkeypatch.setattr(runner_module, "extract_features", no_extraction)
    second = evaluate(encoder, data, protocols, "all", 1, "cpu", cache_dir=tmp_path)
    assert second["knn"]["features_cached"] is True and second["knn"]["top1"] == first["knn"]["top1"]
    with torch.no_grad():  # new weights ⇒ a new fingerprint ⇒ extraction runs again
        next(encoder.parameters()).add_(1.0)
    with pytest.raises(AssertionError, match="from the cache"):
        evaluate(encoder, data, protocols, "all", 1, "cpu", cache_dir=tmp_path)


# -- fine-tuning -----------------------------------------------------------------------------------
def test_finetune_learns_an_easy_problem_and_leaves_the_encoder_alone():
    encoder = encoder_for("convnet", width=8, num_blocks=2)
    before = copy.deepcopy(encoder.state_dict())
    data = TinyData(colour_split(192, 0), colour_split(96, 1), 3)
    result = FineTune(epochs=4, lrs=[0.05], batch_size=32, seed=0).run_model(encoder, data, "cpu")
    assert result["top1"] > 0.9, result  # chance is 1/3
    assert result["train_images"] == 192 and result["epochs"] == 4
    after = encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics untouched


def test_finetune_low_shot_uses_k_per_class():
    data = TinyData(colour_split(60, 0), colour_split(30, 1), 3)
    result = FineTune(epochs=1, batch_size=8, shots_per_class=5).run_model(encoder_for("convnet", width=4), data,
                                                                           "cpu")
    assert result["train_images"] == 15 and result["shots_per_class"] == 5


# -- configs and the whole pipeline ---------------------------------------------------------------
@pytest.mark.parametrize("option, names", [
    ("linear", {"linear"}), ("knn", {"knn"}), ("finetune", {"finetune"}), ("linear_knn", {"linear", "knn"}),
    ("standard", {"linear", "knn", "finetune"}), ("linear_lowshot", {"linear", "linear_lowshot"}), ("none", set()),
    ("rotnet_cifar", {"rotnet_cifar"}),
    ("semisup", {"linear", "linear_k20", "linear_k100", "linear_k400", "finetune_k20", "finetune_k100", "finetune_k400"}),
])
def test_every_eval_option_composes_and_instantiates(make_config, option, names):
    cfg = make_config([f"eval={option}", *TINY_ANY_EVAL], tiny=False)
    assert {"stages", "pool_size", "headline", "protocols"} <= set(cfg.eval)
    assert set(cfg.eval.protocols) == names
    for protocol_cfg in cfg.eval.protocols.values():
        protocol = instantiate(protocol_cfg)
        assert hasattr(protocol, "run") or hasattr(protocol, "run_model")


def test_a_misspelt_eval_key_fails(make_config):
    with pytest.raises(ConfigCompositionException, match="temperatur"):
        make_config(["eval=knn", "eval.protocols.knn.temperatur=0.2", *TINY_ANY_EVAL], tiny=False)


def test_standard_eval_end_to_end(make_config):
    from pretextlab.train import run

    cfg = make_config(["task=none", "eval=standard", *TINY_ANY_EVAL, "eval.protocols.linear.epochs=3",
                       "eval.protocols.linear.lrs=[0.01]", "eval.protocols.linear.weight_decays=[0.0]",
                       "eval.protocols.knn.k=20", "eval.protocols.finetune.epochs=1"], tiny=False)
    results = run(cfg)
    assert set(results["eval"]) == {"linear", "knn", "finetune"}
    assert results["headline"]["value"] == results["eval"]["linear"]["top1"]
    for name in ("linear", "knn", "finetune"):
        assert 0.0 <= results["eval"][name]["top1"] <= results["eval"][name]["top5"] <= 1.0
