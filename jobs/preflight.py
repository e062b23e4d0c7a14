"""Before a submitted job's work: every alive node of the Ray cluster reads the inputs and shares the output with the
driver, or the job stops with a message naming the node and the path. Without it, an output on a node's own disk
(not shared) ends, after all the decoding, in the pipeline's accounting check.

How: the driver writes a token file into the output; one task pinned to each node (0 CPUs: it never waits behind
the work) checks that the inputs exist there, reads the token back (a node-local output has none, or another) and
writes a file of its own, which the driver then must see.

Run by `rdtf submit` jobs before `rdtf preprocess`, and by `rdtf launch train --backend ray` jobs before training
(the dataset as the input, the run folder as the output): `python -m rdtf.jobs.preflight INPUT... --out OUT`.
"""

from __future__ import annotations

import argparse
import sys
import uuid

import pyarrow.fs as pafs

from rdtf.schemas.layout import DatasetLayout, resolve

PREFLIGHT_FILE = "_preflight"  # prefix of the files this check writes into the output and removes


def _input_base(uri: str) -> str:
    """The part of a path or glob that must exist: everything before the first component with a wildcard."""
    parts = uri.split("/")
    for i, part in enumerate(parts):
        if any(c in part for c in "*?["):
            return "/".join(parts[:i]) or "/"
    return uri


def check_node(inputs: list[str], out: str, token: str, node: str) -> list[str]:
    """What this node cannot do: each problem names the path."""
    problems = []
    for uri in inputs:
        base = _input_base(uri)
        try:
            fs, path = resolve(base)
            if fs.get_file_info(path).type == pafs.FileType.NotFound:
                problems.append(f"cannot read {uri}: {base} does not exist there")
        except Exception as error:  # credentials, network, permissions: whatever the filesystem says
            problems.append(f"cannot read {uri}: {error}")
    layout = DatasetLayout.at(out)
    try:
        with layout.fs.open_input_stream(f"{layout.root}/{PREFLIGHT_FILE}-{token}") as f:
            shared = f.read().decode() == token
    except Exception:
        shared = False
    if not shared:
        problems.append(
            f"cannot see what the driver wrote into {out}: the output must be on storage every node shares "
            "(a shared filesystem mounted at the same path, or an object-store URI)"
        )
        return problems
    try:
        with layout.fs.open_output_stream(f"{layout.root}/{PREFLIGHT_FILE}-{token}-{node}") as f:
            f.write(token.encode())
    except Exception as error:
        problems.append(f"cannot write into {out}: {error}")
    return problems


def preflight(inputs: list[str], out: str) -> list[str]:
    """Problems on any alive node, each as `node IP (node id): problem`; run in a driver connected to Ray."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    layout = DatasetLayout.at(out)
    token = uuid.uuid4().hex
    marker = f"{layout.root}/{PREFLIGHT_FILE}-{token}"
    try:
        layout.fs.create_dir(layout.root, recursive=True)
        with layout.fs.open_output_stream(marker) as f:
            f.write(token.encode())
    except Exception as error:
        head = ray.util.get_node_ip_address()
        return [f"node {head} (the head, where the job's driver runs): cannot write into {out}: {error}"]
    nodes = [n for n in ray.nodes() if n["Alive"]]
    task = ray.remote(num_cpus=0)(check_node)
    try:
        pending = [
            task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                inputs, out, token, n["NodeID"]
            )
            for n in nodes
        ]
        problems = []
        for node, found in zip(nodes, ray.get(pending), strict=True):
            name = f"node {node['NodeManagerAddress']} ({node['NodeID'][:12]})"
            if not found and layout.fs.get_file_info(f"{marker}-{node['NodeID']}").type != pafs.FileType.File:
                found = [f"wrote into {out}, but the driver does not see it there: the output is not shared"]
            problems += [f"{name}: {problem}" for problem in found]
        return problems
    finally:
        selector = pafs.FileSelector(layout.root)
        for info in layout.fs.get_file_info(selector):
            if info.base_name.startswith(f"{PREFLIGHT_FILE}-{token}"):
                layout.fs.delete_file(info.path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rdtf.jobs.preflight")
    parser.add_argument("inputs", nargs="+")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    import ray

    ray.init(address="auto", logging_level="ERROR")  # the cluster of this job (RAY_ADDRESS)
    problems = preflight(args.inputs, args.out)
    ray.shutdown()
    if problems:
        print("rdtf preflight: error: not every node can do this job's I/O:", file=sys.stderr)
        print("\n".join(f"  {p}" for p in problems), file=sys.stderr)
        return 2
    print(f"preflight: every node reads the inputs and shares {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
