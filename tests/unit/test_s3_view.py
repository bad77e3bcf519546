"""The ARN caller's S3 view of MLflow's artifact locations, whole and on a stream cut anywhere."""

from __future__ import annotations

import json

from mlfleet.mlflow_api.s3_view import (
    ToS3View,
    bucket_of,
    from_s3_view,
    server_of,
    to_s3_view,
)

ANSWER = json.dumps(
    {
        "run": {"info": {"artifact_uri": "mlflow-artifacts:/1/abc/artifacts"}},
        "tags": [{"key": "note", "value": "not mlflow-artifacts:/ at the start"}],
        "models": ["mlflow-artifacts:/1/models/m-1/artifacts"] * 3,
    }
).encode()


def test_locations_are_shown_as_the_servers_bucket_and_taken_back() -> None:
    shown = json.loads(to_s3_view(ANSWER, "team-a"))
    assert shown["run"]["info"]["artifact_uri"] == "s3://team-a/1/abc/artifacts"
    assert shown["tags"][0]["value"] == "not mlflow-artifacts:/ at the start"
    assert from_s3_view(to_s3_view(ANSWER, "team-a"), "team-a") == ANSWER
    # Another bucket's URI is not this server's: left as sent (the input checks refuse it).
    other = b'{"source": "s3://team-b/1/abc/artifacts"}'
    assert from_s3_view(other, "team-a") == other


def test_a_stream_cut_anywhere_gives_the_same_view() -> None:
    whole = to_s3_view(ANSWER, "team-a")
    for size in (1, 2, 5, 7, 18, 19, 20, 64):
        view = ToS3View("team-a")
        pieces = [ANSWER[i : i + size] for i in range(0, len(ANSWER), size)]
        assert b"".join(view.feed(p) for p in pieces) + view.end() == whole, size


def test_bucket_names() -> None:
    assert bucket_of("team-a") == "team-a"
    for name in ("Team-A", "ab", "x" * 64):
        hashed = bucket_of(name)
        assert hashed.startswith("mlfleet.") and len(hashed) == 24
        assert server_of(hashed, ["other", name]) == name
    assert server_of("team-a", []) == "team-a"
    assert server_of("Not_A_Bucket", []) is None
