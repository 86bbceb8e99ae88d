"""Byte formats shared by layers: pure encoders and decoders, no fsspec and no paths.

* :mod:`aiofs.codecs.zstd_seekable`: the Compress layer's stored objects (zstd seekable
  frames with a seek table; whole-stream gzip for compatibility).
"""
