"""Suite-wide fixtures.

Each XLA CPU executable maps its code into memory; a whole-suite run compiles thousands of
them, and with every jit cache kept alive the process nears the kernel's per-process map
limit (``vm.max_map_count``, 65,530 by default: measured 60,770 maps at 75 % of the suite),
where LLVM's next allocation fails and the process segfaults inside a compile. Dropping
the compiled programs after each test module keeps the count at one module's worth.
"""

import gc

import jax
import pytest


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    yield
    jax.clear_caches()
    gc.collect()
