"""Which object implements which decision algorithm: the table the arbitration core consults.

Owns only the mapping from the wire code (reference 2.3) to a stateless algorithm object; all
algorithm state lives in `Cluster.algo` / `ClientState.algo`. No clock, sockets or logging.
"""

from __future__ import annotations

from typing import Final

from proto.qnetd_enums import DecisionAlgorithm
from qnetd.algorithms.ffsplit import Ffsplit
from qnetd.algorithms.lms import Lms
from qnetd.algorithms.test import TestAlgorithm
from qnetd.algorithms.two_node_lms import TwoNodeLms
from qnetd.model import Algorithm

ALGORITHMS: Final[dict[DecisionAlgorithm, Algorithm]] = {
    DecisionAlgorithm.TEST: TestAlgorithm(),
    DecisionAlgorithm.FFSPLIT: Ffsplit(),
    DecisionAlgorithm.TWO_NODE_LMS: TwoNodeLms(),
    DecisionAlgorithm.LMS: Lms(),
}
"""Every algorithm qnetd 3.0.3 supports, keyed by its wire code (advertised as [0, 1, 2, 3])."""
