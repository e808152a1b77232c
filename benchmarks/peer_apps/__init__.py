"""The peer servers' applications. They run inside each peer's own venv (``benchmarks.peer_env``),
never in the project's, and import only ``imgcls.models.core`` (numpy + Pillow) from this repository."""
