"""Shared pieces of the UI: the app context (settings, the process-wide Predictor and CaregiverService),
one palette and label order for every chart, escaping of user text and error handling (the plotly
figures the tabs reuse are in `figures`).

The UI only calls services; nothing here touches a model's weights or the database directly.
"""
import atexit
import collections
import functools
import html
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from gradio import processing_utils

from emoweb.config import Settings
from emoweb.errors import EmoWebError, NotFoundError
from emoweb.services import shown

log = logging.getLogger("emoweb.ui")

# -- labels and colours: one order, one palette, everywhere -------------------------------------

LABEL_ORDER: tuple[str, ...] = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
PALETTE: dict[str, str] = {
    "anger": "#d62728",
    "disgust": "#8c564b",
    "fear": "#9467bd",
    "joy": "#f2b701",
    "neutral": "#7f7f7f",
    "sadness": "#1f77b4",
    "surprise": "#17becf",
}
EXTRA_COLOURS: tuple[str, ...] = ("#2ca02c", "#e377c2", "#bcbd22", "#ff7f0e", "#393b79", "#637939", "#843c39", "#7b4173")
LABEL_EMOJI: dict[str, str] = {"anger": "😠", "disgust": "🤢", "fear": "😨", "joy": "😊", "neutral": "😐", "sadness": "😢",
                               "surprise": "😮"}
MAX_LABEL_BUTTONS = 12  # one-click label buttons (keys 1-9 for the first nine)
# Gradio's sweep of its upload folder: every 30 min, files older than an hour go. A clip analysed without a
# profile lives only there, so the page states the longest it stays (UPLOAD_KEPT_HOURS).
UPLOAD_SWEEP = (1800, 3600)
UPLOAD_KEPT_HOURS = sum(UPLOAD_SWEEP) / 3600
NO_PROFILE = "(don't save)"
OWNER_HEADER = "x-emoweb-owner"  # the visitor's owner key, sent by the browser (OWNER_JS) or an API client
OWNER_STORAGE = "emoweb-owner"  # the browser's local-storage entry holding it

# Runs before the app's own scripts (launch(head=...)): a random owner key kept in this browser's local
# storage, sent with every request to this server. Without local storage, a key per page load.
OWNER_JS = f"""<script>
(() => {{
  const valid = (k) => typeof k === "string" && /^[A-Za-z0-9_-]{{22,128}}$/.test(k);
  let key = null;
  try {{ key = window.localStorage.getItem("{OWNER_STORAGE}"); }} catch (e) {{}}
  if (!valid(key)) {{
    const bytes = new Uint8Array(24);
    window.crypto.getRandomValues(bytes);
    key = btoa(String.fromCharCode(...bytes)).replace(/\\+/g, "-").replace(/\\//g, "_").replace(/=+$/, "");
    try {{ window.localStorage.setItem("{OWNER_STORAGE}", key); }} catch (e) {{}}
  }}
  const send = window.fetch.bind(window);
  window.fetch = (input, init) => {{
    const url = new URL(input instanceof Request ? input.url : String(input), window.location.href);
    if (url.origin !== window.location.origin) return send(input, init);
    const headers = new Headers((init && init.headers) || (input instanceof Request ? input.headers : undefined));
    headers.set("X-EmoWeb-Owner", key);
    return send(input, {{ ...(init || {{}}), headers }});
  }};
}})();
</script>"""


# Page styles (launch(css=...)): the answer in large type, warnings apart from information, label
# buttons big enough to tap, and phone widths (caregivers label on phones).
CSS = """
.emoweb-answer { padding: 4px 0 4px 14px; margin: 4px 0; }
.emoweb-answer-label { font-size: 2.2rem; font-weight: 700; }
.emoweb-answer-sure { font-size: 1.5rem; }
.emoweb-warning { background: #fff4d6; border: 1px solid #e0b400; border-radius: 8px; padding: 4px 12px; color: #3d3000; }
.emoweb-small { font-size: 0.85rem; opacity: 0.8; }
#label-buttons button { min-height: 44px; font-size: 1rem; }
.emoweb-error:not(:empty) { color: #8a1c1c; }
/* a failed action says why in its tab's error line and a toast; Gradio's own "Error" badge on each of the
   action's outputs (over the emptied answer, the face, the table) would only repeat it, in a word that
   reads as if the clip or the child's profile were broken */
.gradio-container .wrap:has(> span.error) { display: none !important; }
/* table headers break between words only, never inside one; a table wider than the page scrolls sideways */
.gradio-container table th, .gradio-container table th * { word-break: normal !important; overflow-wrap: normal !important;
  hyphens: manual !important; }
.gradio-container .table-wrap { overflow-x: auto; }
@media (max-width: 600px) {
  .gradio-container { padding: 4px !important; }
  .emoweb-answer-label { font-size: 1.8rem; }
  #label-buttons { gap: 6px; }
  #label-buttons button { flex: 1 1 40% !important; min-width: 40% !important; }
}
"""


