"""Abuse reports: configurable rules over a session's sampled usage, with the evidence that
triggered them (``GET sessions/{ref}/abusing-report``).

Rules (``c.SessionsApp.abuse_rules``; a rule set to null is off):
- ``cpu_percent`` for ``cpu_sustained_seconds``: CPU above that share of one core, without a
  sample below it, for at least that long;
- ``mem_fraction``: memory in use at or above that fraction of the container's limit;
- ``max_processes``: more processes than that;
- ``process_names``: processes with any of these names (Docker kernels only: a local kernel
  shares the host's process table).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .actions.observability import GetAbusingReportAction
from .agents.docker import DockerAgent
from .errors import InvalidStatus, SessionsError
from .repository.orm import utcnow
from .types import ALIVE_STATUSES
from .usage import UsagePoint, UsageSampler

if TYPE_CHECKING:
    from .service import SessionService

DEFAULT_RULES: dict[str, Any] = {
    "cpu_percent": 90,
    "cpu_sustained_seconds": 300,
    "mem_fraction": 0.95,
    "max_processes": 512,
    "process_names": ["xmrig", "minerd", "cpuminer", "ethminer", "t-rex", "nbminer"],
}
#: Characters of a matching process's command line shown as evidence.
COMMAND_CHARS = 200
PS_OUTPUT_LIMIT = 256 * 1024


@dataclass(frozen=True)
class Finding:
    rule: str
    message: str
    evidence: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "message": self.message, "evidence": self.evidence}


def check_rules(
    rules: Mapping[str, Any],
    points: Sequence[UsagePoint],
    processes: Sequence[tuple[int, str, str]] | None,
) -> list[Finding]:
    """Which rules the series (oldest first) and the process list break, with evidence."""
    findings: list[Finding] = []
    level = rules.get("cpu_percent")
    sustained = float(rules.get("cpu_sustained_seconds") or 0)
    if level is not None and len(points) >= 2:
        run: list[UsagePoint] = []
        for point in reversed(points):
            if point.cpu_percent is None or point.cpu_percent < level:
                break
            run.append(point)
        if run and len(run) < len(points):
            start = points[len(points) - len(run) - 1].at
            seconds = (points[-1].at - start).total_seconds()
            if seconds >= sustained:
                findings.append(
                    Finding(
                        "cpu_percent",
                        f"CPU above {level}% of a core for {seconds:.0f} s "
                        f"(the rule: {sustained:g} s)",
                        {
                            "since": start.isoformat(),
                            "seconds": round(seconds, 1),
                            "samples": [
                                {"at": p.at.isoformat(), "cpu_percent": p.cpu_percent}
                                for p in reversed(run)
                            ],
                        },
                    )
                )
    latest = points[-1] if points else None
    fraction = rules.get("mem_fraction")
    if fraction is not None and latest is not None and latest.mem_limit:
        used = latest.mem_bytes / latest.mem_limit
        if used >= float(fraction):
            findings.append(
                Finding(
                    "mem_fraction",
                    f"memory at {used:.0%} of its limit (the rule: {float(fraction):.0%})",
                    {
                        "at": latest.at.isoformat(),
                        "mem_bytes": latest.mem_bytes,
                        "mem_limit": latest.mem_limit,
                    },
                )
            )
    most = rules.get("max_processes")
    if most is not None and latest is not None and latest.pids > int(most):
        findings.append(
            Finding(
                "max_processes",
                f"{latest.pids} processes (the rule: at most {most})",
                {"at": latest.at.isoformat(), "pids": latest.pids},
            )
        )
    names = set(rules.get("process_names") or ())
    if names and processes:
        matched = [(pid, name, command) for pid, name, command in processes if name in names]
        if matched:
            findings.append(
                Finding(
                    "process_names",
                    "processes with forbidden names: "
                    + ", ".join(sorted({name for _pid, name, _command in matched})),
                    {
                        "processes": [
                            {"pid": pid, "name": name, "command": command[:COMMAND_CHARS]}
                            for pid, name, command in matched
                        ]
                    },
                )
            )
    return findings


def parse_ps(output: str) -> list[tuple[int, str, str]]:
    """``ps -eo pid=,comm=,args=`` lines → (pid, name, command line)."""
    found = []
    for line in output.splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 2 and parts[0].isdigit():
            found.append((int(parts[0]), parts[1], parts[2] if len(parts) > 2 else ""))
    return found


class AbuseService:
    """Judges a running session against the rules, from the sampler's series and a fresh look."""

    def __init__(
        self, service: SessionService, sampler: UsageSampler, rules: Mapping[str, Any]
    ) -> None:
        self.service = service
        self.sampler = sampler
        self.rules = {**DEFAULT_RULES, **rules}

    async def get_abusing_report(self, action: GetAbusingReportAction) -> dict[str, Any]:
        session = await self.service._resolve(action)
        if session.status not in ALIVE_STATUSES:
            raise InvalidStatus(
                f"the session is {session.status}; only a running session has usage to judge",
                status=str(session.status),
            )
        await self.sampler.sample(session)
        points = self.sampler.series(session.id)
        processes = await self._processes(session)
        findings = check_rules(self.rules, points, processes)
        return {
            "session_id": session.id,
            "checked_at": utcnow().isoformat(),
            "abusing": bool(findings),
            "findings": [f.to_json() for f in findings],
            "rules": self.rules,
            "samples": len(points),
            "processes_checked": processes is not None,
        }

    async def _processes(self, session: Any) -> list[tuple[int, str, str]] | None:
        kernel = session.main_kernel
        if kernel is None or kernel.agent_id is None:
            return None
        agent = self.service.agents.get(kernel.agent_id)
        if not isinstance(agent, DockerAgent):
            return None  # a local kernel would see the host's whole process table
        ref = kernel.container_id or agent.kernel_ref(session.id, kernel.name)
        try:
            process = await agent.exec(ref, ["ps", "-eo", "pid=,comm=,args="])
            output = ""
            while (chunk := await process.read()) is not None:
                if chunk[0] == "stdout" and len(output) < PS_OUTPUT_LIMIT:
                    output += chunk[1]
            await process.wait()
        except SessionsError:
            return None
        return parse_ps(output)
