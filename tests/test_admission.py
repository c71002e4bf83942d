"""Requests that cannot run are refused when queued: templates counted, default subject on whole
tokens, invisible-only fields empty, duplicates on add, and the importers' file-level checks."""

from __future__ import annotations

import json

import pytest
from fixtures_models import built_clip_tokenizer

from engine.admission import RequestChecker, TokenLimit
from engine.importers import ImportFileError, load_requests
from engine.methods.refact.hparams import DEFAULT_TEMPLATES, ReFACTHParams
from engine.request import EditRequest, RequestError, clean_text
from engine.tokens import default_subject, locate_subject
from refact_tui.services import queue
from refact_tui.services.workspace import BaseModelInfo, create_workspace

HP = ReFACTHParams(layer=1, max_steps=5)
# 75 one-token words + BOS + EOS = 77 tokens bare; "{} in a realistic style portrait image" adds 6
PROMPT_77 = " ".join(["cat"] * 75)


@pytest.fixture(scope="module")
def tok():
    return built_clip_tokenizer()


@pytest.fixture
def ws(tmp_path, tok, monkeypatch):
    info = BaseModelInfo("tiny", "/models/tiny", "sd-pipeline", "clip", "e" * 64, {"num_layers": 4})
    # the base folder is not real: the slot's tokenizer and its 77-token limit stand in for it
    monkeypatch.setattr(queue, "_slot_tokenizer", lambda ws, slot="text_encoder": (tok, 77))
    w = create_workspace(tmp_path / "ws", info)
    yield w
    w.close()


def test_a_77_token_prompt_pushed_to_83_by_a_template_is_refused_on_add_and_import(ws, tok, tmp_path):
    assert len(tok(PROMPT_77)["input_ids"]) == 77
    req = EditRequest(prompt=PROMPT_77, source="a dog", target="a fox")
    with pytest.raises(RequestError, match=r"prompt is 83 tokens long inside the template "
                                           r"'\{\} in a realistic style portrait image' \(bare: 77\)"):
        queue.add_edit(ws, req, HP)
    f = tmp_path / "long.jsonl"
    f.write_text(json.dumps({"prompt": PROMPT_77, "source": "a dog", "target": "a fox"}) + "\n")
    report = queue.import_requests(ws, f, hparams=HP)
    assert not report.added and [(e.row, e.column) for e in report.errors] == [(1, "prompt")]
    assert "83 tokens" in report.errors[0].message
    # the same prompt fits with templates that add nothing
    ok = queue.add_edit(ws, req, HP.with_overrides(templates=("{}",)))
    assert ok.state == "queued"


def test_every_limit_is_checked_and_named():
    tok = built_clip_tokenizer()
    checker = RequestChecker((TokenLimit(tok, 77, "text_encoder"), TokenLimit(tok, 20, "text_encoder_2")))
    prompt = " ".join(["cat"] * 15)  # 17 tokens bare, 23 inside the longest template
    problems = checker.problems(EditRequest(prompt=prompt, source="a cat", target=" ".join(["dog"] * 30)))
    assert [(p.field, "(text_encoder_2)" in p.message) for p in problems] == [("prompt", True), ("target", True)]
    assert "is 32 tokens long (text_encoder_2), over the limit of 20" in problems[1].message


def test_sixty_emoji_are_counted_as_the_encoder_sees_them(ws, tok):
    emoji = "🦩" * 60
    n = len(tok(emoji)["input_ids"])
    assert n > 77  # each emoji is several byte-level tokens
    with pytest.raises(RequestError, match=r"prompt is \d+ tokens long"):
        queue.add_edit(ws, EditRequest(prompt=emoji, source="a", target="b"), HP)


@pytest.mark.parametrize("prompt, key", [
    ("The Dalai Lama.", "lama"), ("Hello there !", "there"), ("(Tibet)", "tibet"), ("The Pope...", "pope"),
])
def test_default_subject_strips_trailing_punctuation_and_maps_to_whole_tokens(ws, tok, prompt, key):
    req = EditRequest(prompt=prompt, source="a man", target="a woman")
    assert req.subject_text == default_subject(prompt) and req.subject_text[-1] not in ".!)"
    assert RequestChecker.single(tok, 77).problems(req) == []
    for template in ("{}", *DEFAULT_TEMPLATES):
        located = locate_subject(tok, template, prompt, None, 77)
        ids = tok(located.text)["input_ids"]
        assert tok.decode([ids[located.index]]).strip() == key
    assert queue.add_edit(ws, req, HP).state == "queued"


def test_a_default_subject_that_cannot_map_is_refused_suggesting_subject(ws):
    with pytest.raises(RequestError, match="does not map to whole tokens.*pass --subject"):
        queue.add_edit(ws, EditRequest(prompt="!!!", source="a man", target="a woman"), HP)


@pytest.mark.parametrize("text", ["\u200b\u200b", "\x01\x02\x7f", " \u200d\ufeff\t", "\u2028\u2060"])
def test_invisible_only_fields_are_empty(ws, text, tmp_path):
    assert clean_text(text) == ""
    with pytest.raises(RequestError, match="source is empty"):
        queue.add_edit(ws, EditRequest(prompt="A cat", source=text, target="a dog"), HP)
    f = tmp_path / "e.jsonl"
    f.write_text(json.dumps({"prompt": "A cat", "source": text, "target": "a dog"}) + "\n")
    report = queue.import_requests(ws, f, hparams=HP)
    assert not report.added and [e.column for e in report.errors] == ["source"]
    assert clean_text("\u200bA\u200bcat\x01") == "A\u200bcat"  # inner text is kept


