"""Core: the rules and shapes everything else shares, with no I/O.

Settings, the error tree, key and channel names, audience and tray rules, the
StoryItem shape, media URL signing, event and frame shapes, token checks.
Imports nothing else from `server`; type-checked with `mypy --strict`.
"""
