"""Media: an uploaded or recorded file becomes a stored photo or video.

Content sniffing, limits, decode within a memory budget, EXIF orientation,
downscale and re-encode (Pillow for images, PyAV for video), posters, and the
worker pool that runs it off the event loop.
"""
