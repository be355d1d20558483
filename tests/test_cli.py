"""The CLI, through click's runner and as a subprocess: happy paths, bad input, kill + resume, shards."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli_labelers import SPEC
from latent_balance.cli import main

TESTS = Path(__file__).parent


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _invoke(*args):
    sys.path.insert(0, str(TESTS)) if str(TESTS) not in sys.path else None
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _tree(d: Path, skip=("run_log.jsonl", "shard.json")) -> dict:
    # the card's measured time section differs between runs; with skip=() (a folder compared with itself)
    # every byte counts
    from _strict import reproducible_bytes

    read = reproducible_bytes if skip else Path.read_bytes
    return {str(p.relative_to(d)): hashlib.sha256(read(p)).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name not in skip and not p.name.startswith(".") and "report" not in p.parts}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "labelers.yaml").write_text(SPEC)
    r = _invoke("probe", "--labelers", d / "labelers.yaml", "--n", 1500, "--out", d / "probes.npz")
    assert r.exit_code == 0, r.output
    r = _invoke("fit", "--probes", d / "probes.npz", "--out", d / "model.npz")
    assert r.exit_code == 0, r.output
    assert "held-out accuracy" in r.output
    return d


def _sample_args(work, out, *extra):
    return ["sample", "--model", work / "model.npz", "--labelers", work / "labelers.yaml", "--out", out, *extra]


def test_sample_happy_path_and_info(work, tmp_path):
    r = _invoke(*_sample_args(work, tmp_path / "ds", "--n", 60, "--block-size", 25, "--verify", "--save-latents"))
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (tmp_path / "ds" / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 60 and len({r["seed"] for r in rows}) == 60
    counts = {}
    for row in rows:
        assert row["intended_cell"] == row["labelled_cell"]  # verify: exact
        counts[row["labelled_cell"]] = counts.get(row["labelled_cell"], 0) + 1
    assert sorted(counts.values()) == [15, 15, 15, 15]
    assert np.load(tmp_path / "ds" / "latents.npy").shape == (60, 100)
    card = json.loads((tmp_path / "ds" / "dataset_card.json").read_text())
    assert card["metrics"]["tv"] == 0 and card["cost"]["synthesis_calls_per_image"] >= 1
    for target in (work / "probes.npz", work / "model.npz", tmp_path / "ds"):
        r = _invoke("info", target)
        assert r.exit_code == 0, r.output
        json.loads(r.output)
    r = _invoke("audit", tmp_path / "ds", "--natural-n", 40, "--no-image-metrics")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "ds" / "report" / "report.html").exists()
    assert "KL" in r.output
    # issue 20.3: every JSON file is standard JSON; issue 11.6: the card states the manifest's mode
    from _strict import check_json_files, markdown_tables

    assert check_json_files(tmp_path / "ds") >= 8
    assert card["mode"] == "matched+verify" and {row["mode"] for row in rows} == {card["mode"]}
    md = (tmp_path / "ds" / "dataset_card.md").read_text()
    assert "(mode `matched+verify`)" in md
    assert all(len({len(row) for row in t}) == 1 for t in markdown_tables(md))


def test_subgroup_sampling(work, tmp_path):
    r = _invoke(*_sample_args(work, tmp_path / "g", "--n", 12, "--cell", "light,*", "--verify"))
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (tmp_path / "g" / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all(r["labelled_cell"].startswith("light|") for r in rows)


def test_min_diversity_prints_its_prediction_and_cost(work, tmp_path):
    # the floor's predicted diversity and cost are in the plan (sampler.plan_); the CLI must say them, in the
    # unit of the mode: total variation latent-only, synthesis calls per kept image with verify
    for flags, unit in ((["--no-verify"], "predicted total variation"), (["--verify"], "synthesis calls per kept image")):
        out = tmp_path / ("v" if "--verify" in flags else "l")
        r = _invoke(*_sample_args(work, out, "--n", 8, "--min-diversity", 0.9, *flags))
        assert r.exit_code == 0, r.output
        line = next(ln for ln in r.output.splitlines() if ln.startswith("min-diversity 0.9:"))
        assert unit in line and "met" in line and "without it" in line
        # the printed cost is the plan's prediction with the floor against the same run without it
        settings = json.loads((out / "settings.json").read_text())
        assert settings["min_diversity"] == 0.9
    r = _invoke(*_sample_args(work, tmp_path / "none", "--n", 8, "--no-verify"))
    assert r.exit_code == 0 and "min-diversity" not in r.output


def test_info_on_what_it_cannot_describe(tmp_path):
    r = _invoke("info", "dcgan-faces")  # a built-in generator without a packaged model: said so, not "does not exist"
    assert r.exit_code == 2 and "ships no fitted model" in r.output
    (tmp_path / "x.txt").write_text("x")
    r = _invoke("info", tmp_path / "x.txt")
    assert r.exit_code == 2 and "person file" in r.output and ".labeler" in r.output


def test_config_file_and_flag_override(work, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"model: {work / 'model.npz'}\nlabelers: {work / 'labelers.yaml'}\nn: 8\nblock-size: 4\nmode: matched\n")
    r = _invoke("sample", "--config", cfg, "--out", tmp_path / "c", "--n", 6)
    assert r.exit_code == 0, r.output
    settings = json.loads((tmp_path / "c" / "settings.json").read_text())
    assert settings["n"] == 6 and settings["mode"] == "matched" and settings["block_size"] == 4
    cfg.write_text("nonsense_key: 1\n")
    r = _invoke("sample", "--config", cfg, "--out", tmp_path / "c2", "--n", 6)
    assert r.exit_code == 2 and "unknown settings" in r.output and not (tmp_path / "c2").exists()


@pytest.mark.parametrize("case", ["unknown_attribute", "bad_target", "missing_model", "corrupt_model",
                                  "unwritable_out", "bad_cell", "missing_probes"])
def test_bad_input_exits_2_and_writes_nothing(work, tmp_path, case):
    out = tmp_path / "out"
    if case == "unknown_attribute":
        args = ["probe", "--attributes", "gender,charisma", "--n", 5, "--out", tmp_path / "p.npz"]
        expect = "charisma"
    elif case == "bad_target":
        (tmp_path / "t.yaml").write_text("cells: {'dark|cool': -0.5, 'light|warm': 1.5}\n")
        args = _sample_args(work, out, "--n", 10, "--target", tmp_path / "t.yaml")
        expect = "negative"
    elif case == "missing_model":
        args = ["sample", "--model", tmp_path / "nope.npz", "--labelers", work / "labelers.yaml", "--out", out, "--n", 5]
        expect = "nope.npz"
    elif case == "corrupt_model":
        (tmp_path / "bad.npz").write_bytes((work / "model.npz").read_bytes()[:300])
        args = ["sample", "--model", tmp_path / "bad.npz", "--labelers", work / "labelers.yaml", "--out", out, "--n", 5]
        expect = "bad.npz"
    elif case == "unwritable_out":
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "sub"
        args = _sample_args(work, out, "--n", 5)
        expect = "not a folder"
    elif case == "bad_cell":
        args = _sample_args(work, out, "--n", 5, "--cell", "purple,warm")
        expect = "purple"
    else:
        args = ["fit", "--probes", tmp_path / "missing.npz", "--out", tmp_path / "m.npz"]
        expect = "missing.npz"
    before = sorted(p.name for p in tmp_path.iterdir())
    r = _invoke(*args)
    assert r.exit_code == 2, r.output
    assert expect in r.output
    assert len([line for line in r.output.strip().splitlines() if line.startswith("error:")]) == 1
    assert "Traceback" not in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def _run_cli(args, **kw):
    return subprocess.run([sys.executable, "-m", "latent_balance.cli", *map(str, args)], env=_env(),
                          capture_output=True, text=True, **kw)


def test_subprocess_kill_resume_identical_and_shards(work, tmp_path):
    base = ["sample", "--model", work / "model.npz", "--labelers", work / "labelers.yaml", "--n", 90,
            "--block-size", 10]
    # 1) a run killed with SIGKILL mid-way, then resumed with the same command
    proc = subprocess.Popen([sys.executable, "-m", "latent_balance.cli", *map(str, base), "--out", tmp_path / "a"],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    blocks = tmp_path / "a" / "blocks"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if blocks.exists() and len(list(blocks.glob("*.json"))) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(blocks.glob("*.json")))
    assert 2 <= done_before < 9 and not (tmp_path / "a" / "manifest.jsonl").exists()
    r = _run_cli([*base, "--out", tmp_path / "a"])
    assert r.returncode == 0, r.stderr
    assert "already there" in r.stdout
    rows = [json.loads(line) for line in (tmp_path / "a" / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 90 and len({row["seed"] for row in rows}) == 90
    assert len(list((tmp_path / "a" / "images").glob("*.png"))) == 90
    # 2) the same command in a fresh folder: identical manifests and image bytes
    r = _run_cli([*base, "--out", tmp_path / "b"])
    assert r.returncode == 0, r.stderr
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    # 3) shards merged equal the single run
    for i in range(3):
        r = _run_cli([*base, "--out", tmp_path / f"s{i}", "--shard", i, "--num-shards", 3])
        assert r.returncode == 0, r.stderr
    r = _run_cli(["merge", *[tmp_path / f"s{i}" for i in range(3)], "--out", tmp_path / "m"])
    assert r.returncode == 0, r.stderr
    assert _tree(tmp_path / "m") == _tree(tmp_path / "b")
    # 4) the folder refuses other settings (exit 2, nothing changed)
    before = _tree(tmp_path / "b")
    r = _run_cli([*base[:-2], "--block-size", 30, "--out", tmp_path / "b"])
    assert r.returncode == 2 and "other settings" in r.stderr
    assert _tree(tmp_path / "b") == before


def test_runtime_failure_exit_1(work, tmp_path, monkeypatch):
    import latent_balance.export as export

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(export, "write_dataset", boom)
    r = _invoke(*_sample_args(work, tmp_path / "x", "--n", 5))
    assert r.exit_code == 1 and "disk on fire" in r.output and "Traceback" not in r.output


def test_demo_with_real_face_labelers(tmp_path):
    """The demo pipeline end to end on the packaged DCGAN with the built-in labelers (small numbers)."""
    r = _invoke("demo", "--out", tmp_path / "demo", "--attributes", "gender,smile", "--n", 24, "--probes", 400,
                "--natural-n", 24)
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "demo" / "demo_summary.json").read_text())
    assert summary["achieved"]["tv"] == 0  # verify mode: exact counts
    # natural TV is 0 only with exactly 6 of 24 natural images per cell: probability <= 24! / (6!^4 4^24) =
    # 0.8% (the uniform-natural worst case); deterministic at these seeds
    assert summary["natural"]["tv"] > 0
    assert summary["cost"]["synthesis_calls_per_image"] >= 1
    from _strict import check_json_files

    assert check_json_files(tmp_path / "demo") == 7  # summary, settings, card, one block, run log, manifest, audit
    page = (tmp_path / "demo" / "dataset" / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 8  # per cell: its contact sheet and the natural one beside it
    assert "female|smiling" in page


def test_budget_that_cannot_be_met_exits_2_before_writing(work, tmp_path):
    out = tmp_path / "b"
    r = _invoke(*_sample_args(work, out, "--n", 12, "--cell", "dark,warm", "--verify", "--sharpness", "1",
                              "--max-synthesis-per-image", 1))
    assert r.exit_code == 2, r.output
    assert "--max-synthesis-per-image" in r.output and "dark|warm" in r.output
    assert not (out / "images").exists() or not any((out / "images").iterdir())


def test_one_subgroup_is_verified_by_default(work, tmp_path):
    """`--cell` without --verify/--no-verify: every image is labelled in the requested cell (issue 11.3)."""
    out = tmp_path / "one"
    r = _invoke(*_sample_args(work, out, "--n", 12, "--cell", "dark,warm", "--max-synthesis-per-image", 30))
    assert r.exit_code == 0, r.output
    assert "verify: on (--cell dark,warm asks for one subgroup" in r.output
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and {row["labelled_cell"] for row in rows} == {"dark|warm"}
    assert json.loads((out / "settings.json").read_text())["verify"] is True
    # --no-verify is latent-only, and says what share is predicted to land in the cell
    r = _invoke(*_sample_args(work, tmp_path / "lat", "--n", 12, "--cell", "dark,warm", "--no-verify"))
    assert r.exit_code == 0, r.output
    assert "verify: off (--no-verify)" in r.output and "predicted to be labelled in the requested cells" in r.output


def test_default_verify_over_budget_refuses_with_the_predicted_precision(work, tmp_path):
    out = tmp_path / "refused"
    r = _invoke(*_sample_args(work, out, "--n", 12, "--cell", "dark,warm", "--sharpness", "1",
                              "--max-synthesis-per-image", 1))
    assert r.exit_code == 2, r.output
    assert "verification is on by default" in r.output and "predicted to be labelled" in r.output
    assert "--no-verify" in r.output and "--max-synthesis-per-image" in r.output
    assert not out.exists() or not any(out.iterdir())


def test_excluded_cells_are_verified_by_default(work, tmp_path):
    """A zero-mass cell is a removal promise: no image labelled in it (issue 11.4)."""
    (tmp_path / "t.yaml").write_text("exclude: [{light: dark, warm: warm}]\n")
    out = tmp_path / "ex"
    r = _invoke(*_sample_args(work, out, "--n", 40, "--target", tmp_path / "t.yaml"))
    assert r.exit_code == 0, r.output
    assert "verify: on (the target excludes 1 cell(s)" in r.output
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and not any(row["labelled_cell"] == "dark|warm" for row in rows)
    card = json.loads((out / "dataset_card.json").read_text())
    ex = card["exclusions"]
    assert ex["cells"] == ["dark|warm"] and ex["images"] == 0 and ex["checked_by_labelers"]
    assert ex["candidates_labelled"] == round(card["cost"]["synthesis_calls_per_image"] * 40)
    assert 0 <= ex["rejected_in_excluded_cells"] <= ex["candidates_labelled"] - 40
    md = (out / "dataset_card.md").read_text()
    assert "excluded cells (target 0: `dark|warm`): 0 images, checked by labelers" in md
    # with --no-verify the card says that the exclusion was not enforced
    r = _invoke(*_sample_args(work, tmp_path / "nv", "--n", 40, "--target", tmp_path / "t.yaml", "--no-verify"))
    assert r.exit_code == 0, r.output
    assert "not enforced" in (tmp_path / "nv" / "dataset_card.md").read_text()


def test_every_planning_refusal_comes_before_the_first_write(work, tmp_path):
    """Issue 20.2: caps, budgets, unreachable or unplannable targets and changed settings exit 2 and leave
    the output folder absent (new folder) or byte-identical (existing dataset)."""
    # the stream cap: 4 cells and a seed's 4,096 + 2**20 proposal streams allow 263,168 blocks; 263,200
    # blocks of one image are refused before anything is written, with a block size that fits
    out = tmp_path / "cap"
    r = _invoke(*_sample_args(work, out, "--n", 263200, "--block-size", 1, "--sharpness", "1"))
    assert r.exit_code == 2, r.output
    assert "at most 263168 blocks" in r.output and "at least 2" in r.output
    assert not out.exists()
    # a verify budget the plan cannot meet, and an unplannable latent-only request (no component rests on
    # enough held-out probes for a 100%-one-cell target at automatic sharpness): nothing written
    for extra in (["--cell", "dark,warm", "--verify", "--sharpness", "1", "--max-synthesis-per-image", 1],
                  ["--cell", "dark,warm", "--no-verify", "--sharpness", "auto", "--max-sharpness", "16"]):
        o = tmp_path / f"refused{len(extra)}"
        r = _invoke(*_sample_args(work, o, "--n", 12, *extra))
        if r.exit_code == 0:  # the latent-only request may be plannable on this model: then it ran fully
            assert extra[2] == "--no-verify" and (o / "dataset_card.json").exists()
            continue
        assert r.exit_code == 2, r.output
        assert not o.exists() or not any(o.iterdir())
    # an existing dataset asked again with other settings (another seed) is refused and left unchanged
    ds = tmp_path / "ds"
    assert _invoke(*_sample_args(work, ds, "--n", 8, "--block-size", 4)).exit_code == 0
    before = _tree(ds, skip=())
    (tmp_path / "far.yaml").write_text(UNREACHABLE)  # its plan warns (residual TV above tolerance)
    r = _invoke(*_sample_args(work, ds, "--n", 8, "--block-size", 4, "--seed", 5, "--sharpness", 1,
                              "--target", tmp_path / "far.yaml"))
    assert r.exit_code == 2 and "seed" in r.output
    # ... with its reason alone: the planning warning waits until the folder accepts the run
    assert [line for line in r.output.splitlines() if line.strip()] == [r.output.strip().splitlines()[-1]]
    assert _tree(ds, skip=()) == before


UNREACHABLE = "cells: {'dark|cool': 0.7, 'light|warm': 0.1, 'dark|warm': 0.1, 'light|cool': 0.1}\n"


def test_warnings_are_one_line_name_cli_flags_and_only_when_they_apply(work, tmp_path):
    """Issue 11.8: warnings printed `cli.py:336: RuntimeWarning: ...` plus the source line, said
    "use verify=True" (an API argument) and did so even when --verify was given."""
    (tmp_path / "t.yaml").write_text(UNREACHABLE)
    base = [*_sample_args(work, tmp_path / "a", "--n", 8, "--mode", "matched", "--sharpness", 1,
                          "--target", tmp_path / "t.yaml")]
    r = _run_cli(base)
    assert r.returncode == 0, r.stderr
    warns = [line for line in r.stderr.splitlines() if "warning" in line.lower()]
    assert len(warns) == 1, r.stderr
    assert warns[0].startswith("latent-balance: warning: the target is outside what the latent model can reach")
    assert "--verify" in warns[0] and "--sharpness" in warns[0] and "verify=True" not in warns[0]
    assert ".py" not in r.stderr and "RuntimeWarning" not in r.stderr and "warnings.warn" not in r.stderr
    # with --verify the counts are exact: the warning (and its hint to verify) does not apply
    base[base.index(tmp_path / "a")] = tmp_path / "b"
    r = _run_cli([*base, "--verify"])
    assert r.returncode == 0, r.stderr
    # (this 1,500-probe model has ~12 held-out probes in its rarest cell: verify's cost prediction is warned
    # about, which does apply)
    warns = [line for line in r.stderr.splitlines() if "warning" in line.lower()
             and "held-out probes labelled in" not in line]
    assert not warns and "outside what the latent model" not in r.stderr, r.stderr


def test_cli_warning_text_is_one_line():
    from latent_balance.cli import _warning_line

    text = _warning_line("build failed:\n  error: x\n\n  more; lower the sharpness or raise max_sharpness")
    assert "\n" not in text and text.startswith("latent-balance: warning: build failed: error: x more;")
    assert text.endswith("lower --sharpness or raise --max-sharpness")
    assert len(_warning_line("x" * 5000)) < 700 and len(_warning_line("x" * 5000, verbose=True)) > 5000


PROGRESS = re.compile(r"^latent-balance: (?P<desc>[a-z ]+): (?P<done>\d+)/(?P<total>\d+) images \(\d+%\), "
                      r"(?:\?|[\d.]+) images/s, elapsed \d\d:\d\d, ETA (?:\?|\d\d:\d\d(?::\d\d)?)$")


def test_progress_lines_without_a_terminal_and_quiet(tmp_path):
    """Issue 11.7: `probe` and `audit` printed nothing for minutes when stderr was not a terminal. Now a
    line with done/total, rate and ETA at least every interval (10 s; 0.05 s here), per batch; --quiet: none."""
    (tmp_path / "labelers.yaml").write_text(SPEC)
    env = {**_env(), "LATENT_BALANCE_PROGRESS_INTERVAL": "0.05"}
    args = ["probe", "--labelers", tmp_path / "labelers.yaml", "--n", 300, "--batch-size", 20]
    r = subprocess.run([sys.executable, "-m", "latent_balance.cli", *map(str, args), "--out", tmp_path / "p.npz"],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = [m for m in map(PROGRESS.match, r.stderr.splitlines()) if m]
    assert lines and all(m["desc"] == "probes" and m["total"] == "300" for m in lines), r.stderr
    done = sorted({int(m["done"]) for m in lines})
    # per batch: counts step by the batch size (20), not by a whole block or the whole run
    assert all(d % 20 == 0 for d in done) and any(0 < d < 300 for d in done), done
    assert "latent-balance: probes: done, 300 images" in r.stderr
    for quiet in (["--quiet"], ["-q"]):
        r = subprocess.run([sys.executable, "-m", "latent_balance.cli", *map(str, args), "--out", tmp_path / "q.npz",
                            *quiet], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert "latent-balance: probes" not in r.stderr and r.stderr.strip() == "", r.stderr
        (tmp_path / "q.npz").unlink()
    r = subprocess.run([sys.executable, "-m", "latent_balance.cli", "--quiet", *map(str, args), "--out",
                        tmp_path / "q.npz"], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


def test_audit_and_sample_show_progress(work, tmp_path):
    env = {**_env(), "LATENT_BALANCE_PROGRESS_INTERVAL": "0.05"}
    cmd = [sys.executable, "-m", "latent_balance.cli"]
    r = subprocess.run([*cmd, *map(str, _sample_args(work, tmp_path / "d", "--n", 60, "--block-size", 20, "--verify"))],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert any(m and m["desc"] == "dataset" and m["total"] == "60" for m in map(PROGRESS.match, r.stderr.splitlines())), r.stderr
    r = subprocess.run([*cmd, "audit", str(tmp_path / "d"), "--natural-n", "600", "--no-image-metrics"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    descs = {m["desc"] for m in map(PROGRESS.match, r.stderr.splitlines()) if m}
    assert "natural images" in descs, r.stderr
    assert "target band" in r.stdout


def test_card_match_share_counts_matched_mode_components(work, tmp_path):
    """Matched mode writes slots as `component:<cell>`; the card's share of images labelled in the cell
    they were generated for compares the cell, not the prefixed slot name (it read 0.000 before)."""
    out = tmp_path / "m"
    r = _invoke(*_sample_args(work, out, "--n", 40, "--no-verify", "--sharpness", "1"))
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert all(row["intended_cell"].startswith("component:") for row in rows)
    share = np.mean([row["intended_cell"].split(":", 1)[1] == row["labelled_cell"] for row in rows])
    card = json.loads((out / "dataset_card.json").read_text())
    assert card["intended_equals_labelled"] == pytest.approx(share) and share > 0


def test_a_file_that_is_not_a_model_is_refused_plainly(work, tmp_path):
    (tmp_path / "target.yaml").write_text("uniform: true\n")
    r = _invoke("sample", "--model", tmp_path / "target.yaml", "--labelers", work / "labelers.yaml",
                "--n", 4, "--out", tmp_path / "x")
    assert r.exit_code == 2
    assert "not a latent-balance subgroup-model file (not an .npz archive" in r.output
    assert "allow_pickle" not in r.output
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args", [["sample", "--model", "m.npz", "--n", 8],
                                  ["sample", "--mode", "verify", "--model", "m.npz", "--n", 8, "--out", "o"],
                                  ["sample", "--cells", "a"], ["nosuch"]])
def test_usage_errors_are_one_line(args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 2
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--help" in lines[0], r.output


def test_sample_size_warnings_name_the_flags_that_change_them():
    from latent_balance.cli import _warning_line

    line = _warning_line("frechet_distance: 125 samples for 512 feature dimensions: the covariance is singular")
    assert line.startswith("latent-balance: warning: frechet_distance") and "--natural-n" in line
    assert "--no-image-metrics" in _warning_line("mean_pairwise_lpips: 2 images: the jackknife standard error ...")


def test_info_takes_a_built_in_model_name():
    r = _invoke("info", "stylegan2-faces")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["kind"] == "latent-balance-subgroups"


def test_sample_output_options_and_audit_of_a_webdataset(work, tmp_path):
    """Issue 14: --format/--quality, --image-size, --layout webdataset; recorded, validated, audited."""
    out = tmp_path / "w"
    r = _invoke(*_sample_args(work, out, "--n", 12, "--block-size", 6, "--no-verify", "--format", "webp", "--quality",
                              80, "--image-size", 16, "--layout", "webdataset", "--encode-workers", 0))
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (out / "images").iterdir()) == ["00000.tar", "00001.tar"]
    settings = json.loads((out / "settings.json").read_text())
    assert settings["output"] == {"format": "webp", "quality": 80, "image_size": 16, "layout": "webdataset"}
    assert "- time per stage" in (out / "dataset_card.md").read_text()
    r = _invoke("audit", out, "--natural-n", 0, "--no-image-metrics")  # reads the images from the tars
    assert r.exit_code == 0, r.output
    assert (out / "report" / "report.html").exists()
    # resuming with another format is refused (exit 2), the folder unchanged
    before = _tree(out, skip=())
    r = _invoke(*_sample_args(work, out, "--n", 12, "--block-size", 6, "--no-verify", "--image-size", 16,
                              "--layout", "webdataset"))
    assert r.exit_code == 2 and "other settings" in r.output and "output" in r.output
    assert _tree(out, skip=()) == before
    for extra, expect in ((["--quality", 90], "--quality applies to the lossy formats"),
                          (["--format", "jpg", "--quality", 0], "--quality must be an integer from 1"),
                          (["--image-size", 0], "--image-size must be a positive integer"),
                          (["--format", "gif"], "'gif' is not one of")):
        r = _invoke(*_sample_args(work, tmp_path / "bad", "--n", 4, *extra))
        assert r.exit_code == 2 and expect in r.output, r.output
        assert not (tmp_path / "bad").exists()


def test_default_verify_planning_error_is_reported_as_it_is(work, tmp_path, monkeypatch):
    """Verification on by default (excluded cells) and a verify plan that fails for a reason other than the
    synthesis budget: the message is that reason, not the latent-only sampler's (fresh-user trial)."""
    import latent_balance.cli as cli

    real = cli._sampler

    def sampler(ctx, gen, model, target, mode, verify, *a, **k):
        if verify:
            raise cli.InputError("cell 'dark|warm' cannot be filled: no component ever produced it")
        raise AssertionError("a latent-only sampler was built only to word the message")

    (tmp_path / "t.yaml").write_text("exclude: [{light: light, warm: warm}]\n")
    monkeypatch.setattr(cli, "_sampler", sampler)
    r = _invoke(*_sample_args(work, tmp_path / "o", "--n", 8, "--target", tmp_path / "t.yaml"))
    assert r.exit_code == 2, r.output
    assert "verification is on by default" in r.output and "cannot be filled" in r.output
    assert not (tmp_path / "o").exists()
    monkeypatch.setattr(cli, "_sampler", real)


