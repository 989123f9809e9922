"""Data sets for the benchmarks: the built-in multi-vendor emoji set (from the npm
registry) and the standard CUB-200-2011, Cars196 and Stanford Online Products."""
