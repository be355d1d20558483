import hashlib
import json
import warnings

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
    """Hash of a dataset folder's files (the card's measured time section and the run log excepted)."""
    from _strict import reproducible_bytes

    h = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        if p.is_file() and p.name not in ("run_log.jsonl", "shard.json") and not p.name.startswith("."):
            h.update(str(p.relative_to(d)).encode())
            h.update(reproducible_bytes(p))
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


def test_folder_from_before_output_options_resumes_as_png_files(tmp_path):
    """A dataset folder written before the output options existed (no ``output`` in its settings) resumes
    with the default output (png files) and is refused with any other."""
    with pytest.raises(KeyboardInterrupt):
        write_dataset(tmp_path / "d", Crashing(_gen(), _labs(), crash_at=1), n=8, block_size=4)
    settings_path = tmp_path / "d" / "settings.json"
    old = json.loads(settings_path.read_text())
    del old["output"]
    settings_path.write_text(json.dumps(old, indent=2, sort_keys=True))
    with pytest.raises(DatasetError, match="other settings"):
        write_dataset(tmp_path / "d", NaturalSource(_gen(), _labs()), n=8, block_size=4, image_format="jpg")
    res = write_dataset(tmp_path / "d", NaturalSource(_gen(), _labs()), n=8, block_size=4)
    assert res["blocks_skipped"] == 1 and res["blocks_written"] == 1 and res["complete"]
    assert "output" not in json.loads(settings_path.read_text())  # the folder's settings are left as written


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


# ------------------------------------------------------------------------------------------------
# Issue 14: encoding pool, formats, image size, WebDataset tars, time per stage
# ------------------------------------------------------------------------------------------------
def _gen32():
    """32 x 32 images with structure (smooth gradients from the latent), for codecs and resizing."""
    def synth(latent):
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
        a, b, c = latent[:, 0, None, None], latent[:, 1, None, None], latent[:, 2, None, None]
        return torch.stack([torch.tanh(a * xx + b * yy), torch.tanh(b * xx - c * yy), torch.tanh(c * xx * yy + a)], 1)

    return CallableGenerator(synth, z_dim=4, img_resolution=32, id="toy32")


def _synthesized_u8(rows):
    """The uint8 images the generator makes for the manifest's seeds (computed again, independently)."""
    from latent_balance._utils import images_to_uint8

    g = _gen32()
    return images_to_uint8(g.synthesize(g.to_latent(g.sample_z([r["seed"] for r in rows]))))


def _decoded(d, rows):
    import io

    from PIL import Image

    from latent_balance.export import iter_image_bytes

    return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in iter_image_bytes(d, rows)])


def test_encoding_pool_gives_the_same_bytes_with_bounded_images_in_flight(tmp_path):
    from latent_balance import export

    thread = write_dataset(tmp_path / "t", NaturalSource(_gen32(), _labs()), n=100, block_size=50, workers=0)
    pool = write_dataset(tmp_path / "p", NaturalSource(_gen32(), _labs()), n=100, block_size=50, workers=2)
    assert thread["encode_workers"] == 0 and pool["encode_workers"] == 2
    assert _digest(tmp_path / "t") == _digest(tmp_path / "p")  # same files, same order, same bytes
    # the window: _CHUNK images per task, _CHUNKS_PER_WORKER tasks per worker -> 4 * 2 * 2 = 16 images, below
    # the block's 50 (so a whole block is never handed to the pool at once), and filled (> one task)
    window = export._CHUNK * export._CHUNKS_PER_WORKER * 2
    assert pool["encode_window"] == window < 50
    assert export._CHUNK < pool["peak_images_in_flight"] <= window
    assert thread["peak_images_in_flight"] == 0
    rows = read_manifest(tmp_path / "p")
    np.testing.assert_array_equal(_decoded(tmp_path / "p", rows), _synthesized_u8(rows))  # png: lossless
    with pytest.raises(ValueError, match="workers"):
        write_dataset(tmp_path / "w", NaturalSource(_gen32(), _labs()), n=4, workers=-1)
    assert not (tmp_path / "w").exists()