def test_queue_add_refuses_duplicates_unless_allowed(ws):
    first = queue.add_edit(ws, EditRequest(prompt="A cat", source="a cat", target="a dog"), HP)
    with pytest.raises(RequestError, match=f"already queued as job {first.id}.*--allow-duplicate"):
        queue.add_edit(ws, EditRequest(prompt=" a CAT", source="A cat", target="a dog "), HP)
    again = queue.add_edit(ws, EditRequest(prompt="A cat", source="a cat", target="a dog"), HP, allow_duplicate=True)
    assert again.id != first.id and len(queue.list_queue(ws)) == 2


def test_tui_form_gets_the_same_checks(ws):
    from refact_tui.tui.screens.add_edit import parse_form

    new = parse_form({"prompt": PROMPT_77, "source": "a dog", "target": "a fox", "layer": "1"})
    with pytest.raises(RequestError, match="83 tokens"):
        queue.add_edit(ws, new.request, new.hparams)  # what the Queue screen runs with the form's result


# ---- importers: line splitting, truncated CSV, encodings ----------------------------------------


def test_jsonl_splits_on_newline_only(tmp_path):
    f = tmp_path / "sep.jsonl"
    f.write_text(json.dumps({"prompt": "A cat\u2028here\x85", "source": "a cat", "target": "a dog"},
                            ensure_ascii=False) + "\n", encoding="utf-8")
    result = load_requests(f)
    assert result.ok and result.total_rows == 1
    assert result.requests[0].request.prompt == "A cat\u2028here"  # the trailing NEL is outer whitespace


def _timed_header() -> list[str]:
    from engine.importers.timed import REQUIRED

    return list(REQUIRED)


def test_truncated_csv_names_the_row_and_the_missing_columns(tmp_path):
    header = _timed_header()
    row = ["a cat"] + ["x"] * (len(header) - 1)
    text = ",".join(header) + "\n" + ",".join(row) + "\n" + ",".join(row[:-3]) + "\n"
    f = tmp_path / "cut.csv"
    f.write_text(text)
    errors = load_requests(f).errors
    assert [(e.row, e.column) for e in errors if e.column is None] == [(2, None)]
    msg = next(e.message for e in errors if e.column is None)
    assert header[-3:] == ["gn4", "negative5", "gn5"]
    assert "is short of 3 column(s) (the file looks cut off): missing gn4, negative5, gn5" in msg
    # cut inside a quoted field: the rest of the file is one cell, so the row is short too
    f.write_text(",".join(header) + "\n" + ",".join(row[:5]) + ',"unterminated\n')
    assert any(e.row == 1 and "missing" in e.message for e in load_requests(f).errors)


def test_invalid_utf8_names_the_offset_unless_replacement_is_asked(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_bytes(b'\xef\xbb\xbf{"prompt": "A \xff cat", "source": "a", "target": "b"}\n')
    with pytest.raises(ImportFileError, match=r"byte 0xff at offset 17.*--encoding-errors replace"):
        load_requests(f)
    result = load_requests(f, encoding_errors="replace")
    assert result.ok and result.requests[0].request.prompt == "A \ufffd cat"
    with pytest.raises(ImportFileError, match="unknown --encoding-errors"):
        load_requests(f, encoding_errors="ignore")


def test_hparams_are_checked_for_every_field_in_one_place():
    from engine.methods.refact.hparams import HPARAM_RANGES, HParamsError

    for spec in HPARAM_RANGES:
        for bad in (float("nan"), float("inf"), -float("inf"), True, "1", None, spec.high * 10 + 1):
            with pytest.raises(HParamsError, match=rf"^{spec.option} \({spec.name}\) must be"):
                ReFACTHParams(**{spec.name: bad})
    with pytest.raises(HParamsError, match="must be an object"):
        ReFACTHParams.from_dict(["lr", 1])
    with pytest.raises(HParamsError, match="templates must be a list"):
        ReFACTHParams(templates="{}")


def test_json_rows_carry_their_own_hparams_checked_like_the_cli(ws, tmp_path):
    f = tmp_path / "hp.jsonl"
    rows = [{"prompt": "A cat", "source": "a cat", "target": "a dog", "hparams": {"layer": 3, "lr": 0.2}},
            {"prompt": "A cow", "source": "a cow", "target": "a pig", "hparams": {"lr": 1e999}},
            {"prompt": "A owl", "source": "a owl", "target": "a bat", "hparams": {"layer": 9}},
            {"prompt": "A elk", "source": "a elk", "target": "a yak", "hparams": {"speed": 3}}]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = queue.import_requests(ws, f, hparams=HP)
    assert not report.added
    problems = {e.row: str(e) for e in report.errors}
    assert sorted(problems) == [2, 4] and "--lr (lr) must be a finite number in (0, 10], got inf" in problems[2]
    assert "unknown names ['speed']" in problems[4]
    f.write_text("\n".join(json.dumps(r) for r in rows[:1] + rows[2:3]) + "\n")
    report = queue.import_requests(ws, f, hparams=HP)  # the layer is checked against the 4-layer model
    assert not report.added and "layer 9 is out of range" in str(report.errors[0])
    report = queue.import_requests(ws, f, hparams=HP, skip_invalid=True)
    assert [(j.hparams.layer, j.hparams.lr, j.hparams.max_steps) for j in report.added] == [(3, 0.2, 5)]
    assert report.skipped_invalid == 1
