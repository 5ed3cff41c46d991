"""Data sets (embedded and hub loaders), partitioners and the federated split."""

from simulator.data import embedded, hub  # noqa: F401  (register the data sets)
from simulator.data.base import DATASETS, ArrayDataset, from_numpy
from simulator.data.federated import FederatedData, build_federated_data, stratified_split
from simulator.data.partition import PARTITIONERS, partition_indices

__all__ = [
    "DATASETS",
    "PARTITIONERS",
    "ArrayDataset",
    "FederatedData",
    "build_federated_data",
    "from_numpy",
    "partition_indices",
    "stratified_split",
]
