"""Calibrated confidence and taxonomy-aware answers (issue 9), on synthetic clustered vectors."""

from __future__ import annotations

import numpy as np

from core.answer import finish_answer
from core.calibration import (
    VoteCalibrator,
    expected_calibration_error,
    fit_calibrator,
    fit_vote_calibration,
    load_calibrator,
    loo_vote_rows,
    top_predictions,
)
from core.classify import vote


def _clusters(
    n_species: int = 300, per: int = 3, noise: float = 1.3, seed: int = 0
) -> tuple[np.ndarray, list[str]]:
    """Overlapping clusters: the raw vote share is near 1 far more often than it is right."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_species, 32))
    x, labels = [], []
    for c in range(n_species):
        count = per if c % 3 else 1  # a third of the species have a single photo (open set)
        for _ in range(count):
            x.append(centres[c] + noise * rng.normal(size=32))
            labels.append(f"Genus{c // 2} species{c}")
    x = np.array(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def test_calibration_makes_overconfident_shares_honest() -> None:
    x, labels = _clusters()
    rows = loo_vote_rows(x, labels, k=10)
    raw_conf, correct, _ = top_predictions(rows, None)
    assert raw_conf.mean() - correct.mean() > 0.15  # the raw share is overconfident
    # Fit on every other query, measure on the rest (held-out).
    cal = fit_calibrator(rows[::2])
    conf, hit, _ = top_predictions(rows[1::2], cal)
    raw_half, _, _ = top_predictions(rows[1::2], None)
    assert expected_calibration_error(conf, hit) < expected_calibration_error(raw_half, hit) / 2
    assert expected_calibration_error(conf, hit) < 0.1
    assert conf.max() <= 0.99


def test_calibrator_round_trip_and_staleness(tmp_path) -> None:
    x, labels = _clusters()
    cal = fit_vote_calibration(labels, x, fingerprint="m1", key="species:abc", k=10)
    assert cal is not None and cal.report["ece_fitted"] <= cal.report["ece_raw"]
    cal.save(tmp_path)
    back = load_calibrator(tmp_path, fingerprint="m1", key="species:abc")
    assert back is not None and np.allclose(back.coef, cal.coef)
    assert load_calibrator(tmp_path, fingerprint="m2", key="species:abc") is None
    assert load_calibrator(tmp_path, fingerprint="m1", key="species:other") is None
    (tmp_path / "vote_calibration.json").write_text("{broken")
    assert load_calibrator(tmp_path, fingerprint="m1", key="species:abc") is None


def test_probabilities_never_reach_one_nor_sum_past_it() -> None:
    cal = VoteCalibrator(np.array([5.0, 10.0, 0.0]))
    p = cal.probability([0.999, 0.6, 0.4], 0.99)
    assert p.max() <= 0.99 and p.sum() <= 0.99 + 1e-9


def _split_vote(calibrator: VoteCalibrator | None = None) -> dict:
    sims = np.array([0.9, 0.89, 0.88, 0.87])
    return finish_answer(
        vote(
            ["Felis catus", "Felis silvestris", "Felis catus", "Felis silvestris"],
            sims,
            min_similarity=0.5,
            min_confidence=0.6,
        ),
        calibrator=calibrator,
        min_probability=0.7,
        min_similarity=0.5,
        raw_min_confidence=0.6,
    )


def test_genus_answer_when_congeneric_species_split_the_vote() -> None:
    result = _split_vote()
    assert result["species"] is None
    assert result["rank"] == "genus" and result["taxon"] == "Felis"
    assert result["likely_species"] == "Felis catus"
    assert result["taxon_confidence"] >= 0.6
    # With a calibrator the calibrated shares decide, with the same outcome here.
    calibrated = _split_vote(VoteCalibrator(np.array([1.0, 2.0, 0.0])))
    assert calibrated["calibrated"] and calibrated["species"] is None
    assert calibrated["rank"] == "genus" and calibrated["taxon"] == "Felis"
    assert calibrated["taxon_confidence"] <= 0.99


def test_family_answer_and_open_set_gate() -> None:
    species = ["Felis catus", "Lynx lynx", "Panthera leo"]
    raw = vote(species, np.array([0.9, 0.9, 0.9]), min_similarity=0.5, min_confidence=0.6)
    result = finish_answer(
        raw, calibrator=None, min_probability=0.7, min_similarity=0.5, raw_min_confidence=0.6
    )
    assert result["rank"] == "family" and result["taxon"] == "Felidae"
    # An outsider (no neighbour similar enough) gets no rank answer either.
    far = vote(species, np.array([0.3, 0.3, 0.3]), min_similarity=0.5, min_confidence=0.6)
    result = finish_answer(
        far, calibrator=None, min_probability=0.7, min_similarity=0.5, raw_min_confidence=0.6
    )
    assert result["rank"] is None and result["taxon"] is None and result["species"] is None


def test_species_answer_keeps_old_keys() -> None:
    raw = vote(
        ["Canis lupus"] * 3, np.array([0.9, 0.8, 0.7]), min_similarity=0.5, min_confidence=0.3
    )
    cal = VoteCalibrator(np.array([1.0, 3.0, 0.0]))
    result = finish_answer(raw, calibrator=cal, min_probability=0.7, min_similarity=0.5)
    assert {"species", "confidence", "probabilities", "source"} <= set(result)
    assert result["species"] == "Canis lupus" and result["rank"] == "species"
    assert result["confidence"] <= 0.99 and result["vote_share"] == 1.0


def test_reindex_fits_the_calibration_and_the_engine_serves_it(tmp_path) -> None:
    from PIL import Image, ImageOps

    from core.calibration import CALIBRATION_FILE
    from core.engine import Engine
    from core.settings import load_settings
    from tests.helpers import TinyEmbedder, make_collection

    root = tmp_path / "photos"
    make_collection(root, {"Aa_aa": 8, "Ab_bb": 8, "Cc_cc": 8})
    settings = load_settings(
        images_dir=root, index_dir=tmp_path / "idx", models_dir=tmp_path / "m", index_type="flat"
    )
    engine = Engine(settings, embedder=TinyEmbedder())
    report = engine.reindex()
    assert (tmp_path / "m" / CALIBRATION_FILE).exists()
    assert report.head is not None and report.head["calibration"]["queries"] == 24
    query = ImageOps.mirror(Image.open(sorted((root / "Cc_cc").glob("*.jpg"))[0]))
    result = engine.classify(query)
    assert result["calibrated"] is True and result["confidence"] <= 0.99
    assert result["rank"] in {"species", "genus", "family", "order", None}
    if result["species"] is not None:
        assert result["rank"] == "species" and result["taxon"] == result["species"]
    # A different label set makes it stale: it is not served.
    make_collection(root, {"Dd_dd": 2})
    engine.reindex(train="skip")
    assert engine.classify(query)["calibrated"] is False


def _genera_of_singletons(seed: int, genera: int = 40, per_genus: int = 4, noise: float = 0.9):
    """Every species has one photo (never nameable), but the species of one genus look alike:
    what a collection of mostly single photos gives the answer ladder to work with."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(genera, 32))
    x = np.repeat(centres, per_genus, axis=0) + noise * rng.normal(size=(genera * per_genus, 32))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = [f"Genus{i // per_genus} species{i}" for i in range(genera * per_genus)]
    lineage = {
        name: {"genus": name.split()[0], "family": f"Fam{int(name.split()[0][5:]) // 2}"}
        for name in labels
    }
    return x.astype(np.float32), labels, lineage


