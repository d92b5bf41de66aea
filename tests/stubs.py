"""Finding the python-backend stub processes of a served model, for tests that kill them."""

from __future__ import annotations

from pathlib import Path


def stubs_of(repository: Path, model: str) -> list[int]:
    """Pids of python-backend stubs running ``repository/model``."""
    prefix = str(repository / model) + "/"
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) > 8 and argv[0].endswith(b"triton_python_backend_stub") and argv[1].decode().startswith(prefix) \
                and argv[8].decode() != model:  # not the short-lived auto-complete stub
            pids.append(int(entry.name))
    return pids
