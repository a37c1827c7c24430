"""Reports: GraphML / JSON / CSV output, figures, clusterability benchmarks."""