def test_rank_rows_sum_shares_per_taxon_and_grade_the_truth_s_taxon() -> None:
    from core.calibration import VoteRow, rank_rows

    lineage = {
        "A a": {"genus": "A"},
        "A b": {"genus": "A"},
        "B c": {"genus": "B"},
        "A z": {"genus": "A"},
    }
    row = VoteRow(("B c", "A a", "A b"), np.array([0.4, 0.35, 0.25]), 0.7, "A z")
    seen = rank_rows(
        [row, VoteRow(("A a",), np.ones(1), 0.7, "X")], "genus", lambda n: lineage.get(n, {})
    )
    assert len(seen) == 1  # the second truth has no genus: it cannot be graded
    assert seen[0].candidates == ("A", "B") and np.allclose(seen[0].shares, [0.6, 0.4])
    assert seen[0].truth == "A"


def test_the_genus_is_answered_when_no_species_can_be() -> None:
    from kontrol.evaluation.served import AnswerPolicy, held_out_answers

    x, labels, lineage = _genera_of_singletons(0)
    got = held_out_answers(
        x,
        labels,
        AnswerPolicy(k=10, min_similarity=0.3, min_confidence=0.35),
        lineage=lambda name: lineage.get(name, {}),
    )
    assert not got.named().any()  # one photo per species: never named
    answered, right = got.rank_outcomes(lambda name: lineage.get(name, {}))
    assert answered.sum() >= 100  # the genus (or family) instead of "not sure"
    assert right[answered].mean() >= 0.85
    assert {a["rank"] for a in np.array(got.answers)[answered]} <= {"genus", "family"}


