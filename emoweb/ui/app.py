"""The Blocks assembly: a profile bar above four tabs (Predict, Label, Compare, Models).

`build_app(settings)` returns the queued `gr.Blocks`; `app.py` launches it. Every action is a named
API endpoint (see `API_NAMES`), so `gradio_client` drives the same code as the browser.
"""
import os

import gradio as gr

from emoweb.config import Settings, get_settings
from emoweb.errors import EmoWebError
from emoweb.ui import common as C
from emoweb.ui import compare, label, models_tab, predict

API_NAMES = (
    "profiles", "create_profile", "predict", "queue", "show_clip", "label", "undo", "rebuild_cache", "export_labels",
    "import_labels", "delete_clip", "delete_profile", "delete_my_data", "compare_clip", "compare_set", "models_info",
)


def build_app(settings: Settings | None = None, context: C.AppContext | None = None, model_concurrency: int | None = None,
              default_concurrency: int | None = None, max_queue: int | None = None) -> gr.Blocks:
    """The whole app. Models load lazily, once per process (the context holds them); work that runs
    models shares one concurrency slot pool (`EMOWEB_CONCURRENCY`, default 1), other actions up to
    `EMOWEB_UI_CONCURRENCY` (default 4) at a time."""
    settings = settings or get_settings()
    # gradio's upload folder, read as each component is made, is the settings' one: uploads and what is
    # shown of a clip stay in the data dir, where deleting the clip finds them (`services.shown`, `uploads`)
    os.environ.setdefault("GRADIO_TEMP_DIR", str(settings.upload_dir))
    ctx = context or C.AppContext(settings)
    model_concurrency = model_concurrency or C.env_int("EMOWEB_CONCURRENCY", 1)
    default_concurrency = default_concurrency or C.env_int("EMOWEB_UI_CONCURRENCY", 4)
    heavy = {"concurrency_id": "models", "concurrency_limit": model_concurrency}
    if settings.public and settings.visitors:
        ctx.start_expiry()  # on every request too (AppContext.owner)

    with gr.Blocks(title="EmoWeb", analytics_enabled=False, delete_cache=C.UPLOAD_SWEEP) as demo:
        gr.Markdown(
            "# EmoWeb\nWhat feeling a short clip shows, from the face, the voice and the words. Everything runs on this "
            "machine; nothing leaves it."
        )
        if settings.public and settings.visitors:
            from emoweb.services.visitors import privacy_notice

            gr.Markdown(privacy_notice(settings), elem_id="privacy-notice")
        with gr.Row(equal_height=True):
            profile_dd = gr.Dropdown(label="Profile (a child or a setting)", choices=[(C.NO_PROFILE, C.NO_PROFILE)],
                                     value=C.NO_PROFILE, elem_id="profile", scale=4, min_width=200,
                                     allow_custom_value=True)  # API clients name a profile by id or name
            refresh_btn = gr.Button("↻ list", elem_id="profiles-refresh", scale=0, min_width=70)  # says what it refreshes
        with gr.Accordion("New profile", open=False, elem_id="new-profile-box") as new_box:
            with gr.Row(equal_height=True):
                new_name = gr.Textbox(label="Name", elem_id="new-profile", scale=2, min_width=160)
                new_labels = gr.Textbox(label="Its labels (comma-separated; empty: the seven emotions)", elem_id="new-labels",
                                        scale=3, min_width=200)
                create_btn = gr.Button("Create profile", elem_id="create-profile", scale=1, min_width=120)
        profile_status = gr.Markdown("", elem_id="profile-status")
        profile_error = C.error_box("profile-error")
        with gr.Accordion("Delete everything of mine", open=False, visible=settings.public, elem_id="delete-mine-box"):
            with gr.Row():
                confirm_mine = gr.Checkbox(label="yes, delete all my profiles, clips, labels and caches now", value=False,
                                           elem_id="delete-mine-confirm")
                delete_mine_btn = gr.Button("Delete everything of mine", variant="stop", elem_id="delete-mine")

        with gr.Tabs(elem_id="tabs"):
            p = predict.build(ctx, profile_dd, heavy)
            lab = label.build(ctx, profile_dd, heavy)
            compare.build(ctx, profile_dd, heavy)
            m = models_tab.build(ctx, profile_dd, heavy)

        @C.user_errors
        def profiles(current, request: gr.Request):
            """The profiles this person may see: their own (all of them in a shared deployment). The choice stays as it
            was; a new page starts at "don't save", never at a profile: a clip analysed before choosing must not be
            stored in whichever child's profile came first."""
            choices = ctx.profile_choices(request)
            ids = [c[1] for c in choices]
            value = str(current) if current is not None and str(current) in ids else C.NO_PROFILE
            return gr.update(choices=[(C.NO_PROFILE, C.NO_PROFILE), *choices], value=value)

        @C.user_errors
        def create_profile(name, labels_text, request: gr.Request):
            """Create a profile owned by the logged-in caregiver (label set: comma-separated, default the seven emotions)."""
            name = (name or "").strip()
            if not name:
                raise EmoWebError("type a name for the new profile")
            labels = [x.strip() for x in (labels_text or "").split(",") if x.strip()] or None
            info = ctx.service.create_profile(name, labels, owner=ctx.owner(request))
            choices = ctx.profile_choices(request)
            return (gr.update(choices=[(C.NO_PROFILE, C.NO_PROFILE), *choices], value=str(info.id)), "", "",
                    f"Created profile **{C.esc(info.name)}** (id {info.id}) with labels: {', '.join(C.esc(x) for x in info.labels)}",
                    gr.update(open=False))

        @C.user_errors
        def delete_my_data(confirm, request: gr.Request):
            """Delete every profile of the person asking (a visitor's browser, or a logged-in caregiver)."""
            owner = ctx.owner(request)
            if owner is None:
                raise EmoWebError("this deployment is one shared family: delete profiles one by one in the Label tab")
            if not confirm:
                raise EmoWebError("tick the box to confirm deleting everything of yours")
            r = ctx.visitors.delete_owner(owner)
            return (gr.update(choices=[(C.NO_PROFILE, C.NO_PROFILE)], value=C.NO_PROFILE), False,
                    f"Deleted everything of yours: {r['profiles']} profile(s), {r['clips']} clip(s).")

        def queue_after(event, current=None):
            return event.then(lab["load_queue"], [profile_dd, current or lab["clip_dd"]], lab["queue_outputs"],
                              api_visibility="undocumented", **lab["queue_shown"]).then(
                lab["show_clip"], [profile_dd, lab["clip_dd"]], lab["clip_outputs"], api_visibility="undocumented")

        # the profile choice, the name boxes and the confirmation box never carry an action's progress or error
        # badge (it would lie over them: see the Label tab's wiring); the status line under them does
        C.report_errors(refresh_btn.click(profiles, [profile_dd], profile_dd, api_name="profiles",
                                          show_progress_on=[profile_status]), profile_error)
        C.report_errors(create_btn.click(create_profile, [new_name, new_labels], [profile_dd, new_name, new_labels, profile_status,
                                                                                  new_box], api_name="create_profile",
                                         show_progress_on=[profile_status]), profile_error, stale=[profile_status])
        C.report_errors(delete_mine_btn.click(delete_my_data, [confirm_mine], [profile_dd, confirm_mine, profile_status],
                                              api_name="delete_my_data", show_progress_on=[profile_status]), profile_error,
                        stale=[profile_status])
        changed = profile_dd.change(m["fn"], [profile_dd], m["outputs"], api_visibility="undocumented")
        queue_after(changed)
        queue_after(p["event"], p["clip_out"])
        lab["deleted"].change(p["forget"], [lab["deleted"], p["analysed"]], p["forget_outputs"], api_visibility="private", queue=False)
        demo.load(profiles, [profile_dd], profile_dd, api_visibility="undocumented")
        demo.load(None, None, None, js=label.KEYBOARD_JS)
    demo.queue(default_concurrency_limit=default_concurrency, max_size=max_queue or C.env_int("EMOWEB_QUEUE_SIZE", 64))
    demo.emoweb_context = ctx  # type: ignore[attr-defined]  # tests and app.py reach the services through it
    return demo
