"""Bounded fuzzing (a few seconds): CLI hyperparameter values, request files through the import
service, and apply-deltas manifests never give a traceback and never leave anything half-written.
`benchmarks/fuzz_campaign.py` runs the same targets for 1,000 cases and prints the counts."""

from __future__ import annotations

import fuzz_targets as ft
import pytest
from fixtures_models import built_clip_tokenizer
from hypothesis import HealthCheck, given, settings

FAST = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def fake_ws(tmp_path_factory):
    """A workspace on a base model folder that is not there (no tokenizer: the queue checks only
    what needs no model), enough for the queue commands."""
    from refact_tui.services.workspace import BaseModelInfo, create_workspace

    root = tmp_path_factory.mktemp("fuzz") / "w"
    info = BaseModelInfo("tiny", "/models/none", "sd-pipeline", "clip", "e" * 64, {"num_layers": 4})
    ws = create_workspace(root, info)
    yield ws
    ws.close()


@settings(FAST, max_examples=30)
@given(case=ft.hparam_cases())
def test_cli_hparam_values_never_traceback(fake_ws, case):
    option, value = case
    outcome = ft.run_hparam_case(fake_ws.root, option, value)
    if value in ("inf", "nan", "1e400", "99999999999999999999999") and option != "--similarity":
        assert outcome == "refused"


@FAST
@given(case=ft.request_file_cases())
def test_request_files_never_traceback_or_half_import(fake_ws, tmp_path_factory, case):
    content, suffix, skip_invalid = case
    folder = tmp_path_factory.mktemp("files", numbered=True)
    ft.run_request_file_case(fake_ws, folder, built_clip_tokenizer(), content, suffix, skip_invalid)


@settings(max_examples=80, deadline=None, derandomize=True, database=None)
@given(text=ft.manifest_cases())
def test_manifests_are_valid_or_one_line_errors(tmp_path_factory, text):
    ft.run_manifest_case(tmp_path_factory.getbasetemp(), text)


def test_the_unmutated_fuzz_manifest_is_valid(tmp_path):
    import json

    assert ft.run_manifest_case(tmp_path, json.dumps(ft.valid_manifest())) == "accepted"
