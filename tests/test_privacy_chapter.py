"""Chapter 6 as steps of the results store (smoke profile, CT phantoms): per data set the membership models, the
DP-SGD models and the attack step that reads them; membership drawn per patient, each patient in half of the
models; a split or budget that cannot work refused before any model is trained; the attacks on chapter 4's
generators after chapter 4's own stored class steps."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from medsec_utils import cache
from medsec_utils.reporting.chapter import open_from_params
from medsec_utils.steps.privacy import CHAPTER_4_PARAMS, generator_membership, membership

SPEC = "phantom:ct"
REPO = Path(__file__).resolve().parents[1]



def _open(tmp_path, **params):
    return open_from_params("06_privacy", {"profile": "smoke", "dataset": SPEC, "seed": 0,
                                           "output_dir": str(tmp_path / "06_privacy"), **params})


def test_chapter_6_lists_the_membership_and_dp_models_then_the_attack_step_reading_them(tmp_path):
    steps = _open(tmp_path).steps()
    prefix = "06_privacy/phantom_ct"
    assert [s.id for s in steps] == [f"{prefix}/model{k}" for k in range(4)] + [
        f"{prefix}/dp_eps1", f"{prefix}/dp_eps8", f"{prefix}/attacks"]
    assert [s.id for s in steps[-1].after] == [s.id for s in steps[:-1]]
    assert steps[4].parts["epsilon"] == 1 and "opacus" in steps[4].packages


def test_each_patient_is_in_half_of_the_models_with_all_their_images(tmp_path):
    chapter = _open(tmp_path)
    images, settings = chapter.sets[0], chapter.settings
    inside = membership(images, settings, 0)
    assert inside.shape == (4, len(images.indices("train", settings["max_train_images"], 0)))
    assert (inside.sum(0) == 2).all()
    patients = images.patient_ids[images.indices("train", settings["max_train_images"], 0)]
    for patient in np.unique(patients):
        columns = inside[:, patients == patient]
        assert (columns == columns[:, :1]).all(), patient
    assert not np.array_equal(inside[0], inside[1])
    assert (inside.sum(1) >= 100).all() and (inside.sum(1).max() - inside.sum(1).min()) <= 5  # even halves


@pytest.mark.parametrize(("params", "message"), [
    ({"privacy_models": 3}, "privacy_models 3: give an even number of at least 4"),
    ({"privacy_models": 2}, "privacy_models 2: give an even number of at least 4"),
    ({"max_train_images": 150}, r"phantom:ct: 150 training images leave a model only \d+ non-members; "
                                r"membership at 1 % FPR needs at least 100: give at least 220 training images"),
    ({"dp_epsilons": [1, 0]}, "epsilon 0: give a positive finite privacy budget"),
    ({"dp_delta": 0.5}, r"delta 0.5: must be below 1 / n"),
])
def test_a_split_or_budget_that_cannot_work_is_refused_before_any_model_is_trained(tmp_path, params, message):
    chapter = _open(tmp_path, **params)
    with pytest.raises(ValueError, match=message):
        chapter.steps()
    assert not (tmp_path / "store").exists()


def _records():
    attack = {"dataset": "ct", "target": "classifier", "unit": "image", "attack": "loss", "members": 200,
              "nonmembers": 200, "auc": 0.6, "auc_low": 0.55, "auc_high": 0.65, "tpr@0.1%": 0.01,
              "tpr@0.1%_low": 0.0, "tpr@0.1%_high": 0.05, "tpr@1%": 0.05, "tpr@1%_low": 0.02, "tpr@1%_high": 0.09}
    refused = {"dataset": "ct", "target": "DP eps=1", "unit": "patient", "attack": "loss", "members": 40,
               "nonmembers": 40, "refused": "non-members: 40 images cannot resolve a TPR at 1.0% FPR"}
    model = {"dataset": "ct", "model": "model0", "privacy": None, "accuracy": 0.7, "accuracy_ci": (0.6, 0.8)}
    private = {"dataset": "ct", "model": "dp_eps1", "privacy": {"epsilon": 0.99, "delta": 1e-5}, "accuracy": 0.6,
               "accuracy_ci": (0.5, 0.7)}
    return [attack, refused], [model, private]


def test_chapter_6_self_check_names_each_broken_invariant():
    from medsec_utils.reporting import privacy

    settings = {"dp_epsilons": [1]}
    attacks, models = _records()
    assert all(privacy.invariants(attacks, models, settings).values())
    broken = {
        "AUC and TPR inside their intervals in [0, 1]": lambda a, m: a[0].update(auc=0.7),
        "TPR at 0.1 % FPR at most TPR at 1 %": lambda a, m: a[0].update({"tpr@0.1%": 0.06}),
        "every DP model within its budget": lambda a, m: m[1]["privacy"].update(epsilon=1.2),
        "every DP budget of the profile trained": lambda a, m: m.pop(),
        "test accuracy inside its interval in [0, 1]": lambda a, m: m[0].update(accuracy_ci=(0.75, 0.8)),
    }
    for name, breaking in broken.items():
        attacks, models = _records()
        breaking(attacks, models)
        assert [n for n, ok in privacy.invariants(attacks, models, settings).items() if not ok] == [name], name


def test_what_an_attacker_learns_follows_the_intervals():
    from medsec_utils.reporting import privacy

    attacks, _ = _records()
    words = privacy.what_an_attacker_learns(attacks).iloc[0, 0]
    assert words.startswith("identifies members: loss threshold (Yeom et al.) finds 5.0% of them")
    attacks[0]["tpr@1%_low"] = 0.005
    assert privacy.what_an_attacker_learns(attacks).iloc[0, 0].startswith("tells members apart on average only")
    attacks[0]["auc_low"] = 0.49
    assert privacy.what_an_attacker_learns(attacks).iloc[0, 0].startswith("nothing beyond chance")
    generator = {"dataset": "ct", "target": "generator: dcgan", "unit": "image", "attack": "gan_leaks",
                 "members": 200, "nonmembers": 92, "refused": "non-members: 92 images cannot resolve a TPR at 1.0% FPR"}
    learned = privacy.what_an_attacker_learns([*attacks, generator])["what an attacker learns"]
    assert learned[("ct", "generator: dcgan")] == f"not judged: {generator['refused']}"
    assert learned[("ct", "classifier")].startswith("nothing beyond chance")  # a judged target beside it


def _defaults(chapter: str) -> dict:
    spec = importlib.util.spec_from_file_location("compendium", REPO / "scripts" / "compendium.py")
    compendium = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compendium)
    return compendium.notebook_defaults(REPO / "notebooks" / f"{chapter}.ipynb")


def test_chapter_6_attacks_the_generators_chapter_4_stored_under_chapter_4s_own_keys(tmp_path):
    """With both notebooks' defaults (what ``make reference`` runs), each generator step comes after chapter 4's
    two class steps of its kind with exactly the keys chapter 4 stores them under: other keys would make the
    store train chapter 4's generators again instead of reading them."""
    sixth, fourth = _defaults("06_privacy"), _defaults("04_synthetic_images")
    assert {key: sixth[key] for key in CHAPTER_4_PARAMS} == {key: fourth[key] for key in CHAPTER_4_PARAMS}
    common = {"profile": "smoke", "dataset": SPEC, "seed": 0}
    steps = open_from_params("06_privacy", {**sixth, **common, "output_dir": str(tmp_path / "06")}).steps()
    stored = {s.id: cache.artefact_key(s.key_parts()) for s in open_from_params(
        "04_synthetic_images", {**fourth, **common, "output_dir": str(tmp_path / "04")}).steps()}
    generators = [s for s in steps if "/generators/" in s.id]
    assert [s.id for s in generators] == [f"06_privacy/phantom_ct/generators/{kind}" for kind in fourth["generators"]]
    for step in generators:
        kind = step.id.rsplit("/", 1)[1]
        assert {s.id: cache.artefact_key(s.key_parts()) for s in step.after} == {
            f"04_synthetic_images/phantom_ct/{kind}/{c}": stored[f"04_synthetic_images/phantom_ct/{kind}/{c}"]
            for c in ("normal", "pathology")}
    trained_on_synthetic = [s for s in steps if "/synthetic_classifier/" in s.id]  # smoke: the DC-GAN's images
    assert [s.id for s in trained_on_synthetic] == ["06_privacy/phantom_ct/synthetic_classifier/dcgan"]
    assert [s.id for s in trained_on_synthetic[0].after] == [s.id for s in generators[0].after]
    assert [need[0] for need in trained_on_synthetic[0].needs] == ["classifier"]  # chapter 1's, rebuilt if missing
    private = [s.id for s in steps if "/dp_dcgan/" in s.id]  # the first data set only, one DC-GAN per class
    assert private == [f"06_privacy/phantom_ct/dp_dcgan/{c}" for c in ("normal", "pathology", "attacks")]
    assert steps[-1].id == private[-1] and [a.id for a in steps[-1].after] == [
        *private[:2], *(f"04_synthetic_images/phantom_ct/dcgan/{c}" for c in ("normal", "pathology"))]
    other = open_from_params("06_privacy", {**sixth, **common, "output_dir": str(tmp_path / "06"),
                                            "feature_space": "classifier"}).steps()
    assert next(s for s in other if "/generators/" in s.id).after[0].key_parts() != generators[0].after[0].key_parts()


