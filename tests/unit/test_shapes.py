"""The generated API shape types cover every declared operation and are current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_shapes_are_current() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate_shapes.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def _annotations(typed_dict: type) -> dict[str, str]:
    """Each member's annotation as written (a ForwardRef or a string, by Python version)."""
    return {
        name: getattr(value, "__forward_arg__", value)
        for name, value in typed_dict.__annotations__.items()
    }


def test_every_input_and_output_of_an_operation_has_its_type() -> None:
    from mlfleet.protocol.shapes import sagemaker

    create = _annotations(sagemaker.CreateMlflowTrackingServerRequest)
    assert create["TrackingServerName"] == "Required[str]"
    assert create["Tags"] == "list[Tag]"
    described = _annotations(sagemaker.DescribeMlflowTrackingServerResponse)
    assert described["CreationTime"] == "datetime"
