"""``keep_freed_memory``: large tensors come from the heap (no fresh mmap per allocation).

Measured with glibc's own counter (``mallinfo2().hblkhd``: bytes held in mmapped blocks) in
fresh processes, since the setting is per process: a 64 MiB tensor is an mmapped block by
default and is not one once the thresholds are raised; ``TOKENMDP_KEEP_FREED_MEMORY=0``
leaves malloc alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from agents.harness.allocator import _glibc

PROBE = """
import ctypes, json, torch
from agents.harness.allocator import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
applied = keep_freed_memory()
before = libc.mallinfo2().hblkhd
x = torch.ones(16 << 20)  # 64 MiB of fp32
print(json.dumps({"applied": applied, "mmapped": libc.mallinfo2().hblkhd - before}))
"""


def probe(**env) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         env={**os.environ, **env}, check=True, cwd=os.getcwd())  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    _glibc() is None or not hasattr(_glibc(), "mallinfo2"), reason="needs glibc >= 2.33"
)
def test_large_tensors_come_from_the_heap_unless_opted_out():
    kept = probe(TOKENMDP_KEEP_FREED_MEMORY="1")
    default = probe(TOKENMDP_KEEP_FREED_MEMORY="0")
    assert kept == {"applied": True, "mmapped": 0}
    assert default["applied"] is False and default["mmapped"] >= 64 << 20
