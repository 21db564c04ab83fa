"""The sessions widget: a live list, a create form and a per-session detail (files, services,
logs, commits), composed from stock ipywidgets and driven by the blocking client.

Each action runs in the handler of a button (or of a selection) and shows its outcome, or the
server's error message, in a ``message`` HTML of its own pane; nothing raises into the notebook.
``start()`` refreshes the list (and the open pane) from a daemon thread until ``stop()``.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable, Mapping
from typing import Any

import ipywidgets as w

from ..client import FINAL_STATUSES, SessionsClient
from ..errors import SessionsError

Session = dict[str, Any]
TAB_TITLES = ("Files", "Services", "Logs", "Commits")


def _note(message: str, error: bool = False) -> str:
    colour = "var(--jp-error-color1, #c00)" if error else "inherit"
    return f'<span style="color:{colour}">{html.escape(message)}</span>'


def session_label(session: Mapping[str, Any]) -> str:
    return f"{session.get('name')}  ·  {session.get('status')}  ·  {session.get('image')}"


class _Pane(w.VBox):
    """A box with a ``message`` line that reports the outcome of what its buttons do."""

    def __init__(self, client: Callable[[], SessionsClient], children: list[w.Widget]) -> None:
        self.message = w.HTML()
        super().__init__(children=[*children, self.message])
        self._client = client
        self.session: Session | None = None

    def attempt(self, what: Callable[[SessionsClient], Any]) -> Any:
        """Run ``what`` with the client; a server error is shown here, not raised."""
        try:
            return what(self._client())
        except SessionsError as error:
            self.message.value = _note(error.message, error=True)
            return None

    @property
    def ref(self) -> str:
        return str(self.session["id"]) if self.session else ""

    def load(self, session: Session | None) -> None:
        self.session = session
        self.message.value = ""
        if session is not None:
            self.refresh()

    def refresh(self) -> None:
        """Re-read this pane's part of the session; the base pane has none (panes override)."""


class FilesPane(_Pane):
    """The work directory: browse folders, upload from the browser (FileUpload)."""

    def __init__(self, client: Callable[[], SessionsClient]) -> None:
        self.path = w.Text(value="", description="Folder", placeholder="(work directory)")
        self.files = w.Select(options=[], rows=8, layout=w.Layout(width="100%"))
        self.open_button = w.Button(description="Open", icon="folder-open")
        self.up_button = w.Button(description="Up", icon="arrow-up")
        self.refresh_button = w.Button(description="Refresh", icon="refresh")
        self.upload = w.FileUpload(multiple=True, description="Upload")
        buttons = w.HBox([self.open_button, self.up_button, self.refresh_button, self.upload])
        super().__init__(client, [self.path, self.files, buttons])
        self.open_button.on_click(lambda _: self.open_selected())
        self.up_button.on_click(lambda _: self.go_up())
        self.refresh_button.on_click(lambda _: self.refresh())
        self.upload.observe(lambda _: self.upload_chosen(), names="value")

    def refresh(self) -> None:
        answer = self.attempt(lambda c: c.list_files(self.ref, self.path.value or None))
        if answer is None:
            self.files.options = []
            return
        self.files.options = [
            (f"{f['name']}/" if f.get("type") == "dir" else f"{f['name']}  ({f.get('size')} B)", f)
            for f in answer.get("files", [])
        ]
        self.message.value = _note(f"{len(self.files.options)} entries in {answer.get('path', '')}")

    def open_selected(self) -> None:
        chosen = self.files.value
        if chosen and chosen.get("type") == "dir":
            base = self.path.value.strip("/")
            self.path.value = f"{base}/{chosen['name']}" if base else chosen["name"]
            self.refresh()

    def go_up(self) -> None:
        self.path.value = self.path.value.strip("/").rpartition("/")[0]
        self.refresh()

    def upload_chosen(self) -> None:
        chosen = [(item["name"], bytes(item["content"])) for item in self.upload.value]
        if not chosen or self.session is None:
            return
        answer = self.attempt(lambda c: c.upload(self.ref, chosen, self.path.value or None))
        # Cleared, so that choosing the same file again is a change (and uploads again).
        self.upload.value = ()
        if answer is not None:
            self.refresh()
            self.message.value = _note(f"uploaded {len(answer.get('files', []))} file(s)")


