"""apply-deltas manifests: schema errors name the field, paths stay inside the folder, and the weights
after every delta must be the recorded ones (a re-hashed foreign delta is refused)."""

from __future__ import annotations

import copy
import json
import re

import pytest
from typer.testing import CliRunner
from worker_helpers import workspace_with_edits

from refact_tui.services.manifest import ManifestError, load_manifest, parse_manifest


@pytest.fixture(scope="module")
def exported(tmp_path_factory, model_dir):
    from refact_tui.services.export import export_pipeline

    base = tmp_path_factory.mktemp("manifest")
    ws, _, _ = workspace_with_edits(base / "w", model_dir, 2)
    try:
        res = export_pipeline(ws, base / "d", deltas_only=True)
    finally:
        ws.close()
    return res.manifest


@pytest.fixture
def folder(exported, tmp_path):
    """A private copy of the exported folder: (manifest path, its JSON)."""
    import shutil

    out = tmp_path / "d"
    shutil.copytree(exported.parent, out)
    path = out / "manifest.json"
    return path, json.loads(path.read_text())


def write(path, data) -> None:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)


def test_export_records_the_hash_before_and_after_every_delta(exported):
    m = load_manifest(exported)
    assert m.format == "refact-deltas/2" and len(m.entries) == 2
    assert m.entries[0].before_hash == m.base_hash
    assert m.entries[1].before_hash == m.entries[0].weights_hash
    assert m.final_hash == m.entries[1].weights_hash


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d["edits"][0].__setitem__("file", 7), "edits[0].file must be a relative file path, got the number 7"),
    (lambda d: d["edits"].__setitem__(1, "deltas/0002.safetensors"), "edits[1] must be an object"),
    (lambda d: d["edits"][0].__setitem__("layer", "7"), "edits[0].layer must be an integer >= 0 or null"),
    (lambda d: d["edits"][0].__setitem__("layer", 1.5), "edits[0].layer must be an integer"),
    (lambda d: d["base"].__setitem__("encoder_hash", 12345), "base.encoder_hash must be a hex hash, got the number"),
    (lambda d: d["edits"][0].__setitem__("sha256", None), "edits[0].sha256 must be a sha256 hex digest"),
    (lambda d: d.__setitem__("edits", {"a": 1}), "edits must be a list"),
    (lambda d: d.__setitem__("base", []), "base must be an object"),
    (lambda d: d["edits"][1].__setitem__("before_hash", "ab" * 32), "edits[1].before_hash does not match"),
])
def test_malformed_manifests_name_the_bad_field(folder, tmp_path, model_dir, mutate, field):
    from refact_tui.cli.main import app

    path, data = folder
    mutate(data)
    write(path, data)
    with pytest.raises(ManifestError, match="re-export it|altered") as info:
        load_manifest(path)
    assert field in str(info.value) and "\n" not in str(info.value)
    r = CliRunner().invoke(app, ["apply-deltas", str(path), "--model", str(model_dir), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and field in r.stderr and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()


def test_deeply_nested_json_is_one_line(tmp_path):
    path = tmp_path / "manifest.json"
    write(path, '{"format": "refact-deltas/2", "base": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ManifestError, match="nested too deeply"):
        load_manifest(path)
    write(path, '{"format": "refact-deltas/2", "x": ' + "[" * 40 + "]" * 40 + "}")
    with pytest.raises(ManifestError, match="nested more than 16 levels"):
        load_manifest(path)


@pytest.mark.parametrize("bad", ["/etc/passwd", "../outside.safetensors", "deltas/../../x", "C:\\x\\y", "..\\x"])
def test_paths_leaving_the_manifest_folder_are_refused(folder, bad):
    path, data = folder
    data["edits"][0]["file"] = bad
    write(path, data)
    with pytest.raises(ManifestError, match="leaves the manifest's folder"):
        load_manifest(path)


def test_a_link_out_of_the_folder_is_refused(folder, tmp_path):
    path, data = folder
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes((path.parent / data["edits"][0]["file"]).read_bytes())
    (path.parent / "deltas" / "link.safetensors").symlink_to(outside)
    data["edits"][0]["file"] = "deltas/link.safetensors"
    write(path, data)
    with pytest.raises(ManifestError, match="resolves outside"):
        load_manifest(path)


def test_a_rehashed_foreign_delta_is_refused_at_its_step(folder, tmp_path, model_dir):
    from engine.delta import EditDelta
    from refact_tui.services.export import apply_deltas_manifest

    path, data = folder
    f = path.parent / data["edits"][0]["file"]
    delta = EditDelta.load(f)
    delta.updates[0].left.mul_(1.001)  # a plausible, finite, but foreign edit
    data["edits"][0]["sha256"] = delta.save(f)  # sha256 updated to match
    final, data["final_weights_hash"] = data["final_weights_hash"], None  # and the final check removed
    write(path, data)
    with pytest.raises(ManifestError, match=r"final_weights_hash must be a hex hash, got null"):
        apply_deltas_manifest(path, model_dir, tmp_path / "out")  # refact-deltas/2 requires it (issue 21)
    data["final_weights_hash"] = final
    write(path, data)
    with pytest.raises(ManifestError, match=r"applying deltas/0001.safetensors \(edits\[0\]\) gave weights"):
        apply_deltas_manifest(path, model_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refact_deltas_1_manifests_still_apply(folder, tmp_path, model_dir):
    from refact_tui.services.export import apply_deltas_manifest

    path, data = folder
    old = copy.deepcopy(data)
    old["format"] = "refact-deltas/1"
    for e in old["edits"]:
        e.pop("before_hash")
    write(path, old)
    with pytest.raises(ManifestError, match="refact-deltas/1 manifest: it records no weights hash before each "
                                            "delta.*pass --legacy-manifest"):
        apply_deltas_manifest(path, model_dir, tmp_path / "out")  # only with the explicit flag (issue 21)
    res = apply_deltas_manifest(path, model_dir, tmp_path / "out", legacy=True)
    assert res.weights_hash == data["final_weights_hash"]
    assert parse_manifest(json.dumps(old), path, legacy=True).entries[0].before_hash is None


@pytest.mark.parametrize("field", ["before_hash", "weights_hash", "final_weights_hash"])
def test_refact_deltas_2_manifests_must_carry_their_hashes(folder, field):
    """Issue 21 item 16: nulled hashes let a delta altered along with its sha256 through."""
    path, data = folder
    data = copy.deepcopy(data)
    if field == "final_weights_hash":
        data[field] = None
    else:
        data["edits"][0][field] = None
    where = field if field == "final_weights_hash" else f"edits[0].{field}"
    with pytest.raises(ManifestError, match=rf"{re.escape(where)} must be a hex hash, got null"):
        parse_manifest(json.dumps(data), path)
