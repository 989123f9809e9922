"""Standard data sets for the benchmarks (CUB-200-2011, Cars196, Stanford Online
Products); the built-in emoji data set lives in :mod:`pml_sft.datasets`."""
