"""EmoWeb entry point for Hugging Face Spaces and local use: `python app.py`.

Settings come from the environment (EMOWEB_DATA_DIR, EMOWEB_DATABASE_URL, EMOWEB_PROFILE,
EMOWEB_DEVICE, EMOWEB_MAX_SECONDS, EMOWEB_MAX_UPLOAD_MB, ...; see emoweb/config.py). Optional login:
EMOWEB_AUTH="user1:pass1,user2:pass2" turns on Gradio auth, and each caregiver then sees only their
own profiles. Without login each browser has its own profiles (an owner key the browser keeps), except
on a loopback host outside Spaces or with EMOWEB_SHARED=1 (one shared family). Listens on
127.0.0.1:7860 by default (EMOWEB_HOST / EMOWEB_PORT; on Spaces the GRADIO_SERVER_NAME the platform
sets), never shares a public link, sends no analytics.
"""
from __future__ import annotations

import os
import signal
import sys

from emoweb.config import get_settings  # imports no gradio

settings = get_settings()
# Before gradio is imported (it reads it then): nothing leaves the machine. (Uploads stay in the data
# dir: build_app points gradio's upload folder there.)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from emoweb.ui import build_app  # noqa: E402
from emoweb.ui.common import CSS, OWNER_JS  # noqa: E402


def parse_auth(text: str | None) -> list[tuple[str, str]] | None:
    """'user1:pass1,user2:pass2' -> [(user1, pass1), (user2, pass2)]; empty -> None (no login)."""
    pairs = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        user, sep, password = item.partition(":")
        if not sep or not user.strip() or not password:
            raise SystemExit("EMOWEB_AUTH must look like 'user1:pass1,user2:pass2'")
        pairs.append((user.strip(), password))
    return pairs or None


demo = build_app(settings)  # models load lazily, once per process


def main(blocks: gr.Blocks = demo) -> None:
    """Serve `blocks` (default: the app built from the environment's settings) until stopped."""
    auth = parse_auth(settings.auth)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a clean exit: temp files removed, database closed
    print(f"EmoWeb: starting on http://{settings.host}:{settings.port}/ (Ctrl+C stops it)", flush=True)
    blocks.launch(
        server_name=settings.host,
        server_port=settings.port,
        share=False,
        auth=auth,
        auth_message="EmoWeb: log in as a caregiver" if auth else None,
        max_file_size=f"{settings.max_upload_mb:g}mb",
        show_error=False,
        footer_links=["api", "settings"],
        head=OWNER_JS,  # the browser's owner key (visitors without login each see only their own data)
        css=CSS,
        quiet=True,  # no share-link hint: this app never shares a public link
    )


if __name__ == "__main__":
    main()
