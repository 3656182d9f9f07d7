"""`python -m patchflow ...` (and `torchrun ... -m patchflow train ...`): the `patchflow` command."""

import sys

from patchflow.cli import main

if __name__ == "__main__":
    sys.exit(main())
