"""``ipx2p studio``: the official ComfyUI frontend served by our own aiohttp server, running graphs through the same
:class:`~ipx2p_standalone.runner.Runner` as ``ipx2p run``.

Modules: :mod:`.app` (configuration, state, ``create_app``, ``run_studio``, ``StudioServer``), :mod:`.routes` (the
HTTP API), :mod:`.prompt_queue` (queue, history, the worker thread), :mod:`.events` (websocket clients, events, preview
frames), :mod:`.files` (view and uploads), :mod:`.userdata` (users, settings, saved workflows) and :mod:`.security`
(path checks, Origin/Host checks, image limits).
"""

from .app import (
    FRONTEND_VERSION,
    PACK_NAME,
    Studio,
    StudioConfig,
    StudioError,
    StudioServer,
    create_app,
    run_studio,
    studio_of,
)

__all__ = ["FRONTEND_VERSION", "PACK_NAME", "Studio", "StudioConfig", "StudioError", "StudioServer", "create_app",
           "run_studio", "studio_of"]
