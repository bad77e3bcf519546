"""Local-folder artifact stores, and the roots the operator allows them under.

MLflow serves a ``file:`` store to everyone the gateway lets through, so a store that named the
data dir would hand out its keys and credentials, and ``file:/etc`` the machine's secrets. A store
is allowed only under a configured root, compared after following every symbolic link; no root
may hold the data dir (nor anything in it but ``<data-dir>/artifacts``) or the master key.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mlfleet.protocol.errors import ValidationException
from mlfleet.settings import Settings

# mlfleet extension: a local folder as artifact store. ``file:/srv/art`` is accepted beside
# ``file:///srv/art`` because the AWS CLI reads any argument starting with ``file://`` as a file.
LOCAL_FOLDER = re.compile(r"file:(?://)?(/[^/].*)")


def local_folder(uri: str) -> str | None:
    """The absolute path of a local-folder artifact store URI, else None."""
    match = LOCAL_FOLDER.fullmatch(uri)
    return match.group(1) if match else None


def resolve(path: str | Path) -> Path:
    """`path` absolute with every symbolic link followed, as far down as it exists.

    realpath resolves the deepest existing ancestor and keeps the missing rest as written, which
    is where ``mkdir -p`` would create it.
    """
    return Path(os.path.realpath(Path(path).expanduser()))


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


class ArtifactRoots:
    """The folders ``file:`` stores may live under; an unsafe root is a ValueError."""

    def __init__(self, roots: tuple[Path, ...], data_dir: Path, secrets: tuple[Path, ...]) -> None:
        data = resolve(data_dir)
        shelf = data / "artifacts"
        resolved: list[Path] = []
        for root in roots:
            real = resolve(root)
            shown = str(root) if real == root else f"{root} (which resolves to {real})"
            if _within(data, real):
                raise ValueError(
                    f"artifact root {shown} holds the data dir {data}, its keys, credentials "
                    f"and every server's database: choose a folder outside it, or {shelf}"
                )
            if _within(real, data) and not _within(real, shelf):
                raise ValueError(
                    f"artifact root {shown} is inside the data dir {data}, where only {shelf} "
                    "may hold artifacts"
                )
            for secret in map(resolve, secrets):
                if _within(secret, real):
                    raise ValueError(f"artifact root {shown} holds {secret}, a secret of mlfleet")
            resolved.append(real)
        self.roots = tuple(resolved)

    @classmethod
    def of(cls, settings: Settings) -> ArtifactRoots:
        return cls(settings.allowed_artifact_roots, settings.data_dir, settings.secret_files)

    def outside(self, folder: str) -> bool:
        real = resolve(folder)
        return not any(_within(real, root) for root in self.roots)

    def describe(self) -> str:
        return ", ".join(str(root) for root in self.roots)

    def check(self, uri: str) -> None:
        """Refuse, in AWS's words, a store that is neither S3 nor a folder under a root."""
        if uri.startswith("s3://") and len(uri) > len("s3://"):
            return
        folder = local_folder(uri)
        if folder is None:
            raise ValidationException(
                f"ArtifactStoreUri '{uri}' is not supported: use s3://bucket[/prefix] "
                "(AWS S3 or the S3-compatible endpoint mlfleet is configured with) or, as an "
                "mlfleet extension, file:///absolute/path (file:/absolute/path with the AWS CLI) "
                "for a local folder.",
            )
        if self.outside(folder):
            raise ValidationException(
                f"1 validation error detected: Value '{uri}' at 'artifactStoreUri' failed to "
                "satisfy constraint: Member must be a folder inside one of the artifact roots "
                f"this mlfleet allows ({self.describe()}), symbolic links followed",
            )
