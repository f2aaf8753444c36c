"""The viewer: ``convscope serve`` (FastAPI, in the ``web`` extra) and ``convscope export``
(a static site of the same pages)."""
