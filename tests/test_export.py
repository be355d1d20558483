import hashlib
import json

import numpy as np
import pytest
import torch

from attributes import FunctionLabeler
from latent_balance import CallableGenerator
from latent_balance.export import DatasetError, allocate_counts, interleave, merge_shards, read_manifest, write_dataset
from latent_balance.sources import NaturalSource


def _gen():
    def synth(latent):
        return torch.tanh(latent[:, :3, None, None] * 2).expand(-1, 3, 8, 8).clone()

    return CallableGenerator(synth, z_dim=4, img_resolution=8, id="toy")


def _labs():
    def sign(dim):
        return lambda x: torch.stack([(x[:, dim, 0, 0] < 0).double(), (x[:, dim, 0, 0] >= 0).double()], 1)

    return [FunctionLabeler("a", ["a0", "a1"], sign(0), id="a-v1"), FunctionLabeler("b", ["b0", "b1"], sign(1), id="b-v1")]


class Crashing(NaturalSource):
    def __init__(self, *a, crash_at=None, **k):
        super().__init__(*a, **k)
        self.crash_at = crash_at

    def produce(self, block, slots):
        if block == self.crash_at:
            raise KeyboardInterrupt("simulated crash")
        return super().produce(block, slots)


def _digest(d):
    h = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        if p.is_file() and p.name not in ("run_log.jsonl", "shard.json") and not p.name.startswith("."):
            h.update(str(p.relative_to(d)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_allocate_and_interleave():
    c = allocate_counts(10, [0.25, 0.25, 0.5])
    assert c.tolist() == [3, 2, 5] or c.tolist() == [2, 3, 5]
    assert c.sum() == 10
    s = interleave([3, 2, 5])
    assert np.bincount(s).tolist() == [3, 2, 5]
    big = interleave(allocate_counts(1000, [0.5, 0.3, 0.2]))
    for stop in (100, 250, 500):
        # (a) deterministic: the furthest-behind rule keeps every prefix within 1 slot of its share (0.5
        # measured here, <= 1 over 200 random count vectors); atol = 2 slots
        np.testing.assert_allclose(np.bincount(big[:stop], minlength=3) / stop, [0.5, 0.3, 0.2], atol=2 / stop)
    with pytest.raises(ValueError):
        allocate_counts(5, [0.5, 0.6])


def test_write_and_read(tmp_path):
    src = NaturalSource(_gen(), _labs(), seed=3)
    res = write_dataset(tmp_path / "d", src, n=23, block_size=5, save_latents=True)
    assert res["complete"] and res["blocks_written"] == 5
    rows = read_manifest(tmp_path / "d")
    assert [r["index"] for r in rows] == list(range(23))
    assert len({r["seed"] for r in rows}) == 23
    assert len(list((tmp_path / "d" / "images").glob("*.png"))) == 23
    lat = np.load(tmp_path / "d" / "latents.npy")
    assert lat.shape == (23, 4)
    np.testing.assert_allclose(lat, _gen().to_latent(_gen().sample_z([r["seed"] for r in rows])).numpy())
    card = json.loads((tmp_path / "d" / "dataset_card.json").read_text())
    assert card["n_images"] == 23 and sum(a["count"] for a in card["achieved"].values()) == 23
    assert card["cost"]["synthesis_calls_per_image"] == 1.0
    header = (tmp_path / "d" / "manifest.csv").read_text().splitlines()[0].split(",")
    assert {"file", "seed", "intended_cell", "labelled_cell", "p_a_a0", "p_b_b1", "generator", "truncation_psi"} <= set(header)
    # labelled cell consistent with the probabilities
    r = rows[0]
    assert r["labelled_cell"] == "|".join(max(r["probs"][a], key=r["probs"][a].get) for a in ("a", "b"))


def test_resume_after_crash_is_identical(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        write_dataset(tmp_path / "d", Crashing(_gen(), _labs(), crash_at=2), n=20, block_size=4)
    assert not (tmp_path / "d" / "manifest.jsonl").exists()
    res = write_dataset(tmp_path / "d", NaturalSource(_gen(), _labs()), n=20, block_size=4)
    assert res["blocks_skipped"] == 2 and res["blocks_written"] == 3 and res["complete"]
    write_dataset(tmp_path / "ref", NaturalSource(_gen(), _labs()), n=20, block_size=4)
    assert _digest(tmp_path / "d") == _digest(tmp_path / "ref")


def test_other_settings_refused(tmp_path):
    write_dataset(tmp_path / "d", NaturalSource(_gen(), _labs(), seed=1), n=4, block_size=2)
    before = _digest(tmp_path / "d")
    with pytest.raises(DatasetError, match="other settings"):
        write_dataset(tmp_path / "d", NaturalSource(_gen(), _labs(), seed=2), n=4, block_size=2)
    with pytest.raises(DatasetError, match="other settings"):
        write_dataset(tmp_path / "d", NaturalSource(_gen(), _labs(), seed=1), n=5, block_size=2)
    assert _digest(tmp_path / "d") == before
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not a latent-balance dataset"):
        write_dataset(tmp_path / "foreign", NaturalSource(_gen(), _labs()), n=4)
    assert sorted(p.name for p in (tmp_path / "foreign").iterdir()) == ["x.txt"]


def test_shards_merge_equal_single_run(tmp_path):
    for i in range(3):
        res = write_dataset(tmp_path / f"s{i}", NaturalSource(_gen(), _labs()), n=17, block_size=3, shard=i,
                            num_shards=3, save_latents=True)
        assert not res["complete"]
    merge_shards([tmp_path / f"s{i}" for i in range(3)], tmp_path / "merged")
    write_dataset(tmp_path / "single", NaturalSource(_gen(), _labs()), n=17, block_size=3, save_latents=True)
    assert _digest(tmp_path / "merged") == _digest(tmp_path / "single")
    with pytest.raises(DatasetError, match="incomplete"):
        merge_shards([tmp_path / "s0", tmp_path / "s1"], tmp_path / "partial")


def test_written_files_have_normal_permissions(tmp_path):
    import os
    import stat

    write_dataset(tmp_path / "d", NaturalSource(_gen(), _labs()), n=2, block_size=2)
    mask = os.umask(0)
    os.umask(mask)
    for p in [tmp_path / "d" / "manifest.csv", tmp_path / "d" / "images" / "0000000.png"]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask


def test_every_json_file_is_standard_json_with_excluded_cells(tmp_path):
    """Issue 20.3: an excluded cell (target 0) that receives images made KL infinite, written as a bare
    `Infinity` into dataset_card.json. Now: null with the reason beside it; every file parses strictly."""
    from _strict import check_json_files, strict_json

    target = {"a0|b0": 0.5, "a0|b1": 0.0, "a1|b0": 0.0, "a1|b1": 0.5}
    write_dataset(tmp_path / "d", NaturalSource(_gen(), _labs(), target=target), n=40, block_size=16)
    assert check_json_files(tmp_path / "d") >= 6  # settings, 3 blocks, run log, manifest, card
    card = strict_json((tmp_path / "d" / "dataset_card.json").read_text())
    assert card["metrics"]["kl"] is None and "excluded" in card["metrics"]["kl_reason"]
    assert "| KL(achieved \\|\\| target), nats | inf |" in (tmp_path / "d" / "dataset_card.md").read_text()


def test_dataset_card_markdown_tables_parse_and_mode_matches_manifest(tmp_path):
    """Issue 11.6: cell names hold `|`, which broke the card's table (more columns than the header)."""
    from _strict import markdown_tables

    write_dataset(tmp_path / "d", NaturalSource(_gen(), _labs()), n=12, block_size=6)
    md = (tmp_path / "d" / "dataset_card.md").read_text()
    tables = markdown_tables(md)
    assert len(tables) == 2
    for table in tables:
        assert len({len(row) for row in table}) == 1, table  # every row has the header's column count
    cells = [row[0] for row in tables[0][1:]]
    assert cells == ["a0|b0", "a0|b1", "a1|b0", "a1|b1"]
    assert [row[0] for row in tables[1][1:]][0] == "KL(achieved || target), nats"
    card = json.loads((tmp_path / "d" / "dataset_card.json").read_text())
    assert {r["mode"] for r in read_manifest(tmp_path / "d")} == {card["mode"]} == {"natural"}
    assert f"(mode `{card['mode']}`)" in md


def test_progress_lines_per_batch_and_heartbeat(monkeypatch, capsys):
    """The non-terminal progress writes done/total, rate and ETA at least every interval, even while the
    work does not advance (a daemon thread), and a closing line."""
    import re
    import time

    from latent_balance import _utils

    monkeypatch.setenv(_utils.PROGRESS_INTERVAL_ENV, "0.05")
    with _utils.progress(total=10, desc="work", unit="images", enabled=True) as bar:
        time.sleep(0.4)  # no update: the heartbeat still reports
        bar.update(4)
        time.sleep(0.2)
    err = capsys.readouterr().err.splitlines()
    assert sum(bool(re.fullmatch(r"latent-balance: work: 0/10 images \(0%\), \? images/s, elapsed 00:00, ETA \?", x)) for x in err) >= 2
    assert any(re.fullmatch(r"latent-balance: work: 4/10 images \(40%\), [\d.]+ images/s, elapsed 00:00, ETA 00:0\d", x) for x in err)
    assert err[-1].startswith("latent-balance: work: stopped at 4/10 images in")
    with _utils.progress(total=10, desc="work", enabled=False) as bar:
        time.sleep(0.2)
        bar.update(10)
    assert capsys.readouterr().err == ""


class ReportingSource(NaturalSource):
    """A source whose produce reports progress per batch of 2 images (the BlockSource hook)."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.calls = []

    def produce(self, block, slots, progress=None):
        for _ in range(0, len(slots), 2):
            progress(2)
        self.calls.append(block)
        return super().produce(block, slots)


def test_write_dataset_passes_progress_to_sources_that_take_it(tmp_path, monkeypatch):
    seen = []

    class Bar:
        def update(self, k):
            seen.append(k)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr("latent_balance.export.progress", lambda **kw: Bar())
    src = ReportingSource(_gen(), _labs())
    write_dataset(tmp_path / "d", src, n=10, block_size=5)
    assert seen == [2, 2, 1, 2, 2, 1]  # per batch of 2, capped at the block's 5 images
