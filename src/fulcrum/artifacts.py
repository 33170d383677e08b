"""Trial files in an artifact store that every machine of a study reaches (Optuna's artifact API).

``fulcrum search --artifacts LOCATION`` uploads each trial's files, once saved in its run folder,
as Optuna artifacts of that trial (``optuna.artifacts``): a folder every machine mounts
(``FileSystemArtifactStore``) or ``s3://bucket/prefix`` on S3-compatible storage
(``Boto3ArtifactStore``, boto3 installed by the user). The trial's user attribute ``artifacts``
maps each file name to its artifact id; it reaches ``results.json`` with the other attributes,
so that a machine that did not run a trial fetches its files into ``trials/N`` when it needs
them: to re-measure and pick it, or to export it.
"""

from __future__ import annotations

import io
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from fulcrum.errors import ConfigError, MissingDependencyError, first_line

ATTR = "artifacts"  # the trial user attribute: {file name: artifact id}


def kind(location: str | None) -> str | None:
    """What kind of store ``location`` names: "s3", "folder", or None (none: the run folder).
    Machines of one study may mount a folder at different paths, so kinds are compared, not
    locations."""
    if location is None:
        return None
    return "s3" if location.startswith("s3://") else "folder"


def open_store(location: str, *, write: bool = True) -> Any:
    """The artifact store at ``location``; to ``write``, created and checked writable (a probe
    written and removed), so that a search stops before its first trial."""
    if kind(location) == "s3":
        store = _s3(location)
    else:
        from optuna.artifacts import FileSystemArtifactStore

        if write:
            try:
                Path(location).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _unwritable(location, exc.strerror or first_line(exc)) from None
        store = FileSystemArtifactStore(location)
    if not write:
        return store
    probe = f".write-test-{uuid.uuid4().hex}"
    try:
        store.write(probe, io.BytesIO(b""))
        store.remove(probe)
    except Exception as exc:
        raise _unwritable(
            location, getattr(exc, "strerror", None) or first_line(exc, 160)
        ) from None
    return store


def _unwritable(location: str, why: str) -> ConfigError:
    fix = (
        "check the bucket name and the credentials boto3 finds (AWS_ACCESS_KEY_ID, "
        "AWS_ENDPOINT_URL for S3-compatible storage)"
        if kind(location) == "s3"
        else "give a folder that every machine of the study can write"
    )
    return ConfigError(f"--artifacts {location!r} is not writable ({why}); {fix}.")


def _s3(location: str) -> Any:
    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    if not bucket:
        raise ConfigError(f"--artifacts {location!r} names no bucket; use s3://bucket/prefix.")
    try:
        import boto3  # noqa: F401  (Optuna's store needs it; say so before Optuna does)
    except ImportError:
        raise MissingDependencyError(
            f"--artifacts {location!r} needs boto3, which is not installed: pip install boto3."
        ) from None
    from optuna.artifacts import Boto3ArtifactStore

    store = Boto3ArtifactStore(bucket)
    return Prefixed(store, prefix.strip("/") + "/") if prefix.strip("/") else store


class Prefixed:
    """A store whose artifacts are kept under ``prefix`` (a folder of a bucket)."""

    def __init__(self, store: Any, prefix: str) -> None:
        self.store, self.prefix = store, prefix

    def open_reader(self, artifact_id: str) -> Any:
        return self.store.open_reader(self.prefix + artifact_id)

    def write(self, artifact_id: str, content_body: Any) -> None:
        self.store.write(self.prefix + artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self.store.remove(self.prefix + artifact_id)


def upload(store: Any, owner: Any, folder: Path, what: str | None = None) -> dict[str, str]:
    """Upload each file of ``folder`` as an artifact of ``owner`` (a trial, or the study for
    files that belong to no trial, named ``what``); a trial records the ids it was given."""
    from optuna.artifacts import upload_artifact

    ids = {}
    try:
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            ids[path.name] = upload_artifact(
                artifact_store=store, file_path=str(path), study_or_trial=owner
            )
    except Exception as exc:
        raise ConfigError(
            f"{what or f'trial {owner.number}'}'s files could not be uploaded to the artifact "
            f"store ({first_line(exc, 160)}); check that --artifacts is still writable."
        ) from None
    if what is None:
        owner.set_user_attr(ATTR, ids)
    return ids


def fetch(store: Any, ids: dict[str, str], folder: Path) -> Path:
    """``folder`` holding the files ``ids`` names, downloaded from ``store`` unless already
    there. Downloaded beside it and renamed, so that no reader sees half a trial."""
    from optuna.artifacts import download_artifact

    if folder.is_dir():
        return folder
    partial = folder.with_name(f".{folder.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        for filename, artifact_id in ids.items():
            if Path(filename).name != filename:
                raise ValueError(f"file name {filename!r} is not a plain name")
            download_artifact(
                artifact_store=store, file_path=str(partial / filename), artifact_id=artifact_id
            )
    except Exception as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise ConfigError(
            f"the files of trial {folder.name} could not be fetched from the artifact store "
            f"({first_line(exc, 160)}); check that --artifacts names the study's store."
        ) from None
    try:
        partial.rename(folder)
    except OSError:  # another process fetched it meanwhile
        shutil.rmtree(partial, ignore_errors=True)
        if not folder.is_dir():
            raise
    return folder
