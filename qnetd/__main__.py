"""python -m qnetd == votemesh-qnetd."""

import sys

from qnetd.launch import main

sys.exit(main())
