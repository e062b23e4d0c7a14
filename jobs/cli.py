"""The `rdtf` command line: one entry point for every job (preprocess, train, sample, demo), for looking into
datasets (query, search, stats) and for running jobs on a Ray cluster (submit, jobs, launch)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib.metadata import version
from pathlib import Path

from rdtf.jobs.console import quiet_libraries
from rdtf.jobs.demo import add_demo_parser
from rdtf.jobs.eval import add_eval_parser
from rdtf.jobs.export import add_export_parser
from rdtf.jobs.launch import add_launch_parser
from rdtf.jobs.preprocess import add_preprocess_parser
from rdtf.jobs.query import add_query_parser
from rdtf.jobs.ray_jobs import ClusterError, add_jobs_parser
from rdtf.jobs.sample import add_sample_parser
from rdtf.jobs.search import add_search_parser
from rdtf.jobs.search_index import SearchError
from rdtf.jobs.stats import add_stats_parser
from rdtf.jobs.submit import add_submit_parser
from rdtf.jobs.train import add_train_parser
from rdtf.pipeline.discover import InputError
from rdtf.pipeline.lock import OutputLockedError
from rdtf.schemas.config import ConfigError
from rdtf.schemas.layout import UnsafeURIError
from rdtf.schemas.query import QueryError
from rdtf.schemas.reader import SchemaVersionError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rdtf",
        description="Curate animated-sticker datasets and train sticker generators (RDTF, arXiv 2503.17735).",
    )
    parser.add_argument("--version", action="version", version=f"rdtf {version('rdtf')}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what every step does")
    # The deepspeed launcher puts --local_rank=N before the command; the trainer reads LOCAL_RANK from the environment.
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_preprocess_parser(commands)
    add_train_parser(commands)
    add_sample_parser(commands)
    add_eval_parser(commands)
    add_export_parser(commands)
    add_query_parser(commands)
    add_search_parser(commands)
    add_stats_parser(commands)
    add_demo_parser(commands)
    add_submit_parser(commands)
    add_jobs_parser(commands)
    add_launch_parser(commands)
    _verbose_after_commands(parser)
    return parser


def _verbose_after_commands(parser: argparse.ArgumentParser) -> None:
    """-v after a command too (`rdtf stats DS -v`), not only before it; absent there, the one before stands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                command.add_argument(
                    "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log what every step does"
                )
                _verbose_after_commands(command)


def use_project_extension_dir() -> None:
    """DeepSpeed builds its C++ ops on first use under TORCH_EXTENSIONS_DIR (by default ~/.cache/torch_extensions,
    shared by every project and torch version). Run from a checkout, keep them in its .torch_extensions/, where
    `make install` prebuilds them; a value the user set wins."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file():
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(checkout / ".torch_extensions"))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    use_project_extension_dir()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s"
    )
    if not args.verbose:
        quiet_libraries()
    try:
        return args.run(args)
    except (
        ConfigError,
        InputError,
        SchemaVersionError,
        FileNotFoundError,
        OutputLockedError,
        UnsafeURIError,
        QueryError,
        SearchError,
        ClusterError,
    ) as error:  # the user's to fix
        print(f"rdtf {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
