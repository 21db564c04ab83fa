"""Benchmark: the round trip of `1+1` through REST and through the WebSocket stream, next to a
direct jupyter_client round trip to the same kernel (the baseline), measured in the same run.

    .venv/bin/python benchmarks/execute_roundtrip.py [--runs 300] [--local]

Starts its own Jupyter server on the local Docker engine (or, with --local, on the local agent),
creates one session, then interleaves the three kinds of round trip so that they see the same
machine. Every round trip ends when the result is known: the kernel's execute_reply and its
idle status (what a REST `finished` means). Prints p50/p95 of each and the differences.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import sys
import time
from typing import Any

from _server import jupyter_server
from jupyter_client import BlockingKernelClient
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect


def direct_round_trip(client: BlockingKernelClient) -> float:
    started = time.perf_counter()
    msg_id = client.execute("1+1")
    replied = idle = False
    while not (replied and idle):
        if not replied:
            reply = client.get_shell_msg(timeout=10)
            replied = reply["parent_header"].get("msg_id") == msg_id
        while not idle:
            msg = client.get_iopub_msg(timeout=10)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
    return time.perf_counter() - started


async def ws_round_trip(url: str, token: str) -> float:
    started = time.perf_counter()
    request = HTTPRequest(url, headers={"Authorization": f"token {token}"})
    ws = await websocket_connect(request)
    await ws.write_message(json.dumps({"mode": "query", "code": "1+1"}))
    while True:
        frame = json.loads(await ws.read_message())  # type: ignore[arg-type]
        if isinstance(frame, dict) and frame.get("status") == "finished":
            break
    elapsed = time.perf_counter() - started
    ws.close()
    return elapsed


def summary(name: str, values: list[float]) -> tuple[float, float]:
    p50 = statistics.median(values) * 1000
    p95 = statistics.quantiles(values, n=20)[-1] * 1000
    print(f"{name:<34} p50 {p50:7.2f} ms   p95 {p95:7.2f} ms")
    return p50, p95


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--local", action="store_true", help="use the local agent, not Docker")
    args = parser.parse_args()
    extra = ['--SessionsApp.agents=[{"id": "local", "kind": "local"}]'] if args.local else []
    with jupyter_server(*extra) as server:
        created = server.http.post(
            f"{server.api}/sessions", json={"name": "bench", "max_wait_seconds": 120}, timeout=180
        )
        session: dict[str, Any] = created.json()
        if session.get("status") != "RUNNING":
            print(f"could not start a session: {session}", file=sys.stderr)
            return 1
        with sqlite3.connect(server.workdir / "sessions.db") as db:
            (connection,) = db.execute(
                "SELECT connection FROM kernels WHERE session_id = ?", (session["id"],)
            ).fetchone()
        direct = BlockingKernelClient()
        direct.load_connection_info(json.loads(connection))
        direct.start_channels()
        direct.wait_for_ready(timeout=30)
        execute = f"{server.api}/sessions/{session['id']}/execute"
        ws_url = execute.replace("http://", "ws://") + "/stream"
        loop = asyncio.new_event_loop()
        rest_times: list[float] = []
        ws_times: list[float] = []
        direct_times: list[float] = []
        for _ in range(20):  # warm-up of every path
            direct_round_trip(direct)
            server.http.post(execute, json={"mode": "query", "code": "1+1"}, timeout=30)
            loop.run_until_complete(ws_round_trip(ws_url, server.token))
        for _ in range(args.runs):
            direct_times.append(direct_round_trip(direct))
            started = time.perf_counter()
            answer = server.http.post(execute, json={"mode": "query", "code": "1+1"}, timeout=30)
            rest_times.append(time.perf_counter() - started)
            assert answer.json()["status"] == "finished", answer.text
            ws_times.append(loop.run_until_complete(ws_round_trip(ws_url, server.token)))
        direct.stop_channels()
        agent = "local agent" if args.local else "Docker agent"
        print(f"runs: {args.runs} each, interleaved; {agent}")
        base50, base95 = summary("direct jupyter_client (baseline)", direct_times)
        rest50, rest95 = summary("REST POST execute (keep-alive)", rest_times)
        ws50, ws95 = summary("WebSocket (new socket per run)", ws_times)
        print(f"REST over baseline: p50 +{rest50 - base50:.2f} ms, p95 +{rest95 - base95:.2f} ms")
        print(f"WS over baseline:   p50 +{ws50 - base50:.2f} ms, p95 +{ws95 - base95:.2f} ms")
        server.http.delete(f"{server.api}/sessions/{session['id']}", params={"forced": "true"})
        return 0


if __name__ == "__main__":
    sys.exit(main())