# the shared feature stages as the progress bar and the latency chart name them
STAGE_NAMES = {
    "decode": "decoding the clip",
    "faces": "finding faces",
    "visual": "visual encoder (face crops)",
    "asr": "transcribing speech (Whisper)",
    "audio_encoder": "audio encoder",
    "text": "text encoder",
}


def stage_times(timings: dict[str, float]) -> dict[str, float]:
    """The shared feature stages' seconds named as the progress names them ("transcribing speech (Whisper)",
    not "asr"), for the latency chart; the total left out (the chart adds the stages up)."""
    return {STAGE_NAMES.get(k, k): v for k, v in timings.items() if k != "total"}


def ordered_labels(labels: Sequence[str]) -> list[str]:
    """The seven emotions in their fixed order first, then any custom label in the order given."""
    seen = list(dict.fromkeys(labels))
    return [lab for lab in LABEL_ORDER if lab in seen] + [lab for lab in seen if lab not in LABEL_ORDER]


def label_colour(label: str, labels: Sequence[str] = ()) -> str:
    """The label's colour: fixed for the seven emotions; custom labels by their place after them."""
    if label in PALETTE:
        return PALETTE[label]
    extras = [lab for lab in ordered_labels(labels) if lab not in PALETTE]
    idx = extras.index(label) if label in extras else sum(map(ord, label))
    return EXTRA_COLOURS[idx % len(EXTRA_COLOURS)]


# -- escaping ---------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_\[\]#|~])")


def esc(text: Any) -> str:
    """User text (labels, notes, names, transcripts) for Markdown/HTML: shown as text, never markup."""
    s = html.escape(str(text), quote=False)
    return _MD_SPECIAL.sub(r"\\\1", s).replace("\n", " ")


def ptext(text: Any) -> str:
    """User text inside plotly figures (plotly reads a few HTML-like tags in text): entities only."""
    return html.escape(str(text), quote=True)


# -- errors -----------------------------------------------------------------------------------


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


# The last error of each page (gradio session), for its tab's error line: a toast closes by itself after
# a few seconds, the line stays until the next action of that tab succeeds. Bounded: API clients fill it too.
_LAST_ERRORS: collections.OrderedDict[str, str] = collections.OrderedDict()
_LAST_ERRORS_LOCK = threading.Lock()
MAX_ERRORS_KEPT = 1000
ERROR_LINE_START = "⚠️ **That did not work:**"


def _remember_error(args: tuple, kwargs: dict, text: str) -> None:
    request = next((a for a in (*args, *kwargs.values()) if isinstance(a, gr.Request)), None)
    session = getattr(request, "session_hash", None) if request is not None else None
    if not session:
        return
    with _LAST_ERRORS_LOCK:
        _LAST_ERRORS[session] = text
        _LAST_ERRORS.move_to_end(session)
        while len(_LAST_ERRORS) > MAX_ERRORS_KEPT:
            _LAST_ERRORS.popitem(last=False)


def error_line(request: gr.Request) -> str:
    """The error line of the tab whose action just failed: that page's error, in one line, as text."""
    with _LAST_ERRORS_LOCK:
        text = _LAST_ERRORS.pop(getattr(request, "session_hash", None) or "", None)
    # no line kept: the action failed before its handler ran (gradio reading an input), its message in the corner
    return f"{ERROR_LINE_START} {esc(text)}" if text else f"{ERROR_LINE_START} the message in the top corner says why."


def error_box(elem_id: str) -> gr.Markdown:
    """A tab's error line (empty until one of its actions fails; `report_errors` fills it)."""
    return gr.Markdown("", elem_id=elem_id, elem_classes="emoweb-error")


def report_errors(event: Any, line: gr.Markdown, clears: bool = True, stale: Sequence[gr.Markdown] = ()) -> Any:
    """`event`'s one-line error also in `line` (its tab's error line), where it stays after the toast has
    closed; the event's next success clears it, unless `clears` is False (a view refreshed on its own, say
    on opening a tab: finishing after a failed action, it must not wipe that action's line). `stale`: the
    action's own result lines, emptied when it fails, so a last success ("Created profile Anna") never stands
    beside the failure that followed it. Returns `event`."""
    event.failure(error_line, None, line, api_visibility="private", queue=False)
    for result in stale:
        event.failure(lambda: "", None, result, api_visibility="private", queue=False)
    if clears:
        event.success(lambda: "", None, line, api_visibility="private", queue=False)
    return event


