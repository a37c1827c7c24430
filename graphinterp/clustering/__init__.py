"""Clustering a graph and measuring it: BSGC, network-wide and DAG clusterings, clusterability E, the shuffle null, transformer MLP blocks."""
