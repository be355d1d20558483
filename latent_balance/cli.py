"""The ``latent-balance`` command line: thin click commands over the library.

Every command takes ``--config FILE.yaml`` whose keys are the command's option names (with
underscores or dashes); flags given on the command line override it. Exit codes: 0 success, 2 bad
usage or input (nothing written), 1 runtime failure. Errors are one line; ``--verbose`` shows the
traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path

import click
import yaml

from ._utils import ModelPackageMissing

EXAMPLES = {
    "probe": "latent-balance probe --generator dcgan-faces --attributes gender,age,smile --n 20000 --out probes.npz",
    "merge": "latent-balance merge out/shard0 out/shard1 --out out/all",
    "info": "latent-balance info probes.npz",
}


class InputError(click.ClickException):
    """Bad usage or input: exit code 2."""

    exit_code = 2

    def show(self, file=None):
        click.echo(f"error: {self.format_message()}", err=True)


class RuntimeFailure(click.ClickException):
    """A failure while running: exit code 1."""

    exit_code = 1

    def show(self, file=None):
        click.echo(f"error: {self.format_message()}", err=True)


_INPUT_ERRORS = (ValueError, KeyError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
                 TypeError, yaml.YAMLError)


def _run(ctx: click.Context, fn, *args, **kwargs):
    """Call library code, mapping its exceptions to exit codes and one-line messages."""
    verbose = ctx.find_root().params.get("verbose", False)
    try:
        return fn(*args, **kwargs)
    except click.ClickException:
        raise
    except KeyboardInterrupt:
        click.echo("interrupted; re-run the same command to resume", err=True)
        sys.exit(130)
    except ModelPackageMissing as err:
        if verbose:
            traceback.print_exc()
        raise RuntimeFailure(str(err)) from err
    except _INPUT_ERRORS as err:
        if verbose:
            traceback.print_exc()
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        raise InputError(f"{msg}") from err
    except Exception as err:  # noqa: BLE001 - the CLI's last line of defence
        if verbose:
            traceback.print_exc()
        raise RuntimeFailure(f"{type(err).__name__}: {err} (run with --verbose for the traceback)") from err


def _load_config(ctx: click.Context, param: click.Parameter, value):
    """``--config``: YAML mapping of option names -> values, used as defaults (flags override)."""
    if value is None:
        return None
    try:
        data = yaml.safe_load(Path(value).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise InputError(f"cannot read config {value}: {err}") from err
    if not isinstance(data, dict):
        raise InputError(f"config {value} must be a YAML mapping of option names to values")
    known = {p.name for p in ctx.command.params}
    norm = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(norm) - known)
    if unknown:
        raise InputError(f"config {value}: unknown settings {unknown}; known: {sorted(known - {'config'})}")
    ctx.default_map = {**(ctx.default_map or {}), **norm}
    return value


def config_option(f):
    return click.option("--config", type=click.Path(dir_okay=False), callback=_load_config, is_eager=True,
                        expose_value=False, help="YAML file with any of this command's settings; flags override it.")(f)


def _check_writable_target(path: Path) -> None:
    """Fail (exit 2) before any work if `path` cannot be created or written."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir() and probe != path:
        raise InputError(f"cannot create {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK):
        raise InputError(f"cannot write to {path}: {probe} is not writable")


def _csv(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _generator(spec: str, truncation_psi: float | None, device: str | None):
    from .generators import load_generator

    kwargs = {}
    if truncation_psi is not None:
        kwargs["truncation_psi"] = truncation_psi
    return load_generator(spec, device=device, **kwargs)


def _labelers(attributes, labelers_spec):
    import attributes as attrs_pkg

    if labelers_spec:
        return attrs_pkg.load_labelers(labelers_spec)
    names = _csv(attributes)
    if not names:
        raise InputError("give --attributes (e.g. gender,age,smile) or --labelers SPEC.yaml")
    return attrs_pkg.load_labelers(names)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--verbose", "-v", is_flag=True, help="Show tracebacks and debug logging.")
@click.version_option(package_name="latent-balance")
def main(verbose: bool):
    """Balanced (or any chosen) attribute distributions from pretrained GANs, without retraining.

    \b
    Typical pipeline:
      latent-balance probe  --generator dcgan-faces --attributes gender,age,smile --n 20000 --out probes.npz
      latent-balance fit    --probes probes.npz --out model.npz
      latent-balance sample --model model.npz --n 2000 --out dataset/
      latent-balance audit  dataset/
    or all at once, offline, on the packaged face GAN:
      latent-balance demo --out demo/
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s")
    logging.getLogger("latent_balance").setLevel(logging.DEBUG if verbose else logging.INFO)


# ------------------------------------------------------------------------------------------------
@main.command(epilog="Example:\n\n  " + EXAMPLES["probe"])
@config_option
@click.option("--generator", "generator_spec", default="dcgan-faces", show_default=True,
              help="Built-in generator name or checkpoint path (.pkl NVIDIA, .pt rosinality/ours).")
@click.option("--attributes", default=None, help="Comma-separated built-in labelers, e.g. gender,age,smile.")
@click.option("--labelers", "labelers_spec", default=None, type=click.Path(dir_okay=False),
              help="YAML labeler spec (instead of --attributes).")
@click.option("--n", type=click.IntRange(min=1), required=True, help="Number of probes.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Probe file (.npz); grown if it exists.")
@click.option("--start", type=click.IntRange(min=0), default=0, show_default=True, help="First seed.")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--truncation-psi", type=float, default=None, help="StyleGAN2 truncation (default 1: none).")
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.pass_context
def probe(ctx, generator_spec, attributes, labelers_spec, n, out, start, batch_size, truncation_psi, device):
    """Sample and label probe latents (the data boundaries are fitted on)."""
    from .probes import build_probes

    out = Path(out)
    _check_writable_target(out)
    gen = _run(ctx, _generator, generator_spec, truncation_psi, device)
    labs = _run(ctx, _labelers, attributes, labelers_spec)
    ps = _run(ctx, build_probes, gen, labs, n, path=out, start=start, batch_size=batch_size)
    click.echo(f"{len(ps)} probes in {out} ({', '.join(ps.attributes)})")


@main.command(epilog="Example:\n\n  " + EXAMPLES["merge"])
@click.argument("shards", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Merged dataset folder.")
@click.pass_context
def merge(ctx, shards, out):
    """Merge dataset shards (written with --shard i --num-shards n) into one dataset."""
    from .export import merge_shards

    for s in shards:
        if not Path(s).is_dir():
            raise InputError(f"shard folder {s} does not exist")
    _check_writable_target(Path(out))
    card = _run(ctx, merge_shards, list(shards), out)
    click.echo(f"merged {len(shards)} shards: {card['n_images']} images in {out}")


@main.command(epilog="Example:\n\n  " + EXAMPLES["info"])
@click.argument("path", type=click.Path(exists=False))
@click.pass_context
def info(ctx, path):
    """Describe a checkpoint, probe file, model file or dataset folder."""
    click.echo(json.dumps(_run(ctx, describe_path, Path(path)), indent=2, sort_keys=True, default=str))


def describe_path(path: Path) -> dict:
    """What `path` is and what it holds (used by ``latent-balance info``)."""
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_dir():
        settings = path / "settings.json"
        if not settings.exists():
            raise ValueError(f"{path} is a folder but not a latent-balance dataset (no settings.json)")
        out = {"kind": "dataset", "settings": json.loads(settings.read_text())}
        card = path / "dataset_card.json"
        if card.exists():
            c = json.loads(card.read_text())
            out.update(complete=True, n_images=c["n_images"], metrics=c["metrics"], cost=c["cost"])
        else:
            out.update(complete=False, blocks_done=len(list((path / "blocks").glob("*.json"))))
        return out
    if path.suffix == ".npz":
        import numpy as np

        with np.load(path, allow_pickle=False) as data:
            files = set(data.files)
            meta = json.loads(bytes(data["meta"]).decode()) if "meta" in files else {}
        fmt = meta.get("format", "")
        if fmt == "latent-balance-probes":
            from .probes import ProbeSet

            ps = ProbeSet.load(path)
            return {"kind": "probes", "n": len(ps), "latent_dim": int(ps.latents.shape[1]),
                    "attributes": {a: {"classes": list(ps.classes[a]),
                                       "counts": np.bincount(ps.labels(a), minlength=len(ps.classes[a])).tolist()}
                                   for a in ps.attributes},
                    "generator": ps.meta.get("generator"), "labelers": ps.meta.get("labelers")}
        if fmt:
            return {"kind": fmt, "meta": meta}
        raise ValueError(f"{path} is an .npz file but not one latent-balance wrote")
    if path.suffix in (".pkl", ".pt", ".pth"):
        import stylegan_ops

        G = stylegan_ops.load_generator(path)
        return {"kind": "stylegan2 checkpoint", "z_dim": G.z_dim, "c_dim": G.c_dim, "w_dim": G.w_dim,
                "num_ws": G.num_ws, "img_resolution": G.img_resolution,
                "parameters": int(sum(p.numel() for p in G.parameters()))}
    raise ValueError(f"cannot describe {path}: expected a dataset folder, a .npz probe/model file or a checkpoint")


if __name__ == "__main__":  # pragma: no cover
    main()
