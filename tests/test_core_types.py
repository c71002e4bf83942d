"""Requests and hyperparameters: validation, defaults, round trips."""

from __future__ import annotations

import pytest

from engine.methods.refact.hparams import DEFAULT_TEMPLATES, HParamsError, ReFACTHParams
from engine.request import EditRequest, Probe, RequestError


def test_defaults_are_the_papers_road_configuration():
    hp = ReFACTHParams()
    assert (hp.layer, hp.lr, hp.max_steps, hp.prob_threshold) == (7, 0.05, 100, 0.99)
    # the README's --v_weight_decay 0.01 never reached the reference code: 0.1 ran
    assert hp.weight_decay == 0.1
    assert hp.clamp_factor == 4.0 and hp.similarity == "l2"
    assert len(hp.templates) == 9 and hp.templates == DEFAULT_TEMPLATES


def test_hparams_round_trip_and_fingerprint():
    hp = ReFACTHParams(layer=9, lr=0.1)
    again = ReFACTHParams.from_dict(hp.to_dict())
    assert again == hp and again.fingerprint() == hp.fingerprint()
    assert ReFACTHParams().fingerprint() != hp.fingerprint()
    assert hp.with_overrides(lr=None, max_steps=5).max_steps == 5


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"layer": -1}, "layer"),
        ({"lr": 0}, "lr"),
        ({"max_steps": 0}, "max_steps"),
        ({"prob_threshold": 1.5}, "prob_threshold"),
        ({"similarity": "dot"}, "similarity"),
        ({"templates": ("no placeholder",)}, "template"),
    ],
)
def test_bad_hparams_name_the_field(kwargs, word):
    with pytest.raises(HParamsError, match=word):
        ReFACTHParams(**kwargs)


def test_unknown_hparam_is_refused():
    with pytest.raises(HParamsError, match="unknown"):
        ReFACTHParams.from_dict({"layr": 3})


def test_request_cleans_text_and_keeps_non_ascii():
    r = EditRequest(prompt="  Secretary-General of the United Nations ", source="Ban Ki-Moon ",
                    target=" Anto\u0301nio Guterres")
    assert r.prompt == "Secretary-General of the United Nations"
    assert r.target == "António Guterres"  # NFC composed
    assert r.subject_text == r.prompt
    r.validate()


def test_request_round_trip_with_probes():
    r = EditRequest(
        prompt="The Prince of Wales", source="Prince Charles", target="Prince William",
        subject="Prince of Wales", contrastive=("a crown",),
        positives=(Probe("The Prince of Wales eating", "Prince Charles eating", "Prince William eating"),),
        negatives=(Probe("A queen", "A queen", "Prince William"),),
    )
    assert EditRequest.from_dict(r.to_dict()) == r


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"prompt": "", "source": "a", "target": "b"}, "prompt is empty"),
        ({"prompt": "x", "source": "a", "target": " "}, "target is empty"),
        ({"prompt": "a cat", "source": "a", "target": "b", "subject": "dog"}, "does not occur"),
        ({"prompt": "a cat", "source": "a", "target": "b", "subject": ""}, "subject is empty"),
        ({"prompt": "a cat", "source": "same", "target": "same"}, "same"),
    ],
)
def test_bad_requests_have_clear_errors(kwargs, word):
    with pytest.raises(RequestError, match=word):
        EditRequest(**kwargs).validate()
