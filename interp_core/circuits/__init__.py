"""Circuit discovery on a graph over the suite's sites, for ViTs, CNNs and policy networks.

- :mod:`.graph` — nodes (ViT embed, heads, MLPs, logits; sequential layers or unit / channel groups;
  a recurrent policy's observations and ``memory.h`` over time) and edges, with a forward in which any
  set of edges is patched (:func:`build_graph`);
- :mod:`.scoring` — edge attribution patching (:func:`eap`), EAP with integrated gradients
  (:func:`eap_ig`), exact per-edge patching (:func:`edge_patching`), node attribution;
- :mod:`.prune` — ACDC greedy pruning (:func:`acdc`) and top-k with exact verification (:func:`top_k`);
- :mod:`.faithfulness` — faithfulness, completeness, minimality and the faithfulness curve against random
  circuits of equal size;
- :mod:`.scrubbing` — causal scrubbing of a hypothesis (:func:`causal_scrubbing`);
- :mod:`.circuit` — the :class:`Circuit` result (JSON, figure, run restricted to the circuit).

>>> from interp_core.circuits import acdc, eap
>>> scores = eap(vit, clean, corrupted, metric=logit_diff(3, 8))
>>> circuit = acdc(vit, clean, corrupted, metric=logit_diff(3, 8), threshold=0.02)
>>> circuit.save("circuit.json"); circuit.plot()
"""

from .circuit import Circuit
from .faithfulness import FaithfulnessCurve, completeness, faithfulness, faithfulness_curve, minimality
from .graph import CircuitGraph, Node, SequentialGraph, ViTGraph, build_graph
from .prune import acdc, top_k
from .recurrent import RecurrentGraph
from .scoring import EdgeScores, eap, eap_ig, edge_patching, node_attribution
from .scrubbing import ScrubbingResult, causal_scrubbing

__all__ = ["Circuit", "CircuitGraph", "Node", "SequentialGraph", "RecurrentGraph", "ViTGraph", "build_graph",
           "EdgeScores", "eap", "eap_ig", "edge_patching", "node_attribution", "acdc", "top_k", "faithfulness",
           "completeness", "minimality", "faithfulness_curve", "FaithfulnessCurve", "causal_scrubbing",
           "ScrubbingResult"]
