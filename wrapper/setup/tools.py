"""`ftw tools`: build llama.cpp's own programs from vendor/llama.cpp (wrapper/core/llama_tools.py).

`ftw tools --force` builds again even where a build of this commit is recorded (after a failure
whose cause was fixed, or a change of compiler).
"""

from __future__ import annotations

import sys

from wrapper.core.errors import FtwError
from wrapper.core.llama_tools import build
from wrapper.core.ui import error_console

if __name__ == "__main__":
    try:
        build(force="--force" in sys.argv[1:])
    except FtwError as error:
        error_console.print(f"[red]error:[/red] {error}", soft_wrap=True)
        raise SystemExit(2) from None
