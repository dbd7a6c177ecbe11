"""A plaintext data key held so that it can be wiped."""

from __future__ import annotations

from typing import NoReturn


class DataKey:
    """A plaintext data key and its wrapped form.

    The plaintext lives in a ``bytearray`` that :meth:`wipe` (also called on
    leaving a ``with`` block and when the object is collected) overwrites
    with zeros. It has no ``repr`` of its secret and refuses to be pickled
    or copied. Python cannot promise more than that: the gRPC runtime and
    ``cryptography`` hold their own transient copies (see ``docs/PYTHON.md``).
    """

    __slots__ = ("_plaintext", "ciphertext_blob", "key", "key_id", "key_version")

    def __init__(
        self, plaintext: bytearray, key: str, key_id: str, key_version: int, ciphertext_blob: bytes
    ) -> None:
        self._plaintext = plaintext
        self.key = key
        self.key_id = key_id
        self.key_version = key_version
        self.ciphertext_blob = ciphertext_blob

    @property
    def plaintext(self) -> bytearray:
        """The key itself (not a copy): use it, do not keep it."""
        if len(self._plaintext) == 0:
            raise ValueError("this data key was wiped")
        return self._plaintext

    def wipe(self) -> None:
        """Overwrites the plaintext with zeros and forgets it."""
        for i in range(len(self._plaintext)):
            self._plaintext[i] = 0
        del self._plaintext[:]

    def __enter__(self) -> DataKey:
        return self

    def __exit__(self, *exc: object) -> None:
        self.wipe()

    def __del__(self) -> None:
        try:
            self.wipe()
        except AttributeError:
            pass

    def __repr__(self) -> str:
        return f"DataKey(key={self.key!r}, key_version={self.key_version}, plaintext=<redacted>)"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a data key cannot be pickled")

    def __copy__(self) -> NoReturn:
        raise TypeError("a data key cannot be copied")

    def __deepcopy__(self, memo: object) -> NoReturn:
        raise TypeError("a data key cannot be copied")
