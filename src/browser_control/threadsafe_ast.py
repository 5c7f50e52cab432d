"""``ast`` calls that are safe to make from many threads at once.

CPython 3.11 keeps the recursion counter that ``ast.parse`` uses while it builds the Python AST objects in
interpreter-wide state. When a thread is switched out in the middle of that build (a garbage-collection
finalizer that releases the GIL is enough) and another thread parses meanwhile, the first one fails with
``SystemError: AST constructor recursion depth mismatch``. The environment service parses actions on its
event loop and inside BrowserGym's action parser on its worker threads, so it would answer a 500 now and
then under load. Every ``ast`` use of this process goes through :data:`AST_LOCK` instead of relying on a
Python version where the counter is per call.
"""

from __future__ import annotations

import ast
import threading
from typing import Any

# Re-entrant: a finalizer that runs inside a locked parse may itself parse on the same thread.
AST_LOCK = threading.RLock()


def parse_expression(text: str) -> ast.Expression:
    """``ast.parse(text, mode="eval")`` under :data:`AST_LOCK`."""
    with AST_LOCK:
        return ast.parse(text, mode="eval")


def literal_eval(text: str) -> Any:
    """``ast.literal_eval(text)`` under :data:`AST_LOCK`."""
    with AST_LOCK:
        return ast.literal_eval(text)
