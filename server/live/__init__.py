"""Live: stories captured in the browser over WebRTC (aiortc).

Offer/answer and ICE, the per-track lanes and timeline, the recorder that
encodes an MP4, and `publish`, which posts a finished recording as an item.
"""