def user_errors(fn: Callable) -> Callable:
    """Every UI action: EmoWebError -> gr.Error with its one line; anything else is logged with its
    traceback on the server and reaches the person as one line, never a traceback. The line is also
    kept for the page's error line (`report_errors`) when the action takes the request."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error as exc:
            _remember_error(args, kwargs, str(exc.message)[:300])
            raise
        except EmoWebError as exc:
            _remember_error(args, kwargs, one_line(exc))
            raise gr.Error(one_line(exc), print_exception=False) from None
        except Exception as exc:  # noqa: BLE001 - the boundary between the app and the person
            log.exception("UI action %s failed", getattr(fn, "__name__", "?"))
            text = f"Something went wrong ({type(exc).__name__}): {one_line(exc)}"
            _remember_error(args, kwargs, text)
            raise gr.Error(text, print_exception=False) from None

    return wrapper


def shown_names(values: dict[str, Any]) -> dict[str, Any]:
    """`values` keyed by registry model names, keyed by the names people read ("sem_mbt" -> "MER-SEM-MBT")."""
    from emoweb.services.modelinfo import display_name

    return {display_name(k): v for k, v in values.items()}


def model_name(name: str) -> str:
    """A registry model's display name, escaped for Markdown."""
    from emoweb.services.modelinfo import display_name

    return esc(display_name(name))


# -- the app context --------------------------------------------------------------------------


class AppContext:
    """Settings plus the process-wide services, created on first need (models load once per process)."""

    def __init__(self, settings: Settings, predictor: Any = None, service: Any = None):
        self.settings = settings
        self._predictor = predictor
        self._service = service
        self._visitors = None
        self._lock = threading.RLock()
        self.tmp_dir = Path(tempfile.mkdtemp(prefix="emoweb-ui-"))
        atexit.register(shutil.rmtree, self.tmp_dir, ignore_errors=True)

    @property
    def predictor(self):
        """One Predictor per process: the service's (it creates it on first need)."""
        return self._predictor or self.service.predictor

    @property
    def service(self):
        with self._lock:
            if self._service is None:
                from emoweb.services import CaregiverService

                self._service = CaregiverService(self.settings, predictor=self._predictor)
            return self._service

    # -- who is asking ------------------------------------------------------------------------

    @staticmethod
    def user(request: gr.Request | None) -> str | None:
        """The logged-in caregiver (None when the app runs without login): the annotator of labels."""
        name = getattr(request, "username", None) if request is not None else None
        return name or None

    @property
    def visitors(self):
        """A public demo's visitor housekeeping (limits, expiry, deleting a visitor's data)."""
        with self._lock:
            if self._visitors is None:
                from emoweb.services.visitors import Visitors

                self._visitors = Visitors(self.service, self.settings)
            return self._visitors

    def owner(self, request: gr.Request | None) -> str | None:
        """Whose data a request may see: the logged-in caregiver; else, unless the deployment is one shared
        family (None: everything), the visitor whose browser sent the owner key (header X-EmoWeb-Owner),
        or, without a key, the request's own session. On a public demo, notes the visitor's activity
        and deletes the data of visitors idle past the stated time."""
        user = self.user(request)
        if user is not None:
            return user
        if self.settings.shared:
            return None
        from emoweb.services import visitors

        headers = getattr(request, "headers", None) or {}
        key = headers.get(OWNER_HEADER) if hasattr(headers, "get") else None
        owner = visitors.visitor_owner(key) if key else visitors.session_owner(getattr(request, "session_hash", None) or "")
        if self.settings.public:
            self.visitors.touch(owner)
            self.visitors.expire()
        return owner

    def start_expiry(self, every_s: float = 600) -> None:
        """Also delete idle visitors' data every `every_s` seconds from a background thread, so it goes
        on time when no one makes a request."""

        def loop() -> None:
            while True:
                try:
                    self.visitors.expire()
                except Exception:  # noqa: BLE001 - housekeeping: logged, tried again next round
                    log.exception("deleting idle visitors' data failed")
                time.sleep(every_s)

        threading.Thread(target=loop, name="emoweb-visitor-expiry", daemon=True).start()

    def profiles(self, request: gr.Request | None) -> list:
        """Profiles this person may see: their own (all of them in a shared deployment)."""
        return self.service.list_profiles(owner=self.owner(request))

    def profile(self, ref: Any, request: gr.Request | None):
        """A profile by id or name, refused (as 'no profile') when it belongs to someone else."""
        if ref is None or str(ref).strip() in ("", NO_PROFILE):
            raise EmoWebError("choose or create a profile first")
        ref = str(ref).strip()
        owner = self.owner(request)
        try:
            info = self.service.get_profile(int(ref) if ref.isdigit() else ref, owner=owner)
        except NotFoundError:
            raise NotFoundError(f"no profile {ref[:80]!r}") from None
        if owner is not None and info.owner != owner:
            raise NotFoundError(f"no profile {ref[:80]!r}")
        return info

    def check_room(self, profile, upload: Path) -> None:
        """On a public demo, refuse (one line) a visitor's clip past the per-visitor limits."""
        from emoweb.services.visitors import VISITOR

        if self.settings.public and (profile.owner or "").startswith(VISITOR):
            self.visitors.check_room(profile.owner, profile.id, upload)

    def clip_in(self, profile, clip_id: Any):
        """A clip of the given (already authorised) profile; none chosen: "pick a clip first" (not "no clip ''")."""
        if clip_id is None or str(clip_id).strip() == "":
            raise EmoWebError("pick a clip first: from the queue, or the clip list above it")
        cid = self.service.clip_id(clip_id)
        clip = self.service.get_clip(cid)
        if clip.profile_id != profile.id:
            raise NotFoundError(f"no clip {cid} in profile {profile.name!r}")
        return clip

    def profile_choices(self, request: gr.Request | None) -> list[tuple[str, str]]:
        return [(p.name, str(p.id)) for p in self.profiles(request)]

    # -- files handed to the browser ----------------------------------------------------------

    def shown_folder(self, profile: Any, clip_id: int | None = None, labels: bool = False) -> Path:
        """Where what is shown of a clip of `profile` (`clip_id` None: of the profile as a whole; `labels`:
        its label files) is written: a folder inside the upload folder that deleting the clip or profile
        deletes (`CaregiverService.shown_folder`)."""
        return self.service.shown_folder(profile.id, clip_id, labels)

    def clip_media(self, profile: Any, clip: Any) -> str:
        """The clip's media file as the browser plays it: copied into the clip's shown folder, with its
        length written in when it declares none (a browser's recording), and, when
        the browser cannot play it, converted there by gradio's own converters (left to the web server,
        the conversion would land in a folder of its own that deleting the clip never finds)."""
        folder = self.shown_folder(profile, clip.id)
        copy = folder / f"clip{clip.id}{Path(clip.media_path).suffix}"
        media = shown_copy(self.service.media_path(clip.id), copy)
        return playable(shown.seekable(media, folder) if clip.kind in ("video", "audio") else media, clip.kind, folder)

    def temp_text(self, name: str, text: str) -> str:
        """A text file in the UI's temp dir (files older than an hour are removed on the way): for
        files derived from no clip; those of a profile go to its shown folder (`shown_text`)."""
        self.prune_temp()
        return shown_text(Path(tempfile.mkdtemp(dir=self.tmp_dir)), name, text)

    def prune_temp(self, max_age_s: float = 3600) -> None:
        now = time.time()
        for folder in self.tmp_dir.iterdir() if self.tmp_dir.is_dir() else []:
            try:
                if now - folder.stat().st_mtime > max_age_s:
                    shutil.rmtree(folder, ignore_errors=True)
            except FileNotFoundError:
                pass


