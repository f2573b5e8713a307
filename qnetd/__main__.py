"""python -m qnetd == votemesh-qnetd."""

import sys

from qnetd.cli import main

sys.exit(main())
