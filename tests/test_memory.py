"""release_free_memory gives the heap's free pages back to the OS (where the C library can)."""
import sys

import pytest

from pipelines.memory import release_free_memory


def resident_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_freed_heap_memory_leaves_the_process():
    if not release_free_memory():
        pytest.skip("this C library has no malloc_trim")
    # 3,000 blocks of 64 KB come from the heap (below glibc's threshold for mapping them directly);
    # the last one stays alive, so the heap cannot shrink from its top by itself.
    blocks = [bytearray(64 * 1024) for _ in range(3000)]
    keep = blocks[-1]
    del blocks
    before = resident_mb()
    assert release_free_memory()
    after = resident_mb()
    assert before - after > 100, (before, after)
    assert len(keep) == 64 * 1024