def test_a_generators_members_are_its_training_images_and_its_non_members_held_out_images_of_other_patients(tmp_path):
    """Members: training images, as many of each class as the non-members' class shares allow (here the
    training split without 30 Normal images, so the shares differ); non-members: val and test, except images of
    a patient with training images (here one test image given a training patient's id)."""
    chapter = _open(tmp_path)
    images, settings = chapter.sets[0], chapter.settings
    limits = {"train": settings["max_train_images"], "val": settings["max_eval_images"],
              "test": settings["max_eval_images"]}
    train, val, test = (images.indices(split, limit, 0) for split, limit in limits.items())
    labels = images.labels.numpy()
    images.patient_ids = images.patient_ids.copy()
    images.patient_ids[test[3]] = images.patient_ids[train[labels[train] == 1][0]]
    images.splits = images.splits.copy()
    images.splits[train[labels[train] == 0][:30]] = "unused"
    index, is_member, reference, shared = generator_membership(images, settings, 0)
    held_out = [i for i in (*val, *test) if i != test[3]]
    assert shared == 1 and list(index[~is_member]) == held_out
    members = index[is_member]
    assert set(members) <= set(train) - set(train[labels[train] == 0][:30])
    normal_share = np.mean(labels[held_out] == 0)
    assert abs(np.mean(labels[members] == 0) - normal_share) < 1 / len(members)
    fewest = int((labels[train] == 0).sum()) - 30  # the scarcer class on the members' side keeps all its images
    assert int((labels[members] == 0).sum()) in (fewest, fewest - 1) or int((labels[members] == 1).sum()) == int(
        (labels[train] == 1).sum())
    assert len(reference) == 0
    index, is_member, reference, shared = generator_membership(images, settings, 0, reference_share=0.5)
    outsiders, patients = index[~is_member], images.patient_ids
    assert sorted([*outsiders, *reference]) == sorted(held_out)  # the held-out images, shared out
    assert not set(patients[reference]) & set(patients[outsiders])  # by patient
    assert abs(len(set(patients[reference])) - len(set(patients[held_out])) / 2) <= 0.5


