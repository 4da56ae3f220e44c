"""Stage1: the isolation layer between the engine (stage0) and the apps (stage2).

(Placeholder: the Stage1 protocol is defined below once the building blocks exist.)
"""

from __future__ import annotations

from ..errors import PypodError


class Stage1Error(PypodError):
    """A stage1 operation failed: the runtime, conmon or the kernel refused."""
