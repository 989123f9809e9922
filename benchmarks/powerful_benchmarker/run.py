"""Run a powerful-benchmarker experiment with pml-sft, like powerful-benchmarker's
own run.py, using the config folder shipped beside this script by default.

    python benchmarks/powerful_benchmarker/run.py --experiment_name cub_sft \\
        --dataset_root ~/datasets --root_experiment_folder ~/experiments \\
        --config_loss_and_miners multisimilarity_sft

Config options merge as in powerful-benchmarker: ``--config_general [default,cpu_tiny]``
loads both files in order, and ``--trainer~OVERRIDE~ {...}`` replaces a whole entry.
"""

import argparse
import logging
import sys
from pathlib import Path

CONFIG_FOLDER = str(Path(__file__).resolve().parent / "configs")


def make_runner(
    dataset_root="datasets",
    root_experiment_folder="experiments",
    root_config_folder=CONFIG_FOLDER,
    pytorch_home=None,
    global_db_path=None,
    merge_argparse_when_resuming=False,
):
    """A powerful-benchmarker SingleExperimentRunner with pml-sft registered."""
    from powerful_benchmarker.runners.single_experiment_runner import (
        SingleExperimentRunner,
    )

    from pml_sft.integrations import powerful_benchmarker as pb_sft

    pb_sft.apply_compatibility_fixes()  # before the runner registers PML's classes
    runner = SingleExperimentRunner(
        dataset_root=dataset_root,
        root_experiment_folder=root_experiment_folder,
        root_config_folder=root_config_folder,
        pytorch_home=pytorch_home,
        global_db_path=global_db_path,
        merge_argparse_when_resuming=merge_argparse_when_resuming,
    )
    return pb_sft.register(runner)


def main(argv=None):
    logging.getLogger().setLevel(logging.INFO)
    parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
    parser.add_argument("--pytorch_home", default=None)
    parser.add_argument("--dataset_root", default="datasets")
    parser.add_argument("--root_experiment_folder", default="experiments")
    parser.add_argument("--global_db_path", default=None)
    parser.add_argument("--merge_argparse_when_resuming", action="store_true")
    parser.add_argument("--root_config_folder", default=CONFIG_FOLDER)
    args, rest = parser.parse_known_args(argv)
    # powerful-benchmarker's YamlReader reads --experiment_name and --config_* from sys.argv
    sys.argv = [sys.argv[0]] + rest
    runner = make_runner(**vars(args))
    return runner.run()


if __name__ == "__main__":
    main()