def shown_copy(src: Path, dst: Path) -> str:
    """`src` copied to `dst` (kept when already there, with the same size and time)."""
    have, want = (dst.stat() if dst.is_file() else None), src.stat()
    if have is None or (have.st_size, have.st_mtime) != (want.st_size, want.st_mtime):
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}-{threading.get_ident()}.part")  # two views at once
        shutil.copy2(src, tmp)
        tmp.replace(dst)
    return str(dst)


def shown_text(folder: Path, name: str, text: str) -> str:
    dst = folder / name
    dst.write_text(text, encoding="utf-8")
    return str(dst)


def shown_image(folder: Path | None, image: np.ndarray) -> np.ndarray | str:
    """An image output (H x W x 3 uint8) written into `folder` by gradio's own function (a file named by
    its content hash, as gradio would name it in its cache); `folder` None (no stored clip): the array,
    for gradio to cache and sweep."""
    if folder is None:
        return image
    return processing_utils.save_img_array_to_cache(np.asarray(image), cache_dir=str(folder))


def playable(path: str, kind: str, folder: Path) -> str:
    """A video or audio file the browser can play: `path` itself, or gradio's conversion written into `folder`."""
    if not processing_utils.ffmpeg_installed():
        return path
    if kind == "video" and not processing_utils.video_is_playable(path):
        return processing_utils.convert_video_to_playable_mp4(path, cache_dir=str(folder))
    if kind == "audio" and not processing_utils.audio_is_playable(path):
        return processing_utils.convert_audio_to_playable(path, cache_dir=str(folder))
    return path


def safe_filename(text: str, default: str = "file") -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:60]
    return cleaned or default


def softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default
