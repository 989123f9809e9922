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
import re
import sys
from pathlib import Path

CONFIG_FOLDER = str(Path(__file__).resolve().parent / "configs")

# Config entries that hold one object ({ClassName: params}); the entries of the
# second group hold named objects, one each (models: {trunk: {ClassName: ...}}).
SINGLE_OBJECTS = ("dataset", "trainer", "tester", "split_manager", "sampler")
NAMED_OBJECTS = ("models", "optimizers", "loss_funcs", "mining_funcs")
OVERRIDE = "~OVERRIDE~"


def check_config_merges(argv, root_config_folder=CONFIG_FOLDER):
    """Refuse a ``--config_<folder> [a,b,...]`` list whose files put two different
    classes under one entry (powerful-benchmarker merges them into one dict and
    then fails with "too many values to unpack"), naming the entry and the files.
    An entry overridden (``~OVERRIDE~``) in a later file or on the command line is
    replaced, not merged."""
    import yaml

    overridden = {a[2:].split(OVERRIDE)[0] for a in argv if OVERRIDE in a}
    pairs = [a.split("=", 1) for a in argv if a.startswith("--config_") and "=" in a]
    for flag, value in list(zip(argv, argv[1:])) + pairs:
        if not flag.startswith("--config_") or flag == "--config_foldernames":
            continue
        if value.startswith("--"):  # (a flag given as --config_x=[...])
            continue
        names = [n.strip() for n in re.sub(r"[\[\]]", "", value).split(",") if n]
        classes = {}  # entry -> {class name: file}
        for name in names:
            path = Path(root_config_folder) / flag[2:] / f"{name}.yaml"
            if not path.exists():
                continue  # powerful-benchmarker reports it
            config = yaml.safe_load(path.read_text()) or {}
            if not isinstance(config, dict):
                raise ValueError(f"{path} must hold a mapping of config entries")
            for entry, spec in object_specs(config):
                base = entry.replace(OVERRIDE, "")
                if OVERRIDE in entry:
                    classes[base] = {}
                for nested, class_name in class_entries(base, spec):
                    classes.setdefault(nested, {}).setdefault(class_name, path.name)
        for entry, found in classes.items():
            if len(found) > 1 and entry.split(".")[0] not in overridden:
                listed = ", ".join(f"{c} ({f})" for c, f in found.items())
                raise ValueError(
                    f"{flag} [{','.join(names)}]: the entry '{entry}' gets "
                    f"{len(found)} classes, {listed}, which powerful-benchmarker "
                    "would merge into one; list only one of these files, or replace "
                    f"the entry with --{entry.split('.')[0]}{OVERRIDE}"
                )


def class_entries(entry, spec):
    """(entry, class name) for the class of ``spec`` ({ClassName: params}) and, inside
    its params, for every nested object ({param: {ClassName: params}}, e.g. a
    wrapper's inner loss), whose entry is ``entry.param``."""
    for class_name, params in spec.items():
        yield entry, class_name
        for key, value in (params or {}).items() if isinstance(params, dict) else ():
            if (
                isinstance(value, dict)
                and value
                and all(isinstance(k, str) and k[:1].isupper() for k in value)
            ):
                yield from class_entries(f"{entry}.{key}", value)


def object_specs(config):
    """(entry, {ClassName: params}) for the object entries of one config file."""
    for key, value in config.items():
        base = key.replace(OVERRIDE, "")
        if base in SINGLE_OBJECTS and isinstance(value, dict):
            yield key, value
        elif base in NAMED_OBJECTS and isinstance(value, dict):
            for name, spec in value.items():
                if isinstance(spec, dict):
                    yield f"{key}.{name}", spec


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
    check_config_merges(rest, args.root_config_folder)
    # powerful-benchmarker's YamlReader reads --experiment_name and --config_* from sys.argv
    sys.argv = [sys.argv[0]] + rest
    runner = make_runner(**vars(args))
    return runner.run()


if __name__ == "__main__":
    main()
