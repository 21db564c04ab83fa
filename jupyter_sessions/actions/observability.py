"""Observability actions: logs (kept and followed), usage series, abuse reports, commits and
conversions to images, background tasks.

``ConvertToImageAction.from_json`` checks the image name strictly: it becomes part of a Docker
reference, so only lower-case names and simple tags pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import InvalidRequest
from .base import Action, SessionRefAction

#: A repository name component as Docker accepts it (lower case, separators inside only).
IMAGE_NAME = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
IMAGE_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
MAX_IMAGE_NAME = 64


@dataclass(frozen=True, kw_only=True)
class FollowLogsAction(SessionRefAction):
    """A kernel's output from its last ``tail`` lines, then live until it ends."""

    operation: ClassVar[str] = "follow_container_logs"
    kernel: str = "main1"
    tail: int | None = None


@dataclass(frozen=True, kw_only=True)
class GetAbusingReportAction(SessionRefAction):
    operation: ClassVar[str] = "get_abusing_report"


@dataclass(frozen=True, kw_only=True)
class CommitSessionAction(SessionRefAction):
    operation: ClassVar[str] = "commit_session"


@dataclass(frozen=True, kw_only=True)
class GetCommitStatusAction(SessionRefAction):
    operation: ClassVar[str] = "get_commit_status"


@dataclass(frozen=True, kw_only=True)
class DeleteImageAction(Action):
    """Remove one of the caller's converted images (frees a place under ``max_images``)."""

    operation: ClassVar[str] = "delete_image"
    #: The full reference, as ``GET images`` and the conversion's task result name it.
    name: str

    def target(self) -> str | None:
        return self.name


@dataclass(frozen=True, kw_only=True)
class ConvertToImageAction(SessionRefAction):
    operation: ClassVar[str] = "convert_session_to_image"
    image_name: str
    tag: str = "latest"
    #: Push to the configured registry (None: push when one is configured).
    push: bool | None = None

    @staticmethod
    def parse_body(body: Any) -> tuple[str, str, bool | None]:
        """``{image_name: "name" or "name:tag", push?}`` → (name, tag, push)."""
        if not isinstance(body, dict):
            raise InvalidRequest("the body must be a JSON object")
        unknown = set(body) - {"image_name", "push"}
        if unknown:
            field = sorted(unknown)[0]
            raise InvalidRequest(f"unknown field {field}", field=field)
        raw = body.get("image_name")
        if not isinstance(raw, str) or not raw:
            raise InvalidRequest("image_name is required (a string)", field="image_name")
        name, _, tag = raw.partition(":")
        tag = tag or "latest"
        if len(name) > MAX_IMAGE_NAME or not IMAGE_NAME.match(name):
            raise InvalidRequest(
                "image_name must be lower-case letters and digits with single . _ or - between "
                f"them (at most {MAX_IMAGE_NAME} characters), optionally :tag",
                field="image_name",
            )
        if not IMAGE_TAG.match(tag):
            raise InvalidRequest(
                "the tag must be letters, digits, _ . or - (at most 128, not starting with . or -)",
                field="image_name",
            )
        push = body.get("push")
        if push is not None and not isinstance(push, bool):
            raise InvalidRequest("push must be true or false", field="push")
        return name, tag, push


@dataclass(frozen=True, kw_only=True)
class GetTaskAction(Action):
    operation: ClassVar[str] = "get_task"
    task_id: str

    def target(self) -> str | None:
        return self.task_id


@dataclass(frozen=True, kw_only=True)
class CancelTaskAction(Action):
    operation: ClassVar[str] = "cancel_task"
    task_id: str

    def target(self) -> str | None:
        return self.task_id