def test_rank_calibration_round_trips_and_old_files_still_load(tmp_path) -> None:
    import json

    x, labels, lineage = _genera_of_singletons(1)
    cal = fit_vote_calibration(
        labels,
        x,
        fingerprint="m",
        key="k",
        min_similarity=0.3,
        target_precision=0.85,
        lineage=lambda name: lineage.get(name, {}),
    )
    assert cal is not None and set(cal.ranks) == {"genus", "family"}
    assert cal.named_threshold(0.85, 0.3, "genus") is not None
    cal.save(tmp_path)
    back = load_calibrator(tmp_path, fingerprint="m", key="k")
    assert back is not None and np.allclose(back.ranks["genus"], cal.ranks["genus"])
    body = json.loads((tmp_path / "vote_calibration.json").read_text())
    del body["ranks"]  # a file from before rank calibration
    (tmp_path / "vote_calibration.json").write_text(json.dumps(body))
    old = load_calibrator(tmp_path, fingerprint="m", key="k")
    assert old is not None and old.ranks == {}
    assert old.rank_probability("genus", [0.5], 0.5) is None


def test_a_calibration_of_other_vote_settings_is_not_served_and_is_refitted(tmp_path) -> None:
    from PIL import Image

    from core.engine import Engine
    from core.settings import load_settings
    from tests.helpers import TinyEmbedder, make_collection

    root = tmp_path / "photos"
    make_collection(root, {"Aa_aa": 8, "Ab_bb": 8, "Cc_cc": 8})
    settings = load_settings(
        images_dir=root, index_dir=tmp_path / "idx", models_dir=tmp_path / "m", index_type="flat"
    )
    Engine(settings, embedder=TinyEmbedder()).reindex()
    query = Image.open(sorted((root / "Cc_cc").glob("*.jpg"))[0])
    hotter = Engine(
        settings.model_copy(update={"classify_vote_temperature": 0.2}), embedder=TinyEmbedder()
    )
    fitted_at = settings.classify_vote_temperature
    assert fitted_at != 0.2
    assert hotter.classify(query)["calibrated"] is False  # fitted on votes at another T
    report = hotter.train_head()  # not forced: refits because the vote settings changed
    assert report is not None and report["calibration"]["temperature"] == 0.2
    assert hotter.classify(query)["calibrated"] is True


def test_a_taxon_is_never_less_likely_than_its_species() -> None:
    """A species at 77 % cannot sit in a class shown at 63 %: the rank's probability is at least
    the sum of its candidate species' probabilities, whatever the rank's own calibration says."""
    cal = VoteCalibrator(np.array([1.0, 0.0, 0.0]))  # species: p = share
    cal.ranks["class"] = np.array([0.0, 0.0, 0.5])  # class: a flat 0.62 whatever the share
    lineage = {
        "Acinonyx jubatus": {"genus": "Acinonyx", "family": "Felidae", "class": "Mammalia"},
        "Panthera onca": {"genus": "Panthera", "family": "Felidae", "class": "Mammalia"},
        "Anser anser": {"genus": "Anser", "family": "Anatidae", "class": "Aves"},
    }
    raw = vote(
        ["Acinonyx jubatus", "Panthera onca", "Anser anser"],
        np.array([0.96, 0.80, 0.79]),
        min_similarity=0.5,
        min_confidence=0.35,
    )
    out = finish_answer(
        raw,
        calibrator=cal,
        min_probability=0.99,
        min_similarity=0.5,
        lineage=lambda n: lineage.get(n, {}),
        rank_thresholds={"genus": 0.99, "family": 0.99, "order": 0.99, "class": 0.5},
    )
    assert out["rank"] == "class" and out["taxon"] == "Mammalia"
    species_in_class = out["probabilities"]["Acinonyx jubatus"] + out["probabilities"].get(
        "Panthera onca", 0.0
    )
    assert out["taxon_confidence"] >= min(species_in_class, 0.99) - 1e-6
    assert out["taxon_confidence"] > 0.63
