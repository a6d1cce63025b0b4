"""One real multi-node Ray cluster for the whole test session (`ray.cluster_utils.Cluster`):
a head and a second node that declares a GPU, each with a custom resource naming it, one CPU
each so it fits a 2-core machine. Starting it takes tens of seconds on a loaded box, so every
test that needs Ray shares it; tests that add nodes remove them again."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest


@dataclass
class RayCluster:
    cluster: Any  # ray.cluster_utils.Cluster
    address: str
    head_id: str
    gpu_id: str


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    import ray  # the test extra installs it: a missing Ray is a failure here, not a skip
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        connect=True,
        head_node_args={
            "num_cpus": 1,
            "resources": {"head": 1},
            "include_dashboard": False,
            # A removed node is declared dead after five failed health checks a second apart,
            # not Ray's default fifteen seconds: the node-removal test waits for it.
            "_system_config": {
                "health_check_initial_delay_ms": 1000,
                "health_check_period_ms": 1000,
                "health_check_failure_threshold": 5,
            },
        },
    )
    gpu = cluster.add_node(num_cpus=1, num_gpus=1, resources={"gpu_node": 1})
    cluster.wait_for_nodes(timeout=120)
    try:
        yield RayCluster(cluster, cluster.address, cluster.head_node.node_id, gpu.node_id)
    finally:
        ray.shutdown()
        cluster.shutdown()
