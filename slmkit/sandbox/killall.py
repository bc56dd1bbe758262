"""SIGKILL every process of the calling uid: ``kill(-1)`` is atomic, so a fork bomb can't outrun it.

Stdlib only: the evaluator runs this source as the sandbox uid (``python -I -S -c <source>``), the
one way to issue ``kill(-1)`` as that uid without hitting anything else (as root it would hit all).
"""

import os

try:
    os.kill(-1, 9)
except OSError:
    pass
