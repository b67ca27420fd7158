"""Encoding: ffmpeg's encoders, films cut into segments, WebM parts joined without re-encoding."""