def test_budget_error_mid_run_names_the_flag_and_how_to_resume(work, tmp_path, monkeypatch):
    import latent_balance.export as export
    from latent_balance import BudgetError

    def out_of_budget(*a, **k):
        raise BudgetError("verify ran out of its budget of 80 synthesis calls (max_synthesis_per_image=10)")

    monkeypatch.setattr(export, "write_dataset", out_of_budget)
    r = _invoke(*_sample_args(work, tmp_path / "x", "--n", 5))
    assert r.exit_code == 1, r.output
    assert "--max-synthesis-per-image=10" in r.output and "max_synthesis_per_image" not in r.output
    assert "rerun the same command" in r.output


def test_audit_treats_natural_images_like_a_resized_lossy_dataset(work, tmp_path):
    """A dataset written as 32 px jpg is compared with natural images resized and jpg-encoded the same way
    (fresh-user trial: full-size png references made the diversity ratio meaningless)."""
    r = _invoke(*_sample_args(work, tmp_path / "d", "--n", 16, "--format", "jpg", "--quality", 80,
                              "--image-size", 32))
    assert r.exit_code == 0, r.output
    r = _invoke("audit", tmp_path / "d", "--natural-n", 48, "--report-dir", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    audit = json.loads((tmp_path / "rep" / "audit.json").read_text())
    assert audit["natural_images_written_as"] == {"format": "jpg", "quality": 80, "image_size": 32}


def test_fit_warns_when_a_boundary_is_no_better_than_the_majority_class(work, tmp_path):
    """An attribute the latent does not predict (a coin flip per probe) gets a warning naming --verify."""
    from latent_balance.probes import ProbeSet

    ps = ProbeSet.load(work / "probes.npz")
    p = np.random.default_rng(0).random(len(ps)) * 0.8  # tails (p > 0.5) on 37.5% of probes, independent of z
    meta = {**ps.meta, "labelers": {"light": ps.meta["labelers"]["light"],
                                    "coin": {"id": "coin-v1", "classes": ["heads", "tails"]}}}
    ProbeSet(ps.seeds, ps.z, ps.latents, {"light": ps.probs["light"], "coin": np.stack([1 - p, p], 1)},
             {"light": ps.classes["light"], "coin": ("heads", "tails")}, meta).save(tmp_path / "coin.npz")
    r = _invoke("fit", "--probes", tmp_path / "coin.npz", "--out", tmp_path / "m.npz")
    assert r.exit_code == 0, r.output
    assert re.search(r"warning: coin: the boundary is no more accurate .* use --verify", r.output), r.output
