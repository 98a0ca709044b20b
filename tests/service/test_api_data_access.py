"""A submitted spec may name raw data only under the server's allowed prefixes (MMKD_DATA_ALLOW)."""

from __future__ import annotations

from typing import Any

import pytest
from api_helpers import SPEC, Api

RAW = {**SPEC, "dataset": {"uri": "", "primary": ["a"], "auxiliary": ["b"]}}


def _submit_uri(api: Api, token: str, uri: str) -> Any:
    return api.submit(token, {**RAW, "dataset": {**RAW["dataset"], "uri": uri}})


@pytest.mark.parametrize("uri", ["/etc/shadow", "s3://someone-else/data.npz", "~/x.npz", "relative.npz"])
def test_a_raw_uri_is_refused_without_an_allow_list(api: Api, uri: str) -> None:
    response = _submit_uri(api, api.new_key(), uri)
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["path"] == "dataset.uri" and "MMKD_DATA_ALLOW" in error["message"]
    assert uri not in response.text  # the refusal says nothing about the object


def test_only_uris_under_an_allowed_prefix_are_accepted(api: Api, tmp_path: Any) -> None:
    allowed = ["s3://shared/public", str(tmp_path / "data")]
    api.app.state.settings = api.app.state.settings.model_copy(update={"data_allow": allowed})
    token = api.new_key()
    accepted = ["s3://shared/public/x.npz", str(tmp_path / "data" / "sub" / "y.npz")]
    refused = [
        "s3://shared/publication.npz",  # shares the characters, not the folder
        "s3://shared/x.npz",
        "s3://other/public/x.npz",
        str(tmp_path / "data" / ".." / "secret.npz"),
        str(tmp_path / "data"),
        "file:///etc/passwd",
        "http://example.com/x.npz",
    ]
    assert [_submit_uri(api, token, uri).status_code for uri in accepted] == [201, 201]
    assert [_submit_uri(api, token, uri).status_code for uri in refused] == [422] * len(refused)
