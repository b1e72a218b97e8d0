"""Command line: `python -m ftkit doctor | prepare | profiles | bench notebooks | record SWEEP | student DIR |
train TASK` (also `ftkit`)."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:                   # its own flags: python -m ftkit train --help
        from .recipes import main as train_main

        return train_main(argv[1:])
    parser = argparse.ArgumentParser(prog="ftkit", description="helpers for the fine-tuning course")
    sub = parser.add_subparsers(dest="command", required=True)
    doctor = sub.add_parser("doctor", help="check Python, libraries, device, RAM, disk, Hub and models")
    doctor.add_argument("--no-load", action="store_true", help="do not load the packaged encoder")
    prepare = sub.add_parser("prepare", help="convert the packaged GGUF causal LM to the safetensors cache and "
                             "warm up the packaged encoder's masked-LM head (once each)")
    prepare.add_argument("--force", action="store_true", help="build both caches again even if they exist")
    sub.add_parser("profiles", help="print the run-profile table")
    sub.add_parser("train", help="a course recipe as a script: classify | ner | mlm | sft (see train --help)")
    bench = sub.add_parser("bench", help="benchmarks (not tests): wall time and peak memory")
    bench.add_argument("what", choices=["notebooks"])
    bench.add_argument("names", nargs="*", help="notebook files (default: every notebook in course/)")
    bench.add_argument("--profile", default="cpu", help="the profile the notebooks run in (default: cpu)")
    bench.add_argument("--memory-limit", help="tell the notebooks they have this much memory, e.g. 2G")
    bench.add_argument("--out", default="benchmarks/notebooks", help="writes OUT.md and OUT.json")
    record = sub.add_parser("record", help="run one registered sweep in full and write its recording "
                            "(ftkit/recorded/NAME.PROFILE.json), which the notebooks draw their live points on")
    record.add_argument("name", help="a sweep registered in ftkit.results.SWEEPS")
    record.add_argument("--profile", default="cpu", help="the profile to record it in (default: cpu)")
    record.add_argument("--memory-limit", help="run as on a machine with this much memory, e.g. 2G")
    record.add_argument("--out", help="the folder to write to (default: the package's ftkit/recorded/)")
    student = sub.add_parser("student", help="write the student copies of the course notebooks: every solution "
                             "region replaced by `...  # your code here`, outputs cleared")
    student.add_argument("out_dir", help="the folder to write them to (the committed copies: course/student)")
    student.add_argument("--course", default="course", help="the folder of the course notebooks (default: course)")
    student.add_argument("--fold", action="store_true", help="first fold the solution cells of the course "
                         "notebooks in place (JupyterLab and Colab), for a notebook whose new exercise is not folded")
    args = parser.parse_args(argv)
    if args.command == "student":               # files only: no Hub probe, no model
        return write_student_copies(args)

    import ftkit  # noqa: F401  (probes the Hub and sets offline mode first)

    if args.command == "doctor":
        from .doctor import run

        return run(load_models=not args.no_load)
    if args.command == "prepare":
        from .env import quiet_logs
        from .models import prepare_causal, prepare_mlm_head

        quiet_logs()
        print(prepare_causal(force=args.force))
        print(prepare_mlm_head(force=args.force))
        return 0
    if args.command == "bench":
        from .bench import bench_notebooks
        from .env import get_profile

        get_profile(args.profile)       # an unknown profile fails before any notebook starts
        rows = bench_notebooks(args.names, args.profile, args.memory_limit, args.out)
        return 1 if any(r["error"] for r in rows) else 0
    if args.command == "record":
        return record_sweep(args)
    from .env import PROFILES

    for p in PROFILES.values():
        print(f"{p.name:<6} models={p.models} train={p.train_size} eval={p.eval_size} epochs={p.epochs} "
              f"max_steps={p.max_steps} batch={p.batch_size} max_length={p.max_length} lr={p.learning_rate}")
    return 0


def record_sweep(args) -> int:
    import os

    from . import results
    from .env import get_profile, setup, size_mb

    results.get_sweep(args.name)     # an unknown sweep, profile or limit fails before anything trains
    get_profile(args.profile)
    if args.memory_limit:
        size_mb(args.memory_limit, "--memory-limit")
        os.environ["FTKIT_MEMORY_LIMIT"] = args.memory_limit
    cfg = setup(args.profile, live=True)
    path = results.record(args.name, cfg, args.out)
    recording = results.load_recorded(args.name, results.code_settings(args.name, cfg), cfg, path.parent)
    print(f"wrote {path}: {recording.summary()}")
    return 0


def write_student_copies(args) -> int:
    from pathlib import Path

    from .exercises import notebooks

    try:
        if args.fold:
            for path in sorted(Path(args.course).glob("*.ipynb")):
                if notebooks.fold_solution_cells(path):
                    print(f"folded the solution cells of {path}")
        written = notebooks.write_student_copies(args.course, args.out_dir)
    except ValueError as exc:
        print(f"ftkit student: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} student copies to {args.out_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
