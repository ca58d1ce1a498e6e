"""The tiered cache: a memory tier with a pluggable eviction policy and a disk tier shared by
every process of the node."""
