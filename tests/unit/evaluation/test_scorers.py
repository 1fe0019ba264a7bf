import pytest

from kubetune.evaluation.scorers import contains, exact_match, f1, normalize, rouge_l, score


def test_normalize_drops_case_punctuation_articles_and_dashes():
    assert normalize("  Urgency: EMERGENCY — call  the ambulance!") == "urgency emergency call ambulance"


@pytest.mark.parametrize(("pred", "ref", "expected"), [
    ("Urgency: URGENT", "urgency urgent", 1.0),
    ("The answer is Paris.", "answer is paris", 1.0),
    ("Paris, France", "Paris", 0.0),
    ("", "", 1.0),
])
def test_exact_match(pred, ref, expected):
    assert exact_match(pred, ref) == expected


@pytest.mark.parametrize(("pred", "ref", "expected"), [
    ("Urgency: URGENT — see a GP today.", "Urgency: URGENT", 1.0),
    ("Urgency: EMERGENCY — call 911.", "Urgency: URGENT", 0.0),
    ("Please come urgently", "urgent", 0.0),  # word boundaries
    ("anything", "", 0.0),  # an empty reference never matches
])
def test_contains(pred, ref, expected):
    assert contains(pred, ref) == expected


def test_rouge_l_is_lcs_f_measure():
    # LCS of "a b c d" and "a c d e" (article-free tokens) is "c d"? use plain words
    pred, ref = "police killed the gunman", "police kill the gunman"
    # tokens: [police, killed, gunman] vs [police, kill, gunman]: LCS 2, P = R = 2/3
    assert rouge_l(pred, ref) == pytest.approx(2 / 3)
    assert rouge_l("x y z", "x y z") == 1.0
    assert rouge_l("x y z", "q r") == 0.0
    # order matters for ROUGE-L, not for F1
    assert rouge_l("one two three", "three two one") == pytest.approx(1 / 3)
    assert f1("one two three", "three two one") == 1.0


def test_f1_counts_token_multiplicity():
    # pred [cat, cat, sat], ref [cat, sat, down]: common = cat + sat = 2; P = 2/3, R = 2/3
    assert f1("the cat cat sat", "cat sat down") == pytest.approx(2 / 3)
    assert f1("", "cat") == 0.0


def test_score_takes_best_reference_and_rejects_unknown_scorer():
    assert score("exact_match", "Rome", ["Paris", "rome"]) == 1.0
    assert score("contains", "Urgency: ROUTINE.", "Urgency: ROUTINE") == 1.0
    with pytest.raises(ValueError, match="unknown scorer 'bleu'; valid: exact_match, contains, rouge_l, f1"):
        score("bleu", "a", "b")
    with pytest.raises(ValueError, match="no reference"):
        score("f1", "a", [])
