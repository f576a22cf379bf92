"""Stories server: short photo and video segments that disappear after their lifetime.

Layer packages, each importing only the ones below it (checked by import-linter,
`[tool.importlinter]` in pyproject.toml; drawn in docs/architecture.md):

    app, services, cli, seed   composition: build the parts, run them
    api      HTTP and /ws adapters: request checks, forms, responses
    push     live delivery: broker (pub/sub), hub, connections, drain
    live     WebRTC capture, recording, and the capture -> item step
    stories  the domain: write, read, seen, shares, expiry sweep
    media    content checks and normalisation of photos and videos
    store    Redis access, scripts, users, graph, files, the event bus
    core     pure rules and shapes: settings, errors, keys, audience, tray
"""

__version__ = "0.1.0"