class ServicesPane(_Pane):
    """The session's services and their links; start one by name."""

    def __init__(self, client: Callable[[], SessionsClient]) -> None:
        self.table = w.HTML()
        self.service = w.Dropdown(options=[], description="Service")
        self.start_button = w.Button(description="Start", icon="play")
        self.refresh_button = w.Button(description="Refresh", icon="refresh")
        row = w.HBox([self.service, self.start_button, self.refresh_button])
        super().__init__(client, [self.table, row])
        self.start_button.on_click(lambda _: self.start_selected())
        self.refresh_button.on_click(lambda _: self.refresh())

    def refresh(self) -> None:
        answer = self.attempt(lambda c: c.list_services(self.ref))
        if answer is None:
            return
        rows = answer.get("services", []) if isinstance(answer, Mapping) else answer
        self.service.options = [str(s.get("name")) for s in rows]
        self.table.value = "".join(
            f"<div><b>{html.escape(str(s.get('name')))}</b> {html.escape(str(s.get('status', '')))}"
            + (
                f' <a href="{html.escape(s["url"])}" target="_blank">open</a>'
                if s.get("url")
                else ""
            )
            + "</div>"
            for s in rows
        ) or _note("no services")

    def start_selected(self) -> None:
        if not self.service.value:
            return
        answer = self.attempt(lambda c: c.start_service(self.ref, self.service.value))
        if answer is not None:
            self.refresh()
            self.message.value = _note(f"{self.service.value}: {answer.get('status', 'started')}")


class LogsPane(_Pane):
    """The main kernel's log (its last lines)."""

    def __init__(self, client: Callable[[], SessionsClient]) -> None:
        self.text = w.Textarea(value="", layout=w.Layout(width="100%", height="16em"))
        self.tail = w.BoundedIntText(value=200, min=1, max=100_000, description="Last lines")
        self.refresh_button = w.Button(description="Refresh", icon="refresh")
        super().__init__(client, [w.HBox([self.tail, self.refresh_button]), self.text])
        self.refresh_button.on_click(lambda _: self.refresh())

    def refresh(self) -> None:
        text = self.attempt(lambda c: c.logs(self.ref, tail=self.tail.value))
        if text is not None:
            self.text.value = text


class CommitsPane(_Pane):
    """Commit the session to an image, or convert it to a named one; the task's progress."""

    def __init__(self, client: Callable[[], SessionsClient]) -> None:
        self.image_name = w.Text(description="Image name", placeholder="for convert")
        self.commit_button = w.Button(description="Commit", icon="save")
        self.convert_button = w.Button(description="Convert to image", icon="cube")
        self.task = w.HTML()
        row = w.HBox([self.commit_button, self.image_name, self.convert_button])
        super().__init__(client, [row, self.task])
        self.commit_button.on_click(lambda _: self.commit())
        self.convert_button.on_click(lambda _: self.convert())
        self.task_id: str | None = None

    def commit(self) -> None:
        self._show_task(self.attempt(lambda c: c.commit(self.ref)))

    def convert(self) -> None:
        if not self.image_name.value.strip():
            self.message.value = _note("name the image first", error=True)
            return
        name = self.image_name.value.strip()
        self._show_task(self.attempt(lambda c: c.convert_to_image(self.ref, name)))

    def refresh(self) -> None:
        if self.task_id:
            self._show_task(self.attempt(lambda c: c.get_task(str(self.task_id))))
        else:
            # {session_id, status: ongoing|ready, last: the last commit's task or null}
            status = self.attempt(lambda c: c.commit_status(self.ref))
            if isinstance(status, Mapping):
                self._show_task(status.get("last"))

    def _show_task(self, task: Any) -> None:
        if not isinstance(task, Mapping) or not task:
            return
        self.task_id = str(task["id"]) if task.get("id") else self.task_id
        progress = task.get("progress") or {}
        parts = [f"task {task.get('id', '')}", str(task.get("status", ""))]
        if progress.get("message"):
            parts.append(str(progress["message"]))
        if task.get("error"):
            parts.append(f"error: {task['error']}")
        self.task.value = html.escape(" · ".join(p for p in parts if p))


