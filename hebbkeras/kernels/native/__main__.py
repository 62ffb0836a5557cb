"""`python -m hebbkeras.kernels.native`: builds the native kernels now and prints the library's path."""

import sys

from hebbkeras.kernels.native import BuildError, build

try:
    print(build(verbose=True))
except BuildError as e:
    sys.exit(f"error: {e}")
