"""A wpool kernel in Python (componentize-py): reverses each item's words.

Items that are not UTF-8 fail with a kernel error; the item `raise` raises
an uncaught exception, which aborts the instance (a trap).
"""

import wit_world
from componentize_py_types import Err


class WitWorld(wit_world.WitWorld):
    def map(self, input: bytes) -> bytes:
        try:
            text = input.decode("utf-8")
        except UnicodeDecodeError as e:
            raise Err(f"not UTF-8: {e}")
        if text == "raise":
            raise RuntimeError("uncaught on purpose")
        return " ".join(reversed(text.split(" "))).encode("utf-8")
