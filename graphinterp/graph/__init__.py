"""A model as a weighted graph: layers, tracing, DAGs, state_dicts, coverage, and the one loader."""
