"""`refact queue import FILE --method time|uce`: rows queued as TIME / UCE jobs with `queue add`'s
checks (unknown method, bad --hp, a model without a UNet), one-line errors and nothing stored."""

from __future__ import annotations

import json

from typer.testing import CliRunner
from worker_helpers import new_workspace

from refact_tui.cli.main import app

runner = CliRunner()
ROWS = [{"prompt": "A banana", "source": "A banana", "target": "A blue banana"},
        {"prompt": "A pear", "source": "A pear", "target": "A red pear"}]


def _file(tmp_path, rows, name="rows.jsonl"):
    f = tmp_path / name
    f.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return f


def _jobs(root):
    r = runner.invoke(app, ["-w", str(root), "queue", "ls", "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _one_line_error(r, *needles):
    assert r.exit_code != 0, r.output
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in " ".join(r.stderr.split()), r.stderr


def test_import_with_method_queues_the_same_jobs_as_queue_add(tmp_path, model_dir):
    root = tmp_path / "w"
    new_workspace(root, model_dir).close()
    f = _file(tmp_path, ROWS)
    r = runner.invoke(app, ["-w", str(root), "queue", "import", str(f), "--method", "uce", "--hp", "lam=0.25",
                            "--hp", 'preserve=["A duke"]', "--json"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["added"]) == 2
    r = runner.invoke(app, ["-w", str(root), "queue", "add", "-p", "A plum", "-s", "A plum", "-t", "A gold plum",
                            "--method", "uce", "--hp", "lam=0.25", "--hp", 'preserve=["A duke"]'])
    assert r.exit_code == 0, r.output
    jobs = _jobs(root)
    extras = [j["request"]["extra"] for j in jobs]
    assert [e["method"] for e in extras] == ["uce"] * 3
    assert extras[0]["method_hparams"] == extras[2]["method_hparams"]  # import == queue add, byte for byte
    hp = json.loads(extras[0]["method_hparams"])
    assert hp["lam"] == 0.25 and hp["preserve"] == ["A duke"]
    # TIME with its defaults; a second import of the same rows is reported as duplicates
    r = runner.invoke(app, ["-w", str(root), "queue", "import", str(f), "--method", "time", "--allow-duplicate"])
    assert r.exit_code == 0, r.output
    assert json.loads(_jobs(root)[-1]["request"]["extra"]["method_hparams"])["lam"] == 0.1


def test_bad_method_import_gives_one_line_and_stores_nothing(tmp_path, model_dir):
    root = tmp_path / "w"
    new_workspace(root, model_dir).close()
    f = _file(tmp_path, ROWS)
    base = ["-w", str(root), "queue", "import", str(f)]
    _one_line_error(runner.invoke(app, [*base, "--method", "rome"]), "unknown edit method 'rome'", "time, uce")
    _one_line_error(runner.invoke(app, [*base, "--method", "time", "--hp", "lamda=1"]),
                    "unknown TIME hyperparameter(s): lamda")
    _one_line_error(runner.invoke(app, [*base, "--method", "time", "--hp", "lam=0"]), "TIME lam must be > 0")
    _one_line_error(runner.invoke(app, [*base, "--hp", "lam=0.1"]), "need --method time")
    _one_line_error(runner.invoke(app, [*base, "--method", "refact", "--hp", "lam=0.1"]), "not --hp")
    # a row naming another method than the import's, and a row naming an unknown method
    own = _file(tmp_path, [ROWS[0], {**ROWS[1], "extra": {"method": "uce"}}], "own.jsonl")
    r = runner.invoke(app, ["-w", str(root), "queue", "import", str(own), "--method", "time"])
    err = " ".join(r.stderr.split())
    assert r.exit_code == 1 and "row 2, column 'extra.method'" in err
    assert "names edit method 'uce' but the import asks for time" in err
    bad = _file(tmp_path, [ROWS[0], {**ROWS[1], "extra": {"method": "rome"}}], "bad.jsonl")
    r = runner.invoke(app, ["-w", str(root), "queue", "import", str(bad)])
    err = " ".join(r.stderr.split())
    assert r.exit_code == 1 and "row 2" in err and "unknown edit method 'rome'" in err
    assert _jobs(root) == []
    # --skip-invalid queues the good row; the row's own valid tag is kept and checked
    r = runner.invoke(app, ["-w", str(root), "queue", "import", str(bad), "--skip-invalid", "--json"])
    assert r.exit_code == 0 and len(json.loads(r.stdout)["added"]) == 1
    own_ok = _file(tmp_path, [{**ROWS[1], "extra": {"method": "time"}}], "own_ok.jsonl")
    r = runner.invoke(app, ["-w", str(root), "queue", "import", str(own_ok)])
    assert r.exit_code == 0, r.output
    assert [j["request"]["extra"].get("method", "refact") for j in _jobs(root)] == ["refact", "time"]


def test_unet_methods_are_refused_on_a_model_without_a_unet(tmp_path, tmp_path_factory):
    from fixtures_models import tiny_text_encoder_dir

    from engine.methods import MethodRefusedError
    from refact_tui.services.methods import check_method_for_base

    root = tmp_path / "w"
    new_workspace(root, tiny_text_encoder_dir(tmp_path_factory, family="clip")).close()
    f = _file(tmp_path, ROWS)
    for method in ("time", "uce"):
        _one_line_error(runner.invoke(app, ["-w", str(root), "queue", "import", str(f), "--method", method]),
                        "text encoder only", "--method refact")
        _one_line_error(runner.invoke(app, ["-w", str(root), "queue", "add", "-p", "A cat", "-s", "A cat",
                                            "-t", "A dog", "--method", method]), "text encoder only")
    assert _jobs(root) == []
    # a pipeline folder whose model_index.json has a transformer instead of a UNet (FLUX)
    flux = tmp_path / "flux"
    flux.mkdir()
    (flux / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline",
                                                       "transformer": ["diffusers", "FluxTransformer2DModel"]}))
    try:
        check_method_for_base("time", "sd-pipeline", str(flux))
        raise AssertionError("refusal expected")
    except MethodRefusedError as exc:
        assert str(exc) == ("TIME edits a unet's cross-attention and cannot edit FluxPipeline: it has a "
                            "transformer, not a unet; use --method refact")
    check_method_for_base("refact", "sd-pipeline", str(flux))  # ReFACT edits every family