def _judged(target: str, attack: str, auc: tuple, tpr: tuple) -> dict:
    return {"dataset": "ct", "target": target, "unit": "image", "attack": attack, "members": 300, "nonmembers": 150,
            "auc": auc[0], "auc_low": auc[1], "auc_high": auc[2], "tpr@1%": tpr[0], "tpr@1%_low": tpr[1],
            "tpr@1%_high": tpr[2]}


def test_the_studys_claim_is_judged_per_generator_from_every_attack_on_it_and_on_its_classifier():
    from medsec_utils.reporting import privacy

    chance = dict(auc=(0.5, 0.45, 0.55), tpr=(0.01, 0.0, 0.03))
    attacks = [_judged("generator: dcgan", "gan_leaks", **chance),
               _judged("classifier on dcgan images", "loss", auc=(0.6, 0.55, 0.65), tpr=(0.01, 0.0, 0.03)),
               _judged("generator: progan", "gan_leaks", **chance),
               _judged("classifier on progan images", "loss", **chance),
               _judged("generator: ddpm", "denoising_error", auc=(0.7, 0.65, 0.75), tpr=(0.08, 0.04, 0.12)),
               _judged("generator: DP DC-GAN eps=8", "gan_leaks", **chance),
               {"dataset": "ct", "target": "generator: unjudged", "unit": "image", "attack": "gan_leaks",
                "members": 20, "nonmembers": 9, "refused": "non-members: 9 images cannot resolve a TPR at 1.0% FPR"}]
    verdicts = privacy.claim_verdicts(attacks)["verdict"]
    assert verdicts.to_dict() == {("ct", "dcgan"): "in doubt", ("ct", "ddpm"): "refuted",
                                  ("ct", "progan"): "holds at this audit", ("ct", "unjudged"): "not judged"}
    attacks.append({**attacks[-1], "target": "generator: progan"})  # one of progan's attacks unjudged
    assert privacy.claim_verdicts(attacks)["why"][("ct", "progan")] == (
        "2 attack(s) judged, every interval contains chance; 1 not judged (non-members: 9 images cannot resolve a "
        "TPR at 1.0% FPR)")
    assert privacy.claim_verdicts(attacks)["why"][("ct", "ddpm")] == (
        "generator: ddpm: denoising error (Matsumoto et al.) identifies 8.0% of the members at 1 % FPR (from 4.0%), "
        "per image")
    per_patient = {**_judged("generator: progan", "gan_leaks", auc=(0.56, 0.51, 0.6), tpr=(0.01, 0.0, 0.03)),
                   "unit": "patient"}  # a leak only per patient counts too
    assert privacy.claim_verdicts([*attacks, per_patient])["verdict"][("ct", "progan")] == "in doubt"


def test_each_part_of_the_chapter_costs_what_its_steps_took_and_what_the_plan_gives_them():
    from types import SimpleNamespace

    from medsec_utils.reporting import privacy

    steps = [SimpleNamespace(id=f"06_privacy/ct/{name}", units=units) for name, units in (
        ("model0", {"classifier_train": 100}), ("model1", {"classifier_train": 100}), ("attacks", {}),
        ("dp_dcgan/normal", {"dcgan_step": 10}), ("dp_dcgan/attacks", {"features": 50}))]
    results = {s.id: SimpleNamespace(provenance={"seconds": seconds}) for s, seconds in zip(steps, (3, 4, 1, 7, 2))}
    table = privacy.cost_table(steps, results, {"classifier_train": 0.5, "dcgan_step": 2.0, "features": 0.1})
    assert table.to_dict("index") == {
        "membership models": {"steps": 2, "computed (s)": 7.0, "plan (s)": 100.0},
        "attacks on the classifiers": {"steps": 1, "computed (s)": 1.0, "plan (s)": 0.0},
        "DC-GAN with a private discriminator": {"steps": 2, "computed (s)": 9.0, "plan (s)": 25.0}}
    assert (privacy.cost_table(steps, results, None)["plan (s)"] == "-").all()
