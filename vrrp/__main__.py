"""`python -m vrrp --config FILE` (the same as `duet vrrp`)."""

import sys

from vrrp.cli import main

sys.exit(main(sys.argv[1:]))
