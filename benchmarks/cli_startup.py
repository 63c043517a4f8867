"""How long the command lines take to answer ``--help`` and an argument error, and what
they import to do it (issue 21: start-up under 1 s; torch, napari and the encoders only
when a command needs them).

For each command line below, runs it ``--repeat`` times in a fresh interpreter (the
installed console script's interpreter, ``python -c "from ...cli import main; main()"``)
and prints the median and the fastest wall time in seconds, whether it met the 1 s
target, and whether torch, napari, Qt, timm or distributed were imported (a second run
that lists ``sys.modules`` at exit). Then, for ``ghanet --help``, ``python -X importtime``
gives the package modules that cost the most (cumulative import time, ms) and the first
package module that pulled torch in, i.e. the import to defer.

Absolute times depend on the machine and its load (a cold disk cache is slower still:
the first repeat is reported separately); compare commands within one run. With
``--against SRC`` (a folder holding another version's ``napari_ghanet`` package, e.g. an
exported older commit with ``training/`` copied to ``SRC/napari_ghanet/training``), each
command is timed alternately with that version (on ``PYTHONPATH``) and with the installed
one, so that both see the same machine load, and the ratio of the medians is printed.

Usage: python benchmarks/cli_startup.py [--repeat 5] [--top 12] [--against SRC]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

TARGET_S = 1.0
HEAVY = ("torch", "napari", "qtpy", "timm", "distributed", "onnxruntime", "spatialdata")
COMMANDS = {
    "ghanet --help": ("napari_ghanet.cli", ["--help"]),
    "ghanet predict --help": ("napari_ghanet.cli", ["predict", "--help"]),
    "ghanet embed --help": ("napari_ghanet.cli", ["embed", "--help"]),
    "ghanet demo --help": ("napari_ghanet.cli", ["demo", "--help"]),
    "ghanet predict (no --out: usage error)": ("napari_ghanet.cli", ["predict", "x.svs"]),
    "ghanet predict --batch-size 0 (value error)":
        ("napari_ghanet.cli", ["predict", "x.svs", "--out", "o", "--batch-size", "0"]),
    "ghanet-train --help": ("napari_ghanet.training.cli", ["--help"]),
    "ghanet-train cv --help": ("napari_ghanet.training.cli", ["cv", "--help"]),
    "ghanet-train demo --help": ("napari_ghanet.training.cli", ["demo", "--help"]),
}


def _code(module: str, argv: list[str], report: bool) -> str:
    lines = [
        "import sys",
        f"from {module} import main",
        "try:",
        f"    rc = main({argv!r})",
        "except SystemExit as e:",
        "    rc = e.code",
    ]
    if report:
        lines += [
            "import json",
            f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))",
            "sys.__stderr__.write('\\nREPORT ' + json.dumps(heavy) + '\\n')",
        ]
    return "\n".join(lines)


def _run(code: str, *flags: str, src: str | None = None
         ) -> tuple[float, subprocess.CompletedProcess]:
    env = None
    if src is not None:  # another version of the package first on the path
        env = {**os.environ, "PYTHONPATH": src}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True,
                          env=env)
    return time.perf_counter() - t0, done


def compare(module: str, argv: list[str], repeat: int, src: str) -> dict:
    """Median wall times (s) of ``repeat`` fresh runs each of the version in ``src`` and
    the installed one, alternated run by run (the same load for both)."""
    code = _code(module, argv, report=False)
    base, this = [], []
    for _ in range(repeat):
        base.append(_run(code, src=src)[0])
        this.append(_run(code)[0])
    return {"base": statistics.median(base), "this": statistics.median(this)}


def time_command(module: str, argv: list[str], repeat: int) -> dict:
    """Wall times (s) of ``repeat`` fresh runs and the heavy packages one of them imports."""
    times = [_run(_code(module, argv, report=False))[0] for _ in range(repeat)]
    _, done = _run(_code(module, argv, report=True))
    m = re.search(r"REPORT (\[.*\])", done.stderr)
    heavy = json.loads(m.group(1)) if m else ["?"]
    return {"first": times[0], "median": statistics.median(times[1:] or times),
            "min": min(times), "heavy": heavy}


def import_profile(module: str, argv: list[str], top: int) -> tuple[list, list[str]]:
    """The ``top`` costliest package modules (cumulative µs) under ``-X importtime``, and
    the chain of package modules through which torch was first imported (outermost
    first; empty when torch was not imported)."""
    _, done = _run(_code(module, argv, report=False), "-X", "importtime")
    rows = []
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            rows.append((int(m.group(2)), len(m.group(3)), m.group(4)))
    ours = sorted((r for r in rows if r[2].startswith("napari_ghanet")), reverse=True)[:top]
    # importtime prints a module after its imports, indented by depth: after torch's line
    # come, each one level up, the modules whose import pulled it in
    chain: list[str] = []
    for i, (_, depth, name) in enumerate(rows):
        if name != "torch":
            continue
        for _, d2, n2 in rows[i + 1:]:
            if d2 < depth:
                depth = d2
                if n2.startswith("napari_ghanet"):
                    chain.append(n2)
            if d2 <= 1:
                break
        break
    return ours, chain[::-1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=5, help="fresh runs per command (default 5)")
    p.add_argument("--top", type=int, default=12, help="modules listed by -X importtime")
    p.add_argument("--against", default=None, metavar="SRC",
                   help="also time the package version in SRC, alternating with this one")
    args = p.parse_args(argv)
    if args.against:
        print(f"{args.repeat} alternating runs per command: {args.against} (before) vs the "
              "installed package (after); medians in s (machine load affects absolute "
              "figures, less so the ratio)\n")
        print(f"{'command':46s} {'before':>7s} {'after':>7s} {'after/before':>13s}")
        for label, (module, cmd) in COMMANDS.items():
            r = compare(module, cmd, args.repeat, args.against)
            print(f"{label:46s} {r['base']:7.2f} {r['this']:7.2f} "
                  f"{r['this'] / r['base']:13.2f}")
        return 0
    print(f"python {sys.version.split()[0]}, {args.repeat} runs per command; target "
          f"{TARGET_S:.1f} s (machine load affects absolute figures)\n")
    print(f"{'command':46s} {'first':>6s} {'median':>7s} {'min':>6s}  ok   heavy imports")
    worst = 0.0
    for label, (module, cmd) in COMMANDS.items():
        r = time_command(module, cmd, args.repeat)
        worst = max(worst, r["median"])
        ok = "yes" if r["median"] < TARGET_S else "NO"
        print(f"{label:46s} {r['first']:6.2f} {r['median']:7.2f} {r['min']:6.2f}  {ok:4s} "
              f"{', '.join(r['heavy']) or '-'}")
    ours, chain = import_profile("napari_ghanet.cli", ["--help"], args.top)
    print("\n`ghanet --help` under -X importtime: costliest package modules (cumulative ms)")
    for cum, _, name in ours:
        print(f"  {cum / 1000:8.1f}  {name}")
    print("torch imported through: " + (" -> ".join(chain + ["torch"]) if chain else
                                         "nothing (torch not imported)"))
    print(f"\nslowest median: {worst:.2f} s ({'within' if worst < TARGET_S else 'over'} the "
          f"{TARGET_S:.0f} s target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
