"""`refact bench` on the tiny pipeline: per-row independence, equality with single edits scored
separately, shared baseline/oracle references, exact reruns, one-line errors that store nothing."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner
from worker_helpers import FAST, new_workspace, sample_requests

from refact_tui.cli.main import app

runner = CliRunner()
HP = {"layer": FAST.layer, "lr": FAST.lr, "max_steps": FAST.max_steps, "prob_threshold": FAST.prob_threshold}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory) -> Path:
    reqs = [replace(r, positives=r.positives[:2], negatives=r.negatives[:1]) for r in sample_requests(2)]
    lines = [json.dumps(r.to_dict()) for r in reqs]
    # a row whose prompt is its source: the unedited model must fail its efficacy
    lines.append(json.dumps({"prompt": "Prince Charles", "source": "Prince Charles", "target": "Prince William"}))
    path = tmp_path_factory.mktemp("bench") / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ws(tmp_path_factory, model_dir):
    w = new_workspace(tmp_path_factory.mktemp("bench_ws") / "w", model_dir)
    yield w
    w.close()


def _opts(rows_file, **kw):
    from refact_tui.services.bench_config import BenchOptions

    return BenchOptions(file=str(rows_file), text_only=True, device="cpu", **kw)


def _count(ws, table: str) -> int:
    return ws.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


@pytest.mark.slow
def test_every_row_starts_from_the_base_and_matches_single_edits_scored_separately(ws, rows_file, model_dir):
    from engine.delta import applied
    from engine.evaluation.cross_attn import cross_attn_scores, frozen_kv, request_texts
    from engine.evaluation.text_metrics import FeatureCache, text_scores
    from engine.hashing import module_hash
    from engine.importers import load_requests
    from engine.methods import get_method
    from engine.methods.base import EditContext
    from engine.models import load_model
    from refact_tui.services.bench import run_bench

    fresh = load_model(model_dir, device="cpu")
    base = (module_hash(fresh.text_encoder), module_hash(fresh.pipeline.unet))
    seen = []
    reqs = load_requests(rows_file).edit_requests()
    for method, hp, vectorised in (("refact", HP, False), ("refact", HP, True), ("time", {}, True)):
        report = run_bench(ws, _opts(rows_file, method=method, hparams=hp, vectorised=vectorised),
                           on_row_start=lambda m, i: seen.append((module_hash(m.text_encoder),
                                                                  module_hash(m.pipeline.unet))))
        assert len(report.rows) == 3 and {r.weights_hash for r in report.rows} == {report.rows[0].weights_hash}
        m = get_method(method)
        h = m.hparams_from_dict(hp, fresh)
        text_frozen, kv_frozen = FeatureCache.frozen(fresh, None), frozen_kv(fresh)
        for req, row in zip(reqs, report.rows):
            delta = m.compute(fresh, [req], h, EditContext(n_samples=40)).delta
            text_frozen.get(request_texts(req)), kv_frozen.get(request_texts(req))  # before the edit
            with applied(fresh, delta):
                single = {"text": text_scores(fresh, text_frozen, req), "xattn": cross_attn_scores(fresh, kv_frozen, req)}
            # row 2 (prompt == source) included: engine.methods.refact.loss makes both paths agree there too
            for space, s in single.items():
                for part in ("efficacy", "generality", "specificity"):
                    np.testing.assert_allclose(getattr(row.scores[space], part), getattr(s, part),
                                               atol=1e-5 if vectorised else 0)
    assert len(seen) == 9 and set(seen) == {base}


def test_baseline_fails_efficacy_where_the_prompt_is_the_source_and_references_are_shared(ws, rows_file):
    from refact_tui.services.bench import _reference_key, run_bench
    from store.bench_runs import bench_rows, get_references

    before = _count(ws, "bench_references")
    a = run_bench(ws, _opts(rows_file, method="uce"))
    assert _count(ws, "bench_references") == before  # the first test's runs already stored them
    for space in ("text", "xattn"):
        refs = get_references(ws.db, _reference_key(a.config, space), space, "baseline")
        assert np.asarray(refs[2]["efficacy"])[..., 1].item() < 0.5     # row 3: prompt == source
        assert a.aggregates[space]["baseline"]["efficacy"]["value"] <= 2 / 3
        assert a.aggregates[space]["oracle"]["efficacy"]["value"] == 1.0
    stored = bench_rows(ws.db, a.run_id)
    assert [r.row_index for r in stored] == [0, 1, 2] and set(stored[0].metrics) == {"text", "xattn"}


def test_a_stored_run_reruns_to_identical_text_space_numbers(ws, rows_file):
    from refact_tui.services.bench import rerun_bench, run_bench
    from store.bench_runs import bench_rows, get_bench_run

    first = run_bench(ws, _opts(rows_file, method="refact", hparams=HP))
    assert any(n.startswith("ReFACT v* vectorised over all rows") for n in first.notes)  # the path it used
    single = run_bench(ws, _opts(rows_file, method="refact", hparams=HP, vectorised=False))
    assert any(n.startswith("ReFACT v* computed row by row") for n in single.notes)
    again = rerun_bench(ws, first.run_id)
    assert get_bench_run(ws.db, again.run_id).rerun_of == first.run_id
    a, b = bench_rows(ws.db, first.run_id), bench_rows(ws.db, again.run_id)
    assert [r.scores for r in a] == [r.scores for r in b] and [r.metrics for r in a] == [r.metrics for r in b]
    cfg = get_bench_run(ws.db, first.run_id).config
    assert cfg["hparams"]["layer"] == FAST.layer and cfg["options"]["stats_samples"] == 40
    assert set(cfg["versions"]) >= {"torch", "diffusers", "transformers", "open_clip_torch"}
    assert cfg["model"]["encoder_hash"] and cfg["corpus"]["rows"] == 3


def test_cli_runs_lists_shows_compares_and_writes_csv(ws, rows_file, tmp_path):
    root = ws.root
    r = invoke("-w", root, "bench", rows_file, "--method", "time", "--text-only", "--limit", "2", "--json",
               "--device", "cpu", "--csv", tmp_path / "rows.csv")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["method"] == "time" and out["n_rows"] == 2 and len(out["rows"]) == 2
    assert (tmp_path / "rows.csv").read_text().count("\n") == 3
    r = invoke("-w", root, "bench", "--json", "ls")
    ids = [x["id"] for x in json.loads(invoke("-w", root, "bench", "ls", "--json").stdout)]
    assert out["id"] == ids[0]
    r = invoke("-w", root, "bench", "show", ids[0])
    assert r.exit_code == 0 and "cross-attention proxy" in r.stdout and "baseline" in r.stdout
    r = invoke("-w", root, "bench", "compare", ids[1], ids[0], "--json")
    diffs = {d[0] for d in json.loads(r.stdout)["differences"]}
    assert {"method", "corpus.rows"} <= diffs


@pytest.mark.parametrize("case", ["method", "empty", "too_long"])
def test_bad_input_is_one_line_and_stores_nothing(ws, rows_file, tmp_path, case):
    runs, refs = _count(ws, "bench_runs"), _count(ws, "bench_references")
    args = [rows_file, "--method", "rome"]
    if case == "empty":
        (tmp_path / "e.jsonl").write_text("")
        args = [tmp_path / "e.jsonl"]
    elif case == "too_long":
        long = " ".join(["banana"] * 90)
        (tmp_path / "l.jsonl").write_text(json.dumps({"prompt": long, "source": long, "target": "A pear"}) + "\n")
        args = [tmp_path / "l.jsonl"]
    r = invoke("-w", ws.root, "bench", *args, "--text-only", "--device", "cpu")
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert {"method": "unknown edit method", "empty": "is empty", "too_long": "tokens"}[case] in lines[0]
    assert (_count(ws, "bench_runs"), _count(ws, "bench_references")) == (runs, refs)


@pytest.mark.slow
def test_image_space_with_captions_and_shared_baseline_images(ws, rows_file, tmp_path_factory):
    from engine.evaluation.judge import build_random_judge
    from refact_tui.services.bench import run_bench

    judge = build_random_judge(tmp_path_factory.mktemp("judge"))
    images = []
    opts = replace(_opts(rows_file, method="time", limit=1, seeds=2, steps=2, height=16, width=16, judge=judge,
                         n_captions=2), text_only=False)
    a = run_bench(ws, opts, on_progress=lambda p: images.append(p.done) if p.task == "images" else None)
    n_imgs = 2 * (1 + 2 + 1) * 2 + 2 * (1 + 2) + 2 * 2  # edited + baseline, oracle, captions before/after
    assert images[-1] == n_imgs and images == sorted(images)
    refs = _count(ws, "bench_references")
    b = run_bench(ws, replace(opts, method="uce"))
    assert _count(ws, "bench_references") == refs   # baseline/oracle images generated once
    assert a.aggregates["image"]["baseline"] == b.aggregates["image"]["baseline"]
    assert a.rows[0].scores["image"].efficacy.shape == (2, 1, 2)
    assert a.quality["clip_score_before"] == b.quality["clip_score_before"] and a.quality["n_captions"] == 2
    img = a.config["image"]
    assert img["judge"]["checkpoint_sha256"] and img["scheduler"] and img["size"] == [16, 16] and img["seeds"] == [0, 1]


def test_road_validation_rows_whose_prompt_is_the_source_have_baseline_efficacy_zero(ws):
    """Read in place from ../shared/data (skipped when absent): RoAD Appearance rows have Prompt == Old."""
    from fixtures_models import SHARED_DATA

    from refact_tui.services.bench import _reference_key, run_bench
    from store.bench_runs import get_references

    path = SHARED_DATA / "RoAD_validation.csv"
    if not path.is_file():
        pytest.skip("RoAD_validation.csv not in ../shared/data")
    rep = run_bench(ws, _opts(path, method="uce"))
    same = [r.index for r in rep.rows if r.request.prompt.lower() == r.request.source.lower()]
    assert same, "RoAD validation should have Prompt == Old rows"
    for space in ("text", "xattn"):
        base = get_references(ws.db, _reference_key(rep.config, space), space, "baseline")
        assert [float(np.asarray(base[i]["efficacy"])[0, 0, 1]) < 0.5 for i in same] == [True] * len(same)


def test_limit_tokenises_only_the_rows_that_will_run(tmp_path, model_dir, monkeypatch):
    """Issue 21: a --limit 3 bench checks every row's structure but tokenises only its 3 rows (a
    10,000-row file took 90 s of validation before a 3-row run); a bad row among those 3 is still named."""
    from engine.admission import RequestChecker
    from engine.models import load_tokenizer, token_limit
    from refact_tui.services.bench import BenchError, read_rows

    tok = load_tokenizer(model_dir)
    good = [json.dumps({"prompt": f"The king of land {i}", "source": "a king", "target": "a queen"}) for i in range(40)]
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join(good) + "\n", encoding="utf-8")
    checked: list[str] = []
    original = RequestChecker.problems

    def spy(self, request):
        checked.append(request.prompt)
        return original(self, request)

    monkeypatch.setattr(RequestChecker, "problems", spy)
    assert [r.prompt for r in read_rows(path, tok, token_limit(tok), limit=3)] == [f"The king of land {i}" for i in range(3)]
    assert len(checked) == 3
    long = json.dumps({"prompt": "word " * 200, "source": "a king", "target": "a queen"})
    path.write_text("\n".join([good[0], long, *good[1:]]) + "\n", encoding="utf-8")
    with pytest.raises(BenchError, match="row 2"):
        read_rows(path, tok, token_limit(tok), limit=3)
