"""`python -m hdfpay`: the same as the `hdfpay` command (how `serve --workers` starts its workers)."""

import sys

from hdfpay.cli import main

sys.exit(main())
