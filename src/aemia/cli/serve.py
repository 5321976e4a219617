"""``aemia serve``: the browser review and annotation app over an active-learning project (:mod:`aemia.serve`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from aemia.cli import validate as v
from aemia.cli.common import console

SERVE_HELP = (
    "Open a project in the browser: the worklist in priority order (the latest `aemia active query` round, or "
    "P/priority.csv from `aemia review prioritize`), the image with the model's prediction as the starting mask "
    "(2D, or axial/coronal/sagittal for CT/MR with window presets and the attention/uncertainty heat map), brush, "
    "eraser, fill, undo/redo, accept / reject / flag. Every save goes through the ledger with the annotator, the "
    "seconds spent and the pixels changed against the prediction; a save from a stale tab is refused.\n\n"
    "Binds 127.0.0.1 by default; any other --host needs --token, which every request must then carry (the printed "
    "URL has it).\n\n"
    "Example: aemia serve --project polyps"
)


def serve_cmd(
    project: Path = typer.Option(..., "--project", "-p", help="Project folder (aemia active init).", callback=v.existing),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; not loopback needs --token.", is_eager=True),
    port: int = typer.Option(8765, "--port", help="TCP port (0: any free port).", callback=v.number(0, 65535)),
    token: Optional[str] = typer.Option(None, "--token", help="Access token every request must carry (>= 16 characters).",
                                        callback=v.serve_token),
    priority: Optional[Path] = typer.Option(None, "--priority", help="A priority.csv of `aemia review prioritize` "
                                            "(default P/priority.csv when present).", callback=v.existing),
    annotator: Optional[str] = typer.Option(None, "--annotator", help="Name the app proposes (default: login name)."),
) -> None:
    import socket

    import uvicorn

    from aemia.serve.app import ServeConfig, create_app

    app = create_app(ServeConfig(project=project, token=token, priority=priority, annotator=annotator))
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        from aemia.errors import InputError

        raise InputError(None, f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound}/" + (f"?token={token}" if token else "")
    console.print(f"aemia review app for {project}: open {url}  (Ctrl+C stops it)", markup=False, soft_wrap=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


def register(app: typer.Typer) -> None:
    """Add ``aemia serve`` to the main app."""
    app.command("serve", help=SERVE_HELP)(serve_cmd)