class SessionDetail(w.VBox):
    """The selected session: its status, restart and destroy, and a tab per aspect."""

    def __init__(self, client: Callable[[], SessionsClient]) -> None:
        self.title = w.HTML()
        self.restart_button = w.Button(description="Restart", icon="repeat")
        self.destroy_button = w.Button(description="Destroy", icon="trash", button_style="danger")
        self.message = w.HTML()
        self.files = FilesPane(client)
        self.services = ServicesPane(client)
        self.logs = LogsPane(client)
        self.commits = CommitsPane(client)
        self.panes: list[_Pane] = [self.files, self.services, self.logs, self.commits]
        self.tabs = w.Tab(children=self.panes, titles=TAB_TITLES)
        actions = w.HBox([self.restart_button, self.destroy_button, self.message])
        super().__init__(children=[self.title, actions, self.tabs])
        self._client = client
        self.session: Session | None = None
        self.restart_button.on_click(lambda _: self._act("restart_session"))
        self.destroy_button.on_click(lambda _: self._act("destroy_session"))
        self.tabs.observe(lambda _: self.refresh_pane(), names="selected_index")
        self.show(None)

    @property
    def pane(self) -> _Pane:
        return self.panes[self.tabs.selected_index or 0]

    def show(self, session: Session | None) -> None:
        """Another session was selected (or none): load the open tab for it."""
        self.session = session
        self.message.value = ""
        self.update(session)
        for pane in self.panes:
            pane.session = session
        self.layout.display = None if session else "none"
        if session is not None:
            self.pane.load(session)

    def update(self, session: Session | None) -> None:
        """The same session, newer state (what the live refresh brings)."""
        if session is None:
            self.title.value = ""
            return
        self.session = session
        info = f" — {session['status_info']}" if session.get("status_info") else ""
        self.title.value = (
            f"<b>{html.escape(str(session['name']))}</b> <code>{session['id']}</code> "
            f"{html.escape(str(session['status']))}{html.escape(info)}"
        )
        final = session["status"] in FINAL_STATUSES
        self.restart_button.disabled = session["status"] == "TERMINATING"
        self.destroy_button.disabled = final or session["status"] == "TERMINATING"

    def refresh_pane(self) -> None:
        if self.session is not None:
            self.pane.load(self.session)

    def _act(self, method: str) -> None:
        if self.session is None:
            return
        ref = str(self.session["id"])
        try:
            session = getattr(self._client(), method)(ref)
        except SessionsError as error:
            self.message.value = _note(error.message, error=True)
            return
        self.message.value = _note(f"{session['name']} is {session['status']}")
        self.update(session)


class CreateForm(w.VBox):
    """Image (or template), name, CPU and memory; Create waits briefly for RUNNING."""

    def __init__(
        self, client: Callable[[], SessionsClient], on_created: Callable[[Session], None]
    ) -> None:
        self.image = w.Combobox(options=[], description="Image", ensure_option=False)
        self.template = w.Dropdown(options=[("(none)", "")], value="", description="Template")
        self.name = w.Text(description="Name", placeholder="(generated)")
        self.cpu = w.BoundedFloatText(value=0, min=0, max=4096, step=0.5, description="CPU")
        self.mem = w.Text(description="Memory", placeholder="e.g. 2g")
        self.create_button = w.Button(description="Create", icon="plus", button_style="primary")
        self.message = w.HTML()
        fields = [w.HBox([self.image, self.template]), w.HBox([self.name, self.cpu, self.mem])]
        super().__init__(children=[*fields, w.HBox([self.create_button, self.message])])
        self._client = client
        self._on_created = on_created
        self.create_button.on_click(lambda _: self.create())

    def load_choices(self) -> None:
        """The images and templates the caller may use."""
        try:
            images = self._client().list_images().get("images", [])
            templates = self._client().list_templates().get("templates", [])
        except SessionsError as error:
            self.message.value = _note(error.message, error=True)
            return
        self.image.options = [str(i["name"]) for i in images]
        if not self.image.value and self.image.options:
            self.image.value = self.image.options[0]
        self.template.options = [("(none)", "")] + [
            (str(t.get("name") or t["id"]), str(t["id"])) for t in templates
        ]

    def create(self, max_wait_seconds: float = 30.0) -> Session | None:
        fields: dict[str, Any] = {"max_wait_seconds": max_wait_seconds}
        if self.name.value.strip():
            fields["name"] = self.name.value.strip()
        resources: dict[str, Any] = {}
        if self.cpu.value:
            resources["cpu"] = self.cpu.value
        if self.mem.value.strip():
            resources["mem"] = self.mem.value.strip()
        if resources:
            fields["resources"] = resources
        image = self.image.value.strip() or None
        self.create_button.disabled = True
        self.message.value = _note("creating…")
        try:
            if self.template.value:
                if image:
                    fields["image"] = image
                session = self._client().create_from_template(self.template.value, **fields)
            else:
                session = self._client().create_session(image, **fields)
        except SessionsError as error:
            self.message.value = _note(error.message, error=True)
            return None
        finally:
            self.create_button.disabled = False
        self.message.value = _note(f"{session['name']} is {session['status']}")
        self.name.value = ""
        self._on_created(session)
        return session