def test_pool_size_default_is_one_per_core_with_enough_images(monkeypatch):
    from latent_balance import export

    monkeypatch.setattr(export, "_usable_cores", lambda: 16)
    per = export.MIN_IMAGES_PER_WORKER
    assert export._pool_size(None, 2048) == min(16, 2048 // per)
    assert export._pool_size(None, 100_000) == 16
    assert export._pool_size(None, per - 1) == 0  # too few images to pay for a pool: the writer thread
    assert export._pool_size(3, 10) == 3


@pytest.mark.parametrize("fmt,magic", [("jpg", b"\xff\xd8\xff"), ("webp", b"RIFF")])
def test_lossy_formats_with_quality(tmp_path, fmt, magic):
    errors = {}
    for q in (95, 10):
        d = tmp_path / f"{fmt}{q}"
        write_dataset(d, NaturalSource(_gen32(), _labs()), n=6, block_size=3, image_format=fmt, quality=q)
        rows = read_manifest(d)
        assert [r["file"] for r in rows] == [f"images/{i:07d}.{fmt}" for i in range(6)]
        assert all((d / r["file"]).read_bytes().startswith(magic) for r in rows)
        settings = json.loads((d / "settings.json").read_text())
        assert settings["output"] == {"format": fmt, "quality": q, "image_size": None, "layout": "files"}
        errors[q] = np.abs(_decoded(d, rows).astype(float) - _synthesized_u8(rows)).mean()
    # quality 95 scales the codec's quantization steps to ~1/10 of the standard tables: errors of a
    # level or two on these smooth images (bound 3); quality 10 quantizes far more coarsely
    assert errors[95] < 3 and errors[10] > 2 * errors[95]
    # resuming in another format or quality is refused by the settings check, nothing changed
    before = _digest(tmp_path / f"{fmt}95")
    for kw in ({"image_format": "png"}, {"image_format": fmt, "quality": 90}):
        with pytest.raises(DatasetError, match=r"differs in \['output'\]"):
            write_dataset(tmp_path / f"{fmt}95", NaturalSource(_gen32(), _labs()), n=6, block_size=3, **kw)
    assert _digest(tmp_path / f"{fmt}95") == before


def test_output_options_are_validated_before_writing(tmp_path):
    for kw, msg in (({"quality": 90}, "png is lossless"), ({"image_format": "jpg", "quality": 0}, "1 .smallest"),
                    ({"image_format": "webp", "quality": 101}, "1 .smallest"),
                    ({"image_format": "jpg", "quality": 9.5}, "integer"), ({"image_format": "gif"}, "png, jpg, webp"),
                    ({"image_size": 0}, "positive integer"), ({"layout": "zip"}, "files, webdataset")):
        with pytest.raises(ValueError, match=msg):
            write_dataset(tmp_path / "d", NaturalSource(_gen32(), _labs()), n=4, **kw)
        assert not (tmp_path / "d").exists()


def test_resize_matches_pillow_bicubic():
    """Reference: Pillow's Image.resize(BICUBIC) on each float channel (mode "F"), which widens the
    filter by the scale factor when shrinking; torch's antialiased bicubic implements the same filter."""
    from PIL import Image

    from latent_balance.export import _resize

    torch.manual_seed(0)
    x = torch.tanh(torch.randn(2, 3, 32, 32) * 0.5)
    for size in (12, 20, 48):
        ref = np.stack([np.stack([np.asarray(Image.fromarray(x[i, c].numpy(), mode="F").resize((size, size), Image.BICUBIC))
                                  for c in range(3)]) for i in range(2)]).clip(-1, 1)
        np.testing.assert_allclose(_resize(x, size).numpy(), ref, atol=1e-5)  # float32 rounding (~4e-6 seen)
    u8 = ((x.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().astype(np.uint8)
    assert _resize(u8, 16).shape == (2, 3, 16, 16)  # uint8 [k, H, W, C] input
    assert _resize(x, 32) is x  # already that size: untouched
    assert _resize(torch.zeros(1, 3, 32, 64), 16).shape == (1, 3, 16, 32)  # aspect ratio kept


def test_image_size_writes_resized_images(tmp_path):
    from latent_balance._utils import images_to_uint8
    from latent_balance.export import _resize

    write_dataset(tmp_path / "d", NaturalSource(_gen32(), _labs()), n=6, block_size=3, image_size=12)
    rows = read_manifest(tmp_path / "d")
    got = _decoded(tmp_path / "d", rows)
    assert got.shape == (6, 12, 12, 3)
    g = _gen32()
    want = images_to_uint8(_resize(g.synthesize(g.to_latent(g.sample_z([r["seed"] for r in rows]))), 12))
    np.testing.assert_array_equal(got, want)
    assert json.loads((tmp_path / "d" / "settings.json").read_text())["output"]["image_size"] == 12


class WholeBlockSource(NaturalSource):
    """The natural source without ``produce``'s ``convert``: the writer converts whole blocks."""

    def produce(self, block, slots):
        return super().produce(block, slots)


@pytest.mark.parametrize("image_size", [None, 12])
def test_natural_source_converts_batch_by_batch_with_the_same_bytes(tmp_path, image_size):
    from latent_balance.export import _Converter

    kw = dict(n=10, block_size=5, image_size=image_size, workers=0)
    batches = write_dataset(tmp_path / "b", NaturalSource(_gen32(), _labs(), batch_size=2), **kw)
    write_dataset(tmp_path / "w", WholeBlockSource(_gen32(), _labs(), batch_size=64), **kw)
    assert _digest(tmp_path / "b") == _digest(tmp_path / "w")
    assert ("resizing" in batches["timings"]) == (image_size is not None)
    out = NaturalSource(_gen32(), _labs(), batch_size=2).produce(0, np.zeros(3, np.int64), convert=_Converter(image_size))
    assert out.images.dtype == np.uint8 and out.images.shape == (3, image_size or 32, image_size or 32, 3)


def test_a_source_given_convert_must_return_what_it_made(tmp_path):
    class Forgets(NaturalSource):
        def produce(self, block, slots, convert=None):
            return super().produce(block, slots)  # float images: convert ignored

    with pytest.raises(RuntimeError, match="uint8"):
        write_dataset(tmp_path / "d", Forgets(_gen32(), _labs()), n=4, block_size=4, workers=0)
    assert not (tmp_path / "d" / "blocks" / "00000.json").exists()


def test_webdataset_tars_hold_the_folder_output(tmp_path):
    import webdataset as wds

    write_dataset(tmp_path / "f", NaturalSource(_gen32(), _labs()), n=10, block_size=4, workers=0)
    write_dataset(tmp_path / "w", NaturalSource(_gen32(), _labs()), n=10, block_size=4, layout="webdataset",
                  workers=0)
    tars = sorted((tmp_path / "w" / "images").glob("*.tar"))
    assert [t.name for t in tars] == ["00000.tar", "00001.tar", "00002.tar"]  # one per block
    assert not list((tmp_path / "w" / "images").glob("*.png"))
    samples = list(wds.WebDataset([str(t) for t in tars], shardshuffle=False))
    files = read_manifest(tmp_path / "f")
    rows = read_manifest(tmp_path / "w")
    assert [s["__key__"] for s in samples] == [f"{i:07d}" for i in range(10)]
    for s, frow, row in zip(samples, files, rows):
        assert s["png"] == (tmp_path / "f" / frow["file"]).read_bytes()  # the same image bytes
        record = json.loads(s["json"])
        assert record == row  # the manifest row ...
        assert record["file"] == f"images/{row['block']:05d}.tar" and record["member"] == f"{row['index']:07d}.png"
        # ... which is the folder's row but for where the image is
        assert {k: v for k, v in record.items() if k not in ("file", "member")} == \
               {k: v for k, v in frow.items() if k != "file"}
    card_f = json.loads((tmp_path / "f" / "dataset_card.json").read_text())
    card_w = json.loads((tmp_path / "w" / "dataset_card.json").read_text())
    assert card_f["achieved"] == card_w["achieved"]


def test_webdataset_resume_and_merge_are_identical(tmp_path):
    kw = dict(n=14, block_size=4, layout="webdataset", image_format="jpg", quality=80, image_size=16)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(tmp_path / "d", Crashing(_gen32(), _labs(), crash_at=2), **kw)
    res = write_dataset(tmp_path / "d", NaturalSource(_gen32(), _labs()), **kw)
    assert res["blocks_skipped"] == 2 and res["complete"]
    write_dataset(tmp_path / "ref", NaturalSource(_gen32(), _labs()), **kw)
    assert _digest(tmp_path / "d") == _digest(tmp_path / "ref")
    for i in range(2):
        write_dataset(tmp_path / f"s{i}", NaturalSource(_gen32(), _labs()), shard=i, num_shards=2, **kw)
    merge_shards([tmp_path / "s0", tmp_path / "s1"], tmp_path / "m")
    assert _digest(tmp_path / "m") == _digest(tmp_path / "ref")


class SlowSource(NaturalSource):
    """Reports fixed stage times (seconds per block) instead of measured ones, so the card's sums are known."""

    def produce(self, block, slots):
        out = super().produce(block, slots)
        out.timings = {"latent": 0.25, "synthesis": 1.5, "labeling": 0.125}
        return out


def test_card_shows_time_per_stage(tmp_path):
    res = write_dataset(tmp_path / "d", SlowSource(_gen32(), _labs()), n=12, block_size=4)
    card = json.loads((tmp_path / "d" / "dataset_card.json").read_text())
    tm = card["time"]
    assert tm["blocks_timed"] == tm["blocks"] == 3 and tm["encode_workers"] == [0]
    # the source's stage times, summed over the 3 blocks (exact: the values are binary fractions)
    assert (tm["seconds"]["proposals"], tm["seconds"]["synthesis"], tm["seconds"]["labelling"]) == (0.75, 4.5, 0.375)
    assert tm["seconds"]["resizing"] == 0
    assert tm["seconds"]["encoding"] > 0 and tm["seconds"]["writing"] > 0
    assert tm["seconds"]["encoding"] == pytest.approx(res["timings"]["encoding"])
    assert tm["ms_per_image"]["synthesis"] == pytest.approx(4.5e3 / 12)
    md = (tmp_path / "d" / "dataset_card.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("- time per stage"))
    assert "proposals 0.75, synthesis 4.50, labelling 0.38, encoding" in line and "resizing" not in line
    # shards: the merged card covers every block (the shards' run logs are merged)
    for i in range(2):
        write_dataset(tmp_path / f"s{i}", SlowSource(_gen32(), _labs()), n=12, block_size=4, shard=i, num_shards=2)
    merge_shards([tmp_path / "s0", tmp_path / "s1"], tmp_path / "m")
    tm = json.loads((tmp_path / "m" / "dataset_card.json").read_text())["time"]
    assert tm["blocks_timed"] == 3 and tm["seconds"]["synthesis"] == 4.5


def test_encoding_pool_is_spawn_safe(tmp_path, monkeypatch):
    """Where the platform has no forkserver the pool starts with spawn (workers import the module afresh,
    inherit nothing): the same bytes, and the slower start is said once."""
    import multiprocessing

    from latent_balance import export

    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    monkeypatch.setattr(export, "warn_once", lambda key, msg: warnings.warn(msg, RuntimeWarning))
    with pytest.warns(RuntimeWarning, match="spawn"):
        res = write_dataset(tmp_path / "s", NaturalSource(_gen32(), _labs()), n=20, block_size=10, workers=2)
    assert res["encode_workers"] == 2 and res["peak_images_in_flight"] > 0
    write_dataset(tmp_path / "t", NaturalSource(_gen32(), _labs()), n=20, block_size=10, workers=0)
    assert _digest(tmp_path / "s") == _digest(tmp_path / "t")


def test_uint8_conversion_on_an_accelerator_rounds_as_on_the_host():
    """Images on a GPU are converted there (a quarter of the bytes cross to the host); the same float32
    operations, so the same bytes as images_to_uint8, ties at .5 included. The device is stood in for by an
    object that reports device type 'cuda' and runs the tensor operations on the CPU."""
    from types import SimpleNamespace

    from latent_balance._utils import images_to_uint8
    from latent_balance.export import _to_uint8

    torch.manual_seed(0)
    x = torch.rand(4, 3, 16, 16) * 2.2 - 1.1
    x[0, 0, 0, :6] = torch.tensor([k / 127.5 - 1 for k in (0.5, 1.5, 2.5, 253.5, 254.5, 255.0)])  # ties, the top

    class OnDevice:
        device = SimpleNamespace(type="cuda")

        def to(self, dtype):
            return x.to(dtype)

    np.testing.assert_array_equal(_to_uint8(OnDevice()), images_to_uint8(x))
    u8 = images_to_uint8(x)
    assert _to_uint8(u8) is u8
