"""Commits and conversions: a running session's container as an image, in background tasks.

- ``commit_session`` makes an image of the main container with the work volume's content and
  without the session's ``environ`` (agents/docker_commit.py says how), exports it to
  ``<commit_dir>/<session id>/<time>.tar.gz`` and removes the image from the engine: the archive
  is the product. ``get_commit_status`` says whether one is ongoing and what the last one gave.
- ``convert_session_to_image`` commits the same way and tags ``[<registry>/]<prefix>/<owner>/
  <name>:<tag>``, the owner being the lower-cased access key (unique, so two owners never share a
  name). The name is claimed in ``user_images`` before any work: another owner's name is a 409,
  and the policy's ``max_images`` is checked in that same transaction (429). The image is then
  allowed to its owner alone and listed to them by ``GET images``. With a registry configured it
  is pushed there; a failed push fails the task with the engine's error (the local image stays).

Only Docker agents commit: the local agent answers 400.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .actions.info import ImageEntry
from .actions.observability import (
    CommitSessionAction,
    ConvertToImageAction,
    DeleteImageAction,
    GetCommitStatusAction,
)
from .agents import docker_commit
from .agents.docker import DockerAgent
from .bgtasks import FINAL_TASK_STATUSES, Progress, TaskData, TaskService
from .errors import (
    AgentError,
    Conflict,
    InvalidRequest,
    NotFound,
    QuotaExceeded,
)
from .identity import Caller
from .repository.orm import SessionRow, UserImageRow, utcnow
from .repository.repository import SessionData
from .types import TERMINAL_STATUSES

if TYPE_CHECKING:
    from .service import SessionService

COMMIT, CONVERT = "commit", "convert"
#: Longest full image reference stored (``user_images.name``).
MAX_IMAGE_REFERENCE = 255


@dataclass(frozen=True)
class CommitConfig:
    #: Where commit archives go (``<dir>/<session id>/<time>.tar.gz``).
    commit_dir: Path
    #: First part of converted images' names.
    image_prefix: str = "jupyter-sessions"
    #: ``host:port`` of the registry converted images are pushed to ("" for none).
    registry: str = ""
    #: Archives kept per session: older ones are removed after each commit (0 keeps all).
    keep: int = 5


class CommitService:
    """Commit, commit status and convert-to-image; the owners' converted images."""

    def __init__(self, service: SessionService, tasks: TaskService, config: CommitConfig) -> None:
        self.service = service
        self.tasks = tasks
        self.config = config

    # --- helpers -------------------------------------------------------------------------

    async def _running_docker(self, session: SessionData, verb: str) -> tuple[DockerAgent, str]:
        agent, container = self.service.main_container(session, f"it can be {verb}")
        if not isinstance(agent, DockerAgent):
            raise InvalidRequest(
                f"sessions on a {agent.kind} agent can't be {verb}: that needs a Docker agent "
                "(the local agent runs kernels as processes, without images)"
            )
        return agent, container

    async def _ongoing(self, session_id: str) -> TaskData | None:
        task = await self.tasks.latest(session_id, (COMMIT, CONVERT))
        return task if task is not None and task.status not in FINAL_TASK_STATUSES else None

    async def _build(
        self,
        progress: Progress,
        agent: DockerAgent,
        session: SessionData,
        container: str,
        repository: str,
        tag: str,
    ) -> str:
        """Steps 1 to 3 of both tasks: changes, work volume, commit; answers the image id."""
        client = agent.client()
        # Unique per task: two requests racing past the "ongoing" check never share it.
        scratch = f"jsess-{session.id}-commit-{secrets.token_hex(4)}"
        agent.scratch_in_use.add(scratch)
        try:
            await progress.step("copying the container's file-system changes")
            _id, copied = await agent.call(
                lambda: docker_commit.prepare_clean_container(
                    client, container, session.image, scratch
                ),
                "prepare the commit",
            )
            await progress.step(f"copying the work volume ({copied} other paths copied)")
            await agent.call(
                lambda: docker_commit.copy_work_volume(client, container, scratch),
                "copy the work volume",
            )
            await progress.step("committing the image")
            return await agent.call(
                lambda: docker_commit.commit(client, scratch, repository, tag, session.id),
                "commit",
            )
        finally:
            # Even when cancelled: the scratch container must not outlive the task.
            try:
                await asyncio.shield(
                    agent.call(lambda: docker_commit.remove_container(client, scratch), "clean up")
                )
            finally:
                agent.scratch_in_use.discard(scratch)

    # --- commit --------------------------------------------------------------------------

    async def commit_session(self, action: CommitSessionAction) -> TaskData:
        session = await self.service._resolve(action)
        agent, container = await self._running_docker(session, "committed")
        if (ongoing := await self._ongoing(session.id)) is not None:
            raise Conflict(
                f"a {ongoing.kind} of this session is in progress (task {ongoing.id})",
                task_id=ongoing.id,
            )
        stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
        path = self.config.commit_dir / session.id / f"{stamp}.tar.gz"
        repository = f"{self.config.image_prefix}-commits/{session.id}"

        async def work(progress: Progress) -> dict[str, Any]:
            image_id = await self._build(progress, agent, session, container, repository, stamp)
            client = agent.client()
            try:
                await progress.step(f"exporting to {path.name}")
                size = await agent.call(
                    lambda: docker_commit.export_gzip(client, image_id, path), "export"
                )
            finally:
                await asyncio.shield(
                    agent.call(
                        lambda: docker_commit.remove_image(client, f"{repository}:{stamp}"),
                        "remove the exported image",
                    )
                )
            await asyncio.to_thread(docker_commit.prune_archives, path.parent, self.config.keep)
            return {
                "path": str(path),
                "size": size,
                "image_id": image_id,
                "committed_at": utcnow().isoformat(),
            }

        return await self.tasks.submit(
            COMMIT, session.owner_access_key, work, session_id=session.id, total=4
        )

    async def get_commit_status(self, action: GetCommitStatusAction) -> dict[str, Any]:
        session = await self.service._resolve(action)
        latest = await self.tasks.latest(session.id, (COMMIT, CONVERT))
        ongoing = latest is not None and latest.status not in FINAL_TASK_STATUSES
        return {
            "session_id": session.id,
            "status": "ongoing" if ongoing else "ready",
            "last": latest,
        }

    # --- convert -------------------------------------------------------------------------

    def image_name(self, owner_access_key: str, name: str, tag: str) -> tuple[str, str]:
        """(repository, tag) of a converted image."""
        parts = [self.config.image_prefix, owner_access_key.lower(), name]
        if self.config.registry:
            parts.insert(0, self.config.registry)
        return "/".join(parts), tag

    async def convert_session_to_image(self, action: ConvertToImageAction) -> TaskData:
        session = await self.service._resolve(action)
        agent, container = await self._running_docker(session, "converted")
        if (ongoing := await self._ongoing(session.id)) is not None:
            raise Conflict(
                f"a {ongoing.kind} of this session is in progress (task {ongoing.id})",
                task_id=ongoing.id,
            )
        owner = session.owner_access_key
        repository, tag = self.image_name(owner, action.image_name, action.tag)
        full = f"{repository}:{tag}"
        if len(full) > MAX_IMAGE_REFERENCE:
            raise InvalidRequest(
                f"the image name {full} is longer than {MAX_IMAGE_REFERENCE} characters",
                field="image_name",
            )
        existing = await agent.call(
            lambda: docker_commit.image_id_of(agent.client(), full), "inspect image"
        )
        push = self.config.registry != "" and action.push is not False
        if action.push and not self.config.registry:
            raise InvalidRequest("no registry is configured (c.SessionsApp.image_registry)")
        # Claimed last: nothing after it refuses the request, so a claim is never left behind.
        created = await self._claim(full, owner, session, foreign_image=existing is not None)
        steps = 5 if push else 4

        async def work(progress: Progress) -> dict[str, Any]:
            try:
                image_id = await self._build(progress, agent, session, container, repository, tag)
            except BaseException:
                if created:
                    await self._release(full)
                raise
            await progress.step(f"tagged {full}")
            await self._record(full, image_id, agent.id)
            result: dict[str, Any] = {"image": full, "image_id": image_id, "pushed_to": None}
            if push:
                await progress.step(f"pushing to {self.config.registry}")
                error = await agent.call(
                    lambda: docker_commit.push(agent.client(), repository, tag), "push"
                )
                if error:
                    raise AgentError(
                        f"the image {full} was made, but the push to {self.config.registry} "
                        f"failed: {error}"
                    )
                await self._record(full, image_id, agent.id, pushed_to=self.config.registry)
                result["pushed_to"] = self.config.registry
            return result

        return await self.tasks.submit(
            CONVERT, owner, work, session_id=session.id, total=steps, message=f"making {full}"
        )

    # --- delete --------------------------------------------------------------------------

    async def delete_image(self, action: DeleteImageAction) -> dict[str, Any]:
        """Untag and remove a converted image, and give its name and ``max_images`` place back.

        Refused (409) while a session that is not over uses it: its restart would need it.
        """
        caller = action.caller

        def find(db: Session) -> tuple[str, str | None, int]:
            row = db.get(UserImageRow, action.name)
            if row is None or (row.owner_access_key != caller.access_key and not caller.is_admin):
                raise NotFound(f"no image {action.name!r} of yours")
            users = db.scalar(
                select(func.count())
                .select_from(SessionRow)
                .where(SessionRow.image == action.name)
                .where(SessionRow.status.not_in([str(s) for s in TERMINAL_STATUSES]))
            )
            return row.owner_access_key, row.agent_id, users or 0

        owner, agent_id, users = await self.service.repository.db.run(find)
        if users:
            raise Conflict(f"{users} session(s) still use the image {action.name}")
        if agent_id is not None:
            agent = self.service.agents.get(agent_id)  # AgentUnavailable: kept, try again later
            if isinstance(agent, DockerAgent):
                await agent.call(
                    lambda: docker_commit.remove_image(agent.client(), action.name),
                    "remove image",
                )

        def forget(db: Session) -> None:
            row = db.get(UserImageRow, action.name)
            if row is not None:
                db.delete(row)

        await self.service.repository.db.run(forget)
        return {"name": action.name, "owner_access_key": owner, "removed": True}

    # --- the user_images table -----------------------------------------------------------

    async def _claim(
        self, name: str, owner: str, session: SessionData, *, foreign_image: bool
    ) -> bool:
        """Reserve ``name`` for ``owner`` (True when new), checking the policy's max_images."""
        policy = await self.service.accounts.policy_of(owner)

        def work(db: Session) -> bool:
            row = db.get(UserImageRow, name, with_for_update=True)
            if row is not None:
                if row.owner_access_key != owner:
                    raise Conflict(f"the image name {name} belongs to another owner")
                return False
            if foreign_image:
                raise Conflict(f"an image {name} exists that was not made for you")
            limit = policy.max_images
            if limit is not None:
                count = db.scalar(
                    select(func.count())
                    .select_from(UserImageRow)
                    .where(UserImageRow.owner_access_key == owner)
                )
                if (count or 0) >= limit:
                    raise QuotaExceeded(
                        f"max_images {limit} reached: remove an image or ask for a larger policy",
                        limit="max_images",
                    )
            db.add(UserImageRow(name=name, owner_access_key=owner, session_id=session.id))
            return True

        return await self.service.repository.db.run(work)

    async def _release(self, name: str) -> None:
        def work(db: Session) -> None:
            row = db.get(UserImageRow, name)
            if row is not None and not row.image_id:
                db.delete(row)

        with contextlib.suppress(Exception):
            await asyncio.shield(self.service.repository.db.run(work))

    async def _record(
        self, name: str, image_id: str, agent_id: str, *, pushed_to: str | None = None
    ) -> None:
        def work(db: Session) -> None:
            row = db.get(UserImageRow, name)
            if row is not None:
                row.image_id, row.agent_id, row.created_at = image_id, agent_id, utcnow()
                if pushed_to is not None:
                    row.pushed_to = pushed_to

        await self.service.repository.db.run(work)

    async def owner_images(self, owner_access_key: str) -> list[str]:
        """Names of the images converted for this owner (allowed to them)."""

        def work(db: Session) -> list[str]:
            return list(
                db.scalars(
                    select(UserImageRow.name)
                    .where(UserImageRow.owner_access_key == owner_access_key)
                    .where(UserImageRow.image_id != "")
                    .order_by(UserImageRow.name)
                )
            )

        return await self.service.repository.db.run(work)

    async def image_entries(self, caller: Caller) -> list[ImageEntry]:
        """``GET images`` rows for the caller's own converted images."""

        def work(db: Session) -> list[tuple[str, str | None, datetime]]:
            rows = db.scalars(
                select(UserImageRow)
                .where(UserImageRow.owner_access_key == caller.access_key)
                .where(UserImageRow.image_id != "")
                .order_by(UserImageRow.name)
            )
            return [(r.name, r.agent_id, r.created_at) for r in rows]

        entries = []
        for name, agent_id, _created in await self.service.repository.db.run(work):
            entries.append(
                ImageEntry(
                    name=name,
                    present=agent_id is not None,
                    is_default=False,
                    agents=[agent_id] if agent_id else [],
                    size=None,
                    labels={"org.jupyter.sessions.owner": caller.access_key},
                )
            )
        return entries
