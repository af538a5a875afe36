"""Every environment variable swiftreg reads, with its default, in one place."""
from __future__ import annotations

import os
from pathlib import Path

#: Where the embedded registry (database, blobs, caches) lives.
SWIFTREG_HOME = Path(os.environ.get("SWIFTREG_HOME", Path.home() / ".swiftreg")).expanduser()

#: A Python interpreter with ms-swift installed (its own venv: ms-swift pins an older peft). Used to
#: produce and load Swift checkpoints with the real ms-swift; unset means "not configured".
SWIFTREG_SWIFT_PYTHON = os.environ.get("SWIFTREG_SWIFT_PYTHON") or None
