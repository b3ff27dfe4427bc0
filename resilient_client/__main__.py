"""``python -m resilient_client``: the same command line as the ``resilient-client`` script."""

import sys

from .bench._cli import main

if __name__ == "__main__":
    sys.exit(main())
