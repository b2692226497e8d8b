"""Workloads for the simulator and benchmarks: trace readers, adapter popularity, arrivals, scaling."""

from chameleon.workload.arrivals import poisson_arrivals, trace_arrivals
from chameleon.workload.classes import WORKLOADS, SyntheticWorkload, make_workload
from chameleon.workload.generate import LengthScale, WorkItem, WorkloadOptions, build_workload
from chameleon.workload.population import PAPER_RANKS, AdapterInfo, AdapterSampler, make_population
from chameleon.workload.traces import TraceError, TraceRecord, read_trace

__all__ = [
    "PAPER_RANKS", "WORKLOADS", "AdapterInfo", "AdapterSampler", "LengthScale", "SyntheticWorkload",
    "TraceError", "TraceRecord", "WorkItem", "WorkloadOptions", "build_workload", "make_population",
    "make_workload", "poisson_arrivals", "read_trace", "trace_arrivals",
]
