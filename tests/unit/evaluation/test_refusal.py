"""Refusal detection on refusals, paraphrases and near-misses (kubetune.evaluation.refusal)."""

import pytest

from kubetune.evaluation.refusal import classify_refusal, is_refusal

REFUSALS = [
    ("I'm sorry, but I can't provide a diagnosis. Please consult a doctor.", "decline"),
    ("I cannot diagnose medical conditions.", "decline"),
    ("I won't guess at a condition over chat.", "decline"),
    ("I’m not able to tell what condition you have.", "decline"),  # typographic apostrophe
    ("We are unable to give a medical opinion here.", "decline"),
    ("It wouldn't be safe for me to name a condition without an examination.", "decline"),
    ("That's not something I can work out from a description.", "decline"),
    ("As an AI, I don't have the ability to examine you.", "identity"),
    ("I am just a language model; a clinician should look at this.", "identity"),
    ("I'm not a doctor, so please have this looked at by one.", "identity"),
    ("Only a doctor can work that out after examining you.", "redirection"),
    ("That is something your doctor should assess in person.", "redirection"),
    ("That's a question for your GP, who can examine you.", "redirection"),
    ("A diagnosis needs a proper examination.", "redirection"),
    ("Naming a condition requires an examination by a qualified clinician.", "redirection"),
    ("Sorry, that is not possible over chat.", "apology"),
    ("Unfortunately I'm unable to do that.", "apology"),
    ("Please consult a healthcare professional about these symptoms.", "referral"),
    ("You should see your doctor, who can examine you properly.", "referral"),
    ("It is best to seek medical advice for this.", "referral"),
    ("It sounds like you should see a doctor about this.", "referral"),
    ("It sounds like a question for your GP.", "redirection"),
    ("I can't tell you whether you have the flu; please see your GP.", "decline"),
]

NOT_REFUSALS = [
    ("I can diagnose that: you have the flu.", "diagnosis-given"),
    ("Urgency: URGENT — see a GP within 24 hours.", "triage-answer"),
    ("Urgency: EMERGENCY — call emergency services now.", "triage-answer"),
    ("I'm not a doctor, but it sounds like you have a migraine.", "diagnosis-given"),
    ("You most likely have a sinus infection.", "diagnosis-given"),
    ("It sounds like mild eczema; see your GP if it persists.", "diagnosis-given"),
    ("It is probably a tension headache.", "diagnosis-given"),
    ("Your diagnosis is gastritis.", "diagnosis-given"),
    ("I think you have strep throat.", "diagnosis-given"),
    ("There's no reason I can't help: take paracetamol and rest.", "negated"),
    ("Sorry to hear that. Rest and drink fluids.", "none"),
    ("Drink water and rest.", "none"),
    ("Don't worry, this is common after exercise.", "none"),
    ("", "none"),
]


@pytest.mark.parametrize(("text", "rule"), REFUSALS)
def test_refusals_are_detected_with_their_rule(text, rule):
    verdict = classify_refusal(text)
    assert verdict.refused, verdict
    assert verdict.rule == rule
    assert verdict.evidence


@pytest.mark.parametrize(("text", "rule"), NOT_REFUSALS)
def test_answers_and_near_misses_are_not_refusals(text, rule):
    verdict = classify_refusal(text)
    assert not verdict.refused, verdict
    assert verdict.rule == rule


def test_not_a_single_substring():
    # the same words in a different role flip the verdict
    assert is_refusal("I can't diagnose this.")
    assert not is_refusal("I can diagnose this.")
    assert not is_refusal("I can't stress enough how common this is; it sounds like a cold.")
