"""Video in and out through ffmpeg pipes, one concern per module, in the order a frame meets them:

- ``ffmpeg``: which ffmpeg executable, its child processes (they die with this one), stderr helpers.
- ``probe``: what a media file holds, read from ffmpeg's banner and a packet scan (``probe``, ``PendingProbe``).
- ``decode``: ``FrameReader``, raw BGR frames from an ffmpeg pipe through a bounded queue.
- ``spool``: the output frame sequence, loops included (``output_frames``, ``FrameSpool``, ``loop_index``).
- ``formats``: how the output is encoded: ``EncodeOptions`` (what the user asks), ``plan_output`` -> ``EncodePlan``.
- ``encode``: ``VideoWriter``, raw frames into an ffmpeg that encodes and muxes them, renamed into place when complete.

Frames are streamed: nothing here holds more than a few frames (the spool keeps them on disk).
"""
