"""A cohort predict reads each file as often as it must, counted: the bundle's weights are
loaded once per process that runs tasks (its header checked once in the parent), and each
slide is opened once per task, in this process and on a 2-worker Dask LocalCluster, for
single slides and for a patient made of two slides; a resumed run loads no weights.

The counters wrap the two functions every path goes through:
``napari_ghanet.io.slide._open_backend`` (whatever opens a slide file) and
``napari_ghanet.models.bundle._load_checked`` (whatever reads a bundle's weights), plus
``read_bundle_metadata`` (the parent's header check).
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
from pathlib import Path

import pytest

from _plugin_helpers import FAST_ENCODER, make_bundle
from conftest import he_image, write_pyramid
from napari_ghanet.cohort import predict_cohort
from napari_ghanet.cohort import tasks as cohort_tasks
from napari_ghanet.cohort.inputs import SlideItem
from napari_ghanet.io import slide as slide_mod
from napari_ghanet.models import bundle as bundle_mod

#: (what, path) -> calls, in the process these functions run in
COUNTS: collections.Counter = collections.Counter()


def _counting(what: str, fn):
    @functools.wraps(fn)
    def wrapper(path, *args, **kwargs):
        COUNTS[what, str(Path(path).resolve())] += 1
        return fn(path, *args, **kwargs)

    wrapper.counted = True
    return wrapper


def install_counters() -> int:
    """Wrap the slide opener and the weight loader in this process (once); its pid."""
    if not getattr(slide_mod._open_backend, "counted", False):
        slide_mod._open_backend = _counting("open", slide_mod._open_backend)
        bundle_mod._load_checked = _counting("load", bundle_mod._load_checked)
    COUNTS.clear()
    return os.getpid()


def counts() -> tuple[int, dict]:
    """This process's pid and counts (for ``client.run``)."""
    return os.getpid(), dict(COUNTS)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Five small slides: s0-s2 alone, p_a and p_b one patient 'P'; a bundle of their own."""
    d = tmp_path_factory.mktemp("counted")
    items = []
    for i, name in enumerate(("s0", "s1", "s2", "p_a", "p_b")):
        rgb, _ = he_image(512, 768, seed=10 + i, nuclei_per_1000um2=2.0 + i)
        path = write_pyramid(d / f"{name}.tif", rgb, mpp=0.5, levels=2)
        items.append(SlideItem(str(Path(path).resolve()), None,
                               "P" if name.startswith("p_") else name))
    bundle = make_bundle(d / "counted.safetensors", encoder=FAST_ENCODER, seed=7)
    return items, bundle


def _key(what, path):
    return what, str(Path(path).resolve())


def test_in_process_one_load_and_one_open_per_slide(cohort, tmp_path, monkeypatch):
    items, bundle = cohort
    monkeypatch.setattr(slide_mod, "_open_backend", slide_mod._open_backend)  # restored after
    monkeypatch.setattr(bundle_mod, "_load_checked", bundle_mod._load_checked)
    monkeypatch.setattr(cohort_tasks, "_BUNDLES", {})  # nothing loaded by earlier tests
    header_checks = []
    read_meta = cohort_tasks.read_bundle_metadata
    monkeypatch.setattr(cohort_tasks, "read_bundle_metadata",
                        lambda p: header_checks.append(p) or read_meta(p))
    install_counters()

    s = predict_cohort(items, tmp_path / "out", bundle, device="cpu", use_cache=False,
                       progress=False)
    assert s.line == "4 done, 0 skipped, 0 failed"  # s0, s1, s2 and patient P
    assert (tmp_path / "out" / "P" / "P.ghanet.json").is_file()
    assert header_checks == [Path(bundle)]  # the parent's header check, once
    assert COUNTS[_key("load", bundle)] == 1  # 4 tasks, one process: one load
    for it in items:
        assert COUNTS[_key("open", it.path)] == 1, it.name
    assert sum(n for (what, _), n in COUNTS.items() if what == "open") == len(items)

    # resumed: every slide opened once (its fingerprint), no weights read at all
    monkeypatch.setattr(cohort_tasks, "_BUNDLES", {})
    COUNTS.clear()
    again = predict_cohort(items, tmp_path / "out", bundle, device="cpu", use_cache=False,
                           progress=False)
    assert again.line == "0 done, 4 skipped, 0 failed"
    assert COUNTS[_key("load", bundle)] == 0
    assert [COUNTS[_key("open", it.path)] for it in items] == [1] * len(items)


def test_on_a_local_cluster_one_load_per_worker_and_one_open_per_slide(cohort, tmp_path):
    from napari_ghanet.cohort.engine import open_client

    items, bundle = cohort
    with open_client("local:2") as client:
        pids = client.run(install_counters)
        assert len(set(pids.values())) == 2
        s = predict_cohort(items, tmp_path / "out", bundle, device="cpu", use_cache=False,
                           scheduler=client.scheduler.address, progress=False)
        assert s.line == "4 done, 0 skipped, 0 failed"
        per_worker = client.run(counts)
    loads = {w: c.get(_key("load", bundle), 0) for w, (_, c) in per_worker.items()}
    ran = {w for w, (_, c) in per_worker.items() if any(k[0] == "open" for k in c)}
    assert ran, "no task ran on the workers"
    # each worker that ran tasks loaded the weights exactly once, the others not at all
    assert {w: n for w, n in loads.items()} == {w: int(w in ran) for w in per_worker}
    assert sum(loads.values()) < 4  # fewer loads than tasks
    for it in items:
        opened = sum(c.get(_key("open", it.path), 0) for _, c in per_worker.values())
        assert opened == 1, it.name


class _Calls:
    """Counts the calls of a function (module attribute) while it still does its work."""

    def __init__(self, monkeypatch, fn, *where):
        self.n = 0

        def counted(*args, **kwargs):
            self.n += 1
            return fn(*args, **kwargs)

        for module, name in where:
            monkeypatch.setattr(module, name, counted)


def test_ghanet_predict_cohort_checks_once_and_resolves_the_device_once_per_run(
        cohort, tmp_path, monkeypatch, capsys):
    """`ghanet predict` on two slides with the demo model (no --model), in this process:
    the parent reads the bundle's header once and loads no weights of its own (only the
    task path loads them, once), and the device is resolved once for the cohort's up-front
    check and once per slide's prediction (not again by the embedding below it)."""
    from napari_ghanet.cli import main
    from napari_ghanet.cohort import api as cohort_api
    from napari_ghanet.device import resolve_device
    from napari_ghanet.inference import embedding
    from napari_ghanet.inference.stages import bag
    from napari_ghanet.models.bundle import demo_bundle_path

    items, _ = cohort
    monkeypatch.setattr(cohort_tasks, "_BUNDLES", {})
    monkeypatch.setattr(bundle_mod, "_load_checked", bundle_mod._load_checked)
    header = _Calls(monkeypatch, cohort_tasks.read_bundle_metadata,
                    (cohort_tasks, "read_bundle_metadata"))
    device = _Calls(monkeypatch, resolve_device, (cohort_api, "resolve_device"),
                    (bag, "resolve_device"), (embedding, "resolve_device"))
    install_counters()
    slides = [items[0].path, items[1].path]
    code = main(["predict", *slides, "--out", str(tmp_path / "out"), "--device", "cpu",
                 "--no-cache", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert header.n == 1
    assert COUNTS[_key("load", demo_bundle_path())] == 1  # the tasks' one load, nothing more
    assert device.n == 1 + len(slides)


def test_the_cluster_text_is_parsed_once(tmp_path, monkeypatch):
    """`--cluster local:1` is parsed once, when the command makes its ExecutionOptions;
    the engine starts the cluster that parse describes (stopped here before it starts)."""
    from napari_ghanet.cli._cohort import add_execution_options
    from napari_ghanet.cli._options import group_from_args
    from napari_ghanet.cohort import engine
    from napari_ghanet.errors import CohortError
    from napari_ghanet.options import ExecutionOptions, groups

    parse = _Calls(monkeypatch, groups.parse_cluster, (groups, "parse_cluster"),
                   (engine, "_parse_cluster"))
    started = []

    def no_cluster(kind, n, scheduler, **kw):
        started.append((kind, n, scheduler))
        raise CohortError("stopped before starting the cluster")

    monkeypatch.setattr(engine, "_client", no_cluster)
    p = add_execution_options(argparse.ArgumentParser())
    execution = group_from_args(ExecutionOptions, p.parse_args(["--cluster", "local:1"]))
    with pytest.raises(CohortError, match="stopped"):
        engine.run_tasks(_tenth, [1, 2], execution=execution, progress=False)
    assert started == [("local", 1, None)]
    assert parse.n == 1
    # the strings alone are parsed once too
    with pytest.raises(CohortError, match="stopped"):
        engine.run_tasks(_tenth, [1, 2], cluster="local:3", progress=False)
    assert started[-1] == ("local", 3, None) and parse.n == 2


def _tenth(x):
    return {"n_patches": 10 // x}
