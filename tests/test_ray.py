"""The Ray engine (issue 19): the same dataset and probe file as one process, with two workers, after a
worker is killed mid-block, and after the driver is killed and rerun. A local Ray cluster of two CPUs
(``ray.init(num_cpus=2)``), the CLI tests' fast labelers, the packaged 64 px DCGAN."""

import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from click.testing import CliRunner

from cli_labelers import SPEC
from latent_balance.cli import _rebuild_sample_source, main

TESTS = Path(__file__).parent


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@pytest.fixture(scope="module")
def cluster():
    """A local two-CPU Ray cluster whose workers import the tests' labelers and sources."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": _env()["PYTHONPATH"], "OMP_NUM_THREADS": "1"}})
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("ray")
    (d / "labelers.yaml").write_text(SPEC)
    for args in (["probe", "--labelers", d / "labelers.yaml", "--n", 1200, "--out", d / "probes.npz"],
                 ["fit", "--probes", d / "probes.npz", "--out", d / "model.npz"]):
        r = _invoke(*args)
        assert r.exit_code == 0, r.output
    return d


def _invoke(*args):
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _tree(d: Path) -> dict:
    """sha256 of every file of a dataset folder but the run log and the card's time section (measured,
    not produced) and hidden temporary files."""
    from _strict import reproducible_bytes

    return {str(p.relative_to(d)): hashlib.sha256(reproducible_bytes(p)).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != "run_log.jsonl" and not p.name.startswith(".")}


def _sample(work, out, *extra):
    return ["sample", "--model", work / "model.npz", "--labelers", work / "labelers.yaml", "--out", out, *extra]


def test_two_workers_give_the_single_process_dataset(cluster, work, tmp_path):
    # verify on (one subgroup): labelled blocks, with rejections, spread over two workers
    args = ["--n", 24, "--block-size", 5, "--cell", "dark,*"]
    assert _invoke(*_sample(work, tmp_path / "local", *args)).exit_code == 0
    r = _invoke(*_sample(work, tmp_path / "ray", *args, "--engine", "ray", "--num-workers", 2))
    assert r.exit_code == 0, r.output
    a, b = _tree(tmp_path / "local"), _tree(tmp_path / "ray")
    assert len([k for k in a if k.startswith("images/")]) == 24
    assert a == b
    # the Ray run in the webdataset layout as jpg: the same images as the one-process run of those options
    opts = ["--layout", "webdataset", "--format", "jpg", "--quality", 90]
    assert _invoke(*_sample(work, tmp_path / "local_tar", *args, *opts)).exit_code == 0
    r = _invoke(*_sample(work, tmp_path / "ray_tar", *args, *opts, "--engine", "ray", "--num-workers", 2))
    assert r.exit_code == 0, r.output
    assert _tree(tmp_path / "local_tar") == _tree(tmp_path / "ray_tar")
    assert len(list((tmp_path / "ray_tar" / "images").glob("*.tar"))) == 5
    # the blocks were written by the workers: the run log has one line per block, from the blocks' own writers
    log = [json.loads(line) for line in (tmp_path / "ray" / "run_log.jsonl").read_text().splitlines()]
    assert sorted(x["block"] for x in log) == list(range(5))


def test_killed_worker_is_retried_and_the_dataset_is_exact(cluster, work, tmp_path):
    from _ray_helpers import killing_source

    from latent_balance.distributed import write_dataset_ray
    from latent_balance.export import read_manifest, write_dataset

    recipe = {"model": str(work / "model.npz"), "generator": "dcgan-faces", "truncation_psi": None, "device": "cpu",
              "class_index": None, "seed_scheme": "pcg64", "attributes": None,
              "labelers_spec": str(work / "labelers.yaml"), "mode": "matched", "target": "uniform", "verify": False,
              "cell": None, "sharpness": "1", "threshold": None, "seed": 3, "batch_size": 16, "block_size": 6,
              "max_sharpness": None, "max_synthesis_per_image": 10.0, "min_diversity": None,
              "natural_target": None}
    write_dataset(tmp_path / "local", _rebuild_sample_source(recipe), 18, block_size=6, show_progress=False)
    markers = tmp_path / "markers"
    markers.mkdir()
    res = write_dataset_ray(tmp_path / "ray", functools.partial(killing_source, recipe, str(markers), 1), 18,
                            block_size=6, source=_rebuild_sample_source(recipe), num_workers=2, show_progress=False)
    assert (markers / "killed-1").exists(), "the first attempt at block 1 should have killed its worker"
    assert res["complete"] and res["blocks_written"] == 3
    rows = read_manifest(tmp_path / "ray")
    assert len(rows) == 18 and len({r["seed"] for r in rows}) == 18
    assert _tree(tmp_path / "local") == _tree(tmp_path / "ray")


def test_killed_driver_rerun_resumes(cluster, work, tmp_path):
    args = [*_sample(work, tmp_path / "ray", "--n", 40, "--block-size", 4, "--sharpness", "1"), "--engine", "ray",
            "--num-workers", 1, "--address", cluster]
    proc = subprocess.Popen([sys.executable, "-m", "latent_balance.cli", "--quiet", *map(str, args)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    blocks = tmp_path / "ray" / "blocks"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if blocks.exists() and len(list(blocks.glob("*.json"))) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, ("the run finished before it could be killed; make it longer\n"
                                 + proc.stderr.read().decode()[-3000:])
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "ray" / "manifest.jsonl").exists()
    r = _invoke(*args)  # the rerun: this process, the same cluster
    assert r.exit_code == 0, r.output
    assert "already there" in r.output
    assert _invoke(*_sample(work, tmp_path / "local", "--n", 40, "--block-size", 4, "--sharpness", "1")).exit_code == 0
    assert _tree(tmp_path / "local") == _tree(tmp_path / "ray")


def test_probes_on_ray_equal_one_process(cluster, work, tmp_path):
    base = ["probe", "--labelers", work / "labelers.yaml", "--batch-size", 32]
    # 100 probes, then grown to 150 (the file continues from its 100), in one process and on Ray
    for n in (100, 150):
        assert _invoke(*base, "--n", n, "--out", tmp_path / "local.npz").exit_code == 0
        r = _invoke(*base, "--n", n, "--out", tmp_path / "ray.npz", "--engine", "ray", "--num-workers", 2)
        assert r.exit_code == 0, r.output
    assert (tmp_path / "local.npz").read_bytes() == (tmp_path / "ray.npz").read_bytes()
    from latent_balance.probes import ProbeSet

    a, b = ProbeSet.load(tmp_path / "local.npz"), ProbeSet.load(tmp_path / "ray.npz")
    np.testing.assert_array_equal(a.seeds, b.seeds)
    np.testing.assert_array_equal(a.latents, b.latents)
    for attr in a.attributes:
        np.testing.assert_array_equal(a.probs[attr], b.probs[attr])
    assert a.meta == b.meta


def test_engine_options_refused_without_ray_or_with_shards(work, tmp_path):
    r = _invoke(*_sample(work, tmp_path / "x", "--n", 4, "--num-workers", 2))
    assert r.exit_code == 2 and "apply only with --engine ray" in r.output
    r = _invoke(*_sample(work, tmp_path / "y", "--n", 4, "--engine", "ray", "--num-shards", 2))
    assert r.exit_code == 2 and "--shard/--num-shards do not apply" in r.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
