"""The README's Python example, as a user would run it: its code block,
unchanged, in a fresh interpreter of the test virtualenv (where
``pip install ./clients/python`` put the package), against a real dev
daemon with the two keys the README tells an admin to create."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[3] / "README.md"


def test_the_readme_python_example_runs(dev) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) == 1, "the README has one Python example"
    dev.create_key("patient-records")
    dev.create_key("patients-index", "--kind", "hmac")
    r = subprocess.run([sys.executable, "-c", blocks[0]], env=dev.env, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    sealed_len, field_len, index = r.stdout.split()
    assert int(field_len) == 52 + len(b"MRN-0042") and len(index) == 8
    assert int(sealed_len) > 56 + 19
