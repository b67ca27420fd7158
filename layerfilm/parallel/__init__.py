"""Where work runs: the engines (local processes, Dask), threads, worker processes and signals."""