class SessionsWidget(w.VBox):
    """Your sessions, live: ``SessionsWidget()`` in a notebook cell (``start()`` is called)."""

    def __init__(
        self,
        client: SessionsClient | None = None,
        *,
        live: bool = True,
        interval: float = 2.0,
    ) -> None:
        self._client_obj = client
        self.header = w.HTML("<b>Compute sessions</b>")
        self.refresh_button = w.Button(description="Refresh", icon="refresh")
        self.live = w.Checkbox(value=False, description="Live", indent=False)
        self.message = w.HTML()
        self.table = w.Select(options=[], rows=8, layout=w.Layout(width="100%"))
        self.form = CreateForm(self.client, self._created)
        self.detail = SessionDetail(self.client)
        self.sessions: dict[str, Session] = {}
        top = w.HBox([self.header, self.refresh_button, self.live, self.message])
        super().__init__(children=[top, self.table, self.form, self.detail])
        self.interval = interval
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refresh_button.on_click(lambda _: self.refresh())
        self.table.observe(self._selected, names="value")
        self.live.observe(
            lambda change: self.start() if change["new"] else self.stop(), names="value"
        )
        if live:
            self.form.load_choices()
            self.refresh()
            self.live.value = True

    def client(self) -> SessionsClient:
        if self._client_obj is None:
            self._client_obj = SessionsClient()
        return self._client_obj

    @property
    def selected(self) -> Session | None:
        return self.sessions.get(self.table.value) if self.table.value else None

    def refresh(self) -> None:
        """Read the sessions again: the list's labels, and the selected session's status."""
        with self._lock:
            try:
                listed = self.client().list_sessions(limit=200)["sessions"]
            except SessionsError as error:
                self.message.value = _note(error.message, error=True)
                return
            self.message.value = ""
            self.sessions = {str(s["id"]): s for s in listed}
            current = self.table.value if self.table.value in self.sessions else None
            options = [(session_label(s), str(s["id"])) for s in listed]
            if list(self.table.options) != options:
                self.table.unobserve(self._selected, names="value")
                self.table.options = options
                self.table.value = current
                self.table.observe(self._selected, names="value")
            if current is None and self.detail.session is not None:
                self.detail.show(None)
            elif current is not None:
                self.detail.update(self.sessions[current])

    def select(self, ref: str) -> None:
        """Select a session by id or name (as a click in the list does)."""
        for session_id, session in self.sessions.items():
            if ref in (session_id, session.get("name")):
                self.table.value = session_id
                return
        raise KeyError(ref)

    def _selected(self, change: Mapping[str, Any]) -> None:
        with self._lock:
            self.detail.show(self.sessions.get(change["new"]) if change["new"] else None)

    def _created(self, session: Session) -> None:
        self.refresh()
        self.select(str(session["id"]))

    # --- live refresh -----------------------------------------------------------------------

    def start(self) -> None:
        """Refresh every ``interval`` seconds from a daemon thread (the Live checkbox)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="sessions-widget", daemon=True)
        self._thread.start()
        if not self.live.value:
            self.live.value = True

    def stop(self) -> None:
        self._stop.set()
        if self.live.value:
            self.live.value = False

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh()

    def close(self) -> None:
        self.stop()
        super().close()
