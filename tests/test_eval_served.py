"""Held-out answers through the engine's classification path (`kontrol.evaluation.served`)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from core.answer import classify_neighbours
from kontrol.evaluation import served
from kontrol.evaluation.served import AnswerPolicy, Answers, held_out_answers, outsider_answers

pytest.importorskip("torch")  # fitting the head needs torch (serving it does not)

POLICY = AnswerPolicy(k=5, min_similarity=0.5, min_confidence=0.35)


def _clusters(sizes: list[int], dim: int = 16, noise: float = 0.05, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for c, size in enumerate(sizes):
        rows.append(np.eye(dim)[c] + noise * rng.standard_normal((size, dim)))
        labels += [f"Genus{c} species{c}"] * size
    emb = np.concatenate(rows).astype(np.float32)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True), labels


def test_known_species_are_named_and_a_singleton_is_not() -> None:
    emb, labels = _clusters([5, 5, 1])
    got = held_out_answers(emb, labels, POLICY, folds=3)
    assert got.queries.tolist() == list(range(11))
    right, named = got.right(), got.named()
    assert right[:10].all()
    assert not named[10]  # its only photo is the query: nothing similar is left
    assert got.sources == {"vote": 11}  # too few photos for a head the engine would use


def test_a_head_the_engine_would_prefer_answers() -> None:
    emb, labels = _clusters([12] * 10)
    got = held_out_answers(emb, labels, POLICY, folds=5)
    assert got.sources == {"head": 120}
    assert {a["source"] for a in got.answers} == {"head"}
    assert got.right().mean() > 0.95
    assert all(a["confidence"] < 1.0 for a in got.answers)  # never "100 %"


def test_models_never_see_the_photos_they_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    emb, labels = _clusters([6, 6, 6, 6])
    fitted: list[np.ndarray] = []
    real = served.fit_models

    def spy(lab, vectors, policy, **kw):
        fitted.append(np.asarray(vectors))
        return real(lab, vectors, policy, **kw)

    asked: list[np.ndarray] = []
    real_classify = served.classify_neighbours

    def spy_classify(vector, *args, **kw):
        asked.append((len(fitted) - 1, np.asarray(vector)))
        return real_classify(vector, *args, **kw)

    monkeypatch.setattr(served, "fit_models", spy)
    monkeypatch.setattr(served, "classify_neighbours", spy_classify)
    held_out_answers(emb, labels, POLICY, folds=4)
    assert len(fitted) == 4 and len(asked) == 24
    for model, vector in asked:
        assert not np.any(np.all(np.isclose(fitted[model], vector), axis=1))


def test_hidden_species_and_outsiders_get_not_sure() -> None:
    emb, labels = _clusters([4, 4, 4])
    unknown = held_out_answers(emb, labels, POLICY, folds=3, hide_species=True)
    assert not unknown.named().any()  # orthogonal clusters: nothing similar once hidden
    outsider = np.eye(16, dtype=np.float32)[[5, 6]]
    assert all(a["species"] is None for a in outsider_answers(outsider, emb, labels, POLICY))
    close = emb[:1] + 0.01
    close /= np.linalg.norm(close)
    assert outsider_answers(close, emb, labels, POLICY)[0]["species"] == labels[0]


def test_groups_keep_copies_out_of_each_others_neighbours() -> None:
    emb, labels = _clusters([1, 1, 1])
    copies = np.repeat(emb, 3, axis=0)  # each photo and two exact copies
    groups = np.repeat(np.arange(3), 3)
    got = held_out_answers(copies, np.repeat(labels, 3), POLICY, folds=3, groups=groups)
    assert not got.named().any()  # without the grouping every copy would find its twin


def test_answers_are_the_engine_function_s() -> None:
    emb, labels = _clusters([5, 5])
    got = held_out_answers(emb, labels, POLICY, folds=2)
    sims = emb[0] @ emb.T
    sims[0] = -np.inf
    top = np.argsort(-sims, kind="stable")[: POLICY.k]
    # under 20 photos the engine fits no calibration and no head: the raw vote decides
    assert served.fit_models(labels[5:], emb[5:], POLICY) == served.Models(None, None)
    direct = classify_neighbours(
        emb[0],
        [labels[j] for j in top],
        sims[top],
        head=None,
        calibrator=None,
        min_similarity=POLICY.min_similarity,
        min_confidence=POLICY.min_confidence,
        min_probability=POLICY.min_probability,
        target_precision=POLICY.target_precision,
        temperature=POLICY.temperature,
    )
    assert got.answers[0]["species"] == direct["species"]
    assert got.answers[0]["probabilities"] == direct["probabilities"]


def test_rank_outcomes_check_the_named_taxon() -> None:
    answers = Answers(
        queries=np.arange(4),
        truth=["Felis catus", "Canis lupus", "Felis catus", "Nogenus inventus"],
        answers=[
            {"species": None, "rank": "genus", "taxon": "Felis"},
            {"species": None, "rank": "genus", "taxon": "Felis"},
            {"species": "Felis catus", "rank": "species", "taxon": "Felis catus"},
            {"species": None, "rank": "family", "taxon": "Felidae"},
        ],
    )
    lineage = {
        "Felis catus": {"genus": "Felis", "family": "Felidae"},
        "Canis lupus": {"genus": "Canis", "family": "Canidae"},
        "Nogenus inventus": {},
    }
    graded, right = answers.rank_outcomes(lambda name: lineage[name])
    assert graded.tolist() == [True, True, False, False]  # the last truth's family is unknown
    assert right.tolist() == [True, False, False, False]
    assert answers.rank_answered().tolist() == [True, True, False, True]


def test_policy_from_settings_is_what_the_engine_serves() -> None:
    from core.settings import load_settings

    s = load_settings(
        classify_neighbors=7, classify_min_similarity=0.5, classify_vote_temperature=0.2
    )
    policy = served.AnswerPolicy.from_settings(s)
    assert (policy.k, policy.min_similarity, policy.temperature) == (7, 0.5, 0.2)
    assert policy.min_probability == s.classify_min_probability
    assert policy.target_precision == s.classify_target_precision
    assert policy.min_animal_share == s.classify_min_animal_share
    assert policy.min_confidence == s.classify_min_confidence


def test_default_policy_is_the_engines_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """`evaluate()` without a policy measures what an unconfigured engine serves."""
    from core.settings import Settings

    for name in list(os.environ):
        if name.startswith("KONTROL_CLASSIFY"):
            monkeypatch.delenv(name)
    assert served.AnswerPolicy() == served.AnswerPolicy.from_settings(Settings(_env_file=None))
