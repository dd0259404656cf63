"""The translator as a Ray Serve deployment, and the client that fronts call it through.

- ``runtime.cluster.wire``: what crosses between a front and the deployment, checked on both
  sides (ray-free, torch-free).
- ``runtime.cluster.deployment``: the Serve application (``S2ITranslator``, ``build_app``); it
  imports ``ray.serve``, so only replicas and ``serve run`` load it.
- ``runtime.cluster.client``: ``ClusterTranslator``, a ``runtime.model.translator.Translator``
  (as the local backends are) that sends one call per batch through a ``DeploymentHandle``
  held by a bridge process.

docs/SCALING.md has the topology, the commands and what scales.
"""

from runtime.cluster.client import ClusterTranslator, ClusterUnavailable, open_cluster_translator
from runtime.cluster.wire import DEFAULT_APP, parse_cluster

__all__ = ["DEFAULT_APP", "ClusterTranslator", "ClusterUnavailable", "open_cluster_translator",
           "parse_cluster"]
