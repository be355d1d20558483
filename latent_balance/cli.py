"""The ``latent-balance`` command line: thin click commands over the library.

Every command takes ``--config FILE.yaml`` whose keys are the command's option names (with
underscores or dashes); flags given on the command line override it. Exit codes: 0 success, 2 bad
usage or input (nothing written), 1 runtime failure. Errors are one line; ``--verbose`` shows the
traceback.

(Kept as one file of ~730 lines on purpose: every command's options, help texts and exit codes in one
place, so they are reviewed side by side; each command body only parses and calls the library.)
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
import warnings
from pathlib import Path

import click
import numpy as np
import yaml

from ._utils import ModelPackageMissing

EXAMPLES = {
    "probe": "latent-balance probe --generator dcgan-faces --attributes gender,age,smile --n 20000 --out probes.npz",
    "merge": "latent-balance merge out/shard0 out/shard1 --out out/all",
    "info": "latent-balance info probes.npz",
    "fit": "latent-balance fit --probes probes.npz --out model.npz --posterior auto",
    "sample": ("latent-balance sample --model model.npz --n 2000 --out dataset/ --verify\n\n"
               "  latent-balance sample --model model.npz --n 64 --cell female,old,smiling --out group/"
               "   # verified: every image is labelled female,old,smiling\n\n"
               "  latent-balance sample --model model.npz --target target.yaml --n 10000 --out part0/ --shard 0 --num-shards 4"),
    "audit": "latent-balance audit dataset/ --natural-n 1000\n\n  latent-balance audit --generator dcgan-faces --attributes gender,age,smile --n 2000 --report-dir natural/",
    "demo": "latent-balance demo --out demo/",
    "evaluate": ("latent-balance evaluate dataset/ --classifier mypkg.models:classify --task smile=smiling\n\n"
                 "  latent-balance evaluate dataset/ --classifier model.onnx --task smile=smiling --counterfactual gender "
                 "--model model.npz\n\n"
                 "  latent-balance evaluate dataset/ --system mypkg.sr:upscale"),
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
        # the library names its arguments; the CLI user knows the flags
        raise InputError(_cli_names(str(msg))) from err
    except Exception as err:  # noqa: BLE001 - the CLI's last line of defence
        if verbose:
            traceback.print_exc()
        from .sampling import BudgetError

        if isinstance(err, BudgetError):  # a run out of budget mid-way: what was written stays, say how to go on
            text = str(err)
            for pattern, flag in _API_TO_FLAG:
                text = pattern.sub(flag, text)
            raise RuntimeFailure(f"BudgetError: {text}; finished blocks (of --block-size images) are kept, the "
                                 f"unfinished one is not: rerun the same command with a higher budget (e.g. "
                                 f"--max-synthesis-per-image) to resume") from err
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
    # keys are the flags' names (``block-size`` or ``block_size``, ``model`` for ``--model``)
    names: dict[str, str] = {}
    for p in ctx.command.params:
        if isinstance(p, click.Option) and p.name != "config":
            for opt in p.opts:
                names[opt.lstrip("-").replace("-", "_")] = p.name
    norm, unknown = {}, []
    for k, v in data.items():
        key = str(k).replace("-", "_")
        if key in names:
            norm[names[key]] = v
        else:
            unknown.append(str(k))
    if unknown:
        known = sorted({k.replace("_", "-") for k in names})
        raise InputError(f"config {value}: unknown settings {sorted(unknown)}; known: {known}")
    ctx.default_map = {**(ctx.default_map or {}), **norm}
    return value


# ------------------------------------------------------------------------------------------------
# Warnings and progress as the CLI shows them
# ------------------------------------------------------------------------------------------------
# Library warnings name API arguments; from the CLI they name its flags instead.
_API_TO_FLAG = [
    (re.compile(r"\bverify=True\b"), "--verify"),
    (re.compile(r"\bmax_synthesis_per_image\b"), "--max-synthesis-per-image"),
    (re.compile(r"\bmax_sharpness\b"), "--max-sharpness"),
    (re.compile(r"\bmin_diversity\b"), "--min-diversity"),
    (re.compile(r"\bmax_cell_tv\b"), "--max-cell-tv"),
    (re.compile(r"\b([Rr]aise|[Ll]ower) the sharpness\b"), r"\1 --sharpness"),
    (re.compile(r"\brelax the target\b"), "relax the target (--target)"),
    (re.compile(r"\bthreshold='calibrate'"), "--threshold calibrate"),
    (re.compile(r"\bmax_natural_match\b"), "--max-natural-match"),
    (re.compile(r"\bnatural_probes\b"), "--natural-probes"),
    (re.compile(r"\bprobes_per_reference\b"), "--probes-per-reference"),
]
# settings keys (as a resume refusal lists them, quoted) that are CLI flags
_SETTING_FLAGS = re.compile(r"'(verify|sharpness|seed|mode|threshold|exclude|target)'")


def _cli_names(text: str) -> str:
    """`text` with the library's argument and settings names replaced by the CLI flags that set them."""
    for pattern, flag in _API_TO_FLAG:
        text = pattern.sub(flag, text)
    return _SETTING_FLAGS.sub(lambda m: f"'--{m.group(1)}'", text)


_CAP_NEEDS_VERIFY = ("--max-cell-tv bounds what verification keeps in each cell: it needs --verify (latent-only "
                     "sampling does not know an image's cell)")
# Library warnings about a measure's sample size: the flags that change it.
_HINTS = [(("frechet_distance:", "mean_pairwise_lpips:"),
           "(more images per cell: --n, --natural-n; --no-image-metrics skips these measures)")]
_MAX_WARNING_CHARS = 600  # longer messages (e.g. compiler output) are cut; --verbose shows them whole


def _warning_line(message: str, verbose: bool = False) -> str:
    """One line for a library warning shown by the CLI (CLI flags for API arguments).

    Warnings that a setting makes moot are not raised by the library in the first place (e.g. the
    sampler's reachability warning is not raised with verify, which makes counts exact).
    """
    text = " ".join(str(message).split())
    for pattern, flag in _API_TO_FLAG:
        text = pattern.sub(flag, text)
    for prefixes, hint in _HINTS:
        if text.startswith(prefixes):
            text = f"{text} {hint}"
    if not verbose and len(text) > _MAX_WARNING_CHARS:
        text = text[: _MAX_WARNING_CHARS - 40] + " ... (--verbose shows the whole message)"
    return f"latent-balance: warning: {text}"


def _install_warning_display(ctx: click.Context, verbose: bool) -> None:
    """Show warnings as one line each, without Python file, line and source, for the rest of `ctx`."""
    import warnings

    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        click.echo(_warning_line(str(message), verbose), err=True)

    warnings.showwarning = show
    ctx.call_on_close(lambda: setattr(warnings, "showwarning", previous))


def _set_quiet(ctx: click.Context, param: click.Parameter, value):
    from ._utils import set_progress

    if value:
        set_progress(False)
    return value


def quiet_option(f):
    return click.option("--quiet", "-q", is_flag=True, default=False, expose_value=False, callback=_set_quiet,
                        help="No progress output (results, warnings and errors are still printed).")(f)


def _metrics_line(m: dict, band: dict | None = None) -> str:
    """``KL .. nats, TV .., worst-cell ratio ..``; with `band`, each with its target band's limit.

    Values may be None in files written as standard JSON (KL is then infinite: images in excluded cells).
    """
    def num(key, digits):
        v = m.get(key)
        return ("inf" if key == "kl" else "n/a") if v is None else f"{v:.{digits}f}"

    def lim(key, digits):
        if not band or key not in band:
            return ""
        lo, hi = band[key]
        return f" (target band: >= {lo:.{digits}f})" if key == "worst_cell_ratio" else f" (target band: <= {hi:.{digits}f})"

    return (f"KL {num('kl', 4)} nats{lim('kl', 4)}, TV {num('tv', 4)}{lim('tv', 4)}, "
            f"worst-cell ratio {num('worst_cell_ratio', 3)}{lim('worst_cell_ratio', 3)}")


def config_option(f):
    return click.option("--config", type=click.Path(dir_okay=False), callback=_load_config, is_eager=True,
                        expose_value=False, help="YAML file with any of this command's settings; flags override it.")(f)


def _check_writable_target(path: Path) -> None:
    """Fail (exit 2) before any work if `path` cannot be created or written.

    Tries to create (and removes) a temporary file in the nearest existing folder, so the check is
    real for every user, root included; nothing is left behind.
    """
    import tempfile

    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        if probe == path and path.is_file():
            probe = path.parent
        else:
            raise InputError(f"cannot create {path}: {probe} is a file, not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".latent-balance-write-check-"):
            pass
    except OSError as err:
        raise InputError(f"cannot write to {path}: {probe} is not writable ({err.strerror})") from None


def _csv(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _generator(spec: str, truncation_psi: float | None, device: str | None, class_index: int | None = None,
               seed_scheme: str | None = None):
    from .generators import load_generator

    return load_generator(spec, device=device, **_generator_kwargs(truncation_psi, class_index, seed_scheme))


def _generator_kwargs(truncation_psi=None, class_index=None, seed_scheme=None) -> dict:
    """The adapter keyword arguments the generator options give (recorded in dataset settings).
    `class_index`: --class K (an int), or --classes ("all" or a list of ints, see :func:`class_option`)."""
    kwargs = {}
    if truncation_psi is not None:
        kwargs["truncation_psi"] = truncation_psi
    if isinstance(class_index, (list, tuple, str)):
        kwargs["classes"] = class_index if isinstance(class_index, str) else [int(k) for k in class_index]
    elif class_index is not None:
        kwargs["class_index"] = class_index
    if seed_scheme is not None and seed_scheme != "pcg64":
        kwargs["seed_scheme"] = seed_scheme
    return kwargs


def _one_class(ctx, param, value):
    several = ctx.meta.get("latent_balance.classes")
    if value is not None and several is not None:
        raise click.BadParameter("give --class K (one class) or --classes (several), not both", ctx, param)
    return several if several is not None else value


def _several_classes(ctx, param, value):
    """--classes: "all" or comma-separated class indices; handed on in the --class parameter (class_index)."""
    if value is None:
        return
    text = value.strip()
    if text == "all":
        parsed = "all"
    else:
        try:
            parsed = [int(v) for v in text.split(",")]
        except ValueError:
            raise click.BadParameter(f"expected 'all' or comma-separated class indices (e.g. 0,3,7), got {value!r}",
                                     ctx, param) from None
        if any(k < 0 for k in parsed) or len(set(parsed)) != len(parsed):
            raise click.BadParameter(f"class indices must be distinct and >= 0, got {value!r}", ctx, param)
    if ctx.params.get("class_index") is not None:
        raise click.BadParameter("give --class K (one class) or --classes (several), not both", ctx, param)
    ctx.meta["latent_balance.classes"] = parsed
    if "class_index" in ctx.params:  # --class was processed first (not given)
        ctx.params["class_index"] = parsed


def class_option(f):
    f = click.option("--classes", default=None, expose_value=False, callback=_several_classes,
                     help="Sample a conditional generator over several classes: 'all' or class indices (0,3,7), "
                          "each image's class drawn uniformly from its seed. The class becomes the exactly known "
                          "attribute 'class' (no labeler; targets may balance it). Not with --class.")(f)
    return click.option("--class", "class_index", type=click.IntRange(min=0), default=None, callback=_one_class,
                        help="Class of a conditional generator (c_dim > 0): one-hot label, as NVIDIA's generate.py "
                             "--class. Required for conditional generators (or --classes), refused for "
                             "unconditional ones.")(f)


def seed_scheme_option(f):
    return click.option("--seed-scheme", type=click.Choice(["pcg64", "nvidia"]), default="pcg64", show_default=True,
                        help="Seed -> z: pcg64 (default: fast, one PCG64 stream per seed) or nvidia "
                             "(np.random.RandomState(seed).randn(z_dim), the seeds of NVIDIA's generate.py).")(f)


def engine_options(f):
    f = click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=None,
                     help="--engine ray: GPUs reserved per worker (default 0: CPU workers).")(f)
    f = click.option("--num-workers", type=click.IntRange(min=1), default=None,
                     help="--engine ray: workers (default: one per CPU of the cluster, or per --gpus-per-worker "
                          "GPUs).")(f)
    f = click.option("--address", default=None,
                     help="--engine ray: address of a running Ray cluster (default: a new local one).")(f)
    return click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                        help="local: this process; ray: Ray workers on this machine or a cluster, the same "
                             "output as local (needs latent-balance[ray]; see the README).")(f)


def _engine(engine, address, num_workers, gpus_per_worker, device, shards: int = 1) -> tuple[dict, str | None]:
    """(Ray options, device) for --engine; the device is fixed for Ray so that driver and workers agree."""
    given = [o for o, v in (("--address", address), ("--num-workers", num_workers),
                            ("--gpus-per-worker", gpus_per_worker)) if v is not None]
    if engine != "ray":
        if given:
            raise InputError(f"{', '.join(given)} apply only with --engine ray")
        return {}, device
    if shards > 1:
        raise InputError("--engine ray spreads all blocks over its workers; --shard/--num-shards do not apply")
    gpus = float(gpus_per_worker or 0.0)
    return ({"address": address, "num_workers": num_workers, "gpus_per_worker": gpus},
            device or ("cuda" if gpus > 0 else "cpu"))


def _abs_if_file(value):
    """A path option made absolute when it names an existing file (engine workers may run elsewhere)."""
    return str(Path(value).resolve()) if isinstance(value, str) and Path(value).is_file() else value


def _rebuild_sample_source(p: dict):
    """`sample`'s block source, built again in an engine worker from the driver's resolved options."""
    from .sampling import BalancedSource
    from .sources import NaturalSource
    from .subgroups import SubgroupModel

    ctx = click.Context(main)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the driver has shown the planning warnings
        model = SubgroupModel.load(p["model"])
        gen = _generator(p["generator"], p["truncation_psi"], p["device"], p["class_index"], p["seed_scheme"])
        labs = _labelers(p["attributes"], p["labelers_spec"])
        if p["mode"] == "natural":
            return NaturalSource(gen, labs, attributes=list(model.space_.attributes), target=p["natural_target"],
                                 seed=p["seed"], batch_size=p["batch_size"])
        return BalancedSource(_sampler(ctx, gen, model, p["target"], p["mode"], p["verify"], labs, p["sharpness"],
                                       p["threshold"], p["seed"], p["batch_size"], p["block_size"], cell=p["cell"],
                                       max_sharpness=p["max_sharpness"],
                                       max_synthesis_per_image=p["max_synthesis_per_image"],
                                       min_diversity=p.get("min_diversity"), exclude=p.get("exclude"),
                                       max_cell_tv=p.get("max_cell_tv")))


def _model_file(model_path: str) -> str:
    """`--model`: a file, or the name of a built-in generator that ships a fitted model."""
    from .generators import _packaged_model_path

    if not Path(model_path).exists():
        packaged = _packaged_model_path(model_path)
        if packaged is not None:
            return str(packaged)
    return model_path


def _labelers(attributes, labelers_spec):
    import attributes as attrs_pkg

    if labelers_spec:
        return attrs_pkg.load_labelers(labelers_spec)
    names = _csv(attributes)
    if not names:
        raise InputError("give --attributes (e.g. gender,age,smile) or --labelers SPEC.yaml")
    return attrs_pkg.load_labelers(names)


class _OneLineErrors(click.Group):
    """The command group, whose usage errors (missing or unknown options, bad values) print one line
    like every other error: ``error: <message> (see 'latent-balance sample --help')``, exit code 2."""

    def main(self, *args, **kwargs):
        if not kwargs.pop("standalone_mode", True):
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as err:
            where = err.ctx.command_path if err.ctx is not None else "latent-balance"
            click.echo(f"error: {err.format_message()} (see '{where} --help')", err=True)
            sys.exit(err.exit_code)
        except click.ClickException as err:
            err.show()
            sys.exit(err.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--verbose", "-v", is_flag=True, help="Show tracebacks and debug logging.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output (also accepted after the command name).")
@click.version_option(package_name="latent-balance")
@click.pass_context
def main(ctx: click.Context, verbose: bool, quiet: bool):
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
    from ._utils import set_progress

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("latent_balance").setLevel(logging.DEBUG if verbose else logging.INFO)
    set_progress(not quiet)  # progress on stderr: a bar on a terminal, else a line every ~10 s
    _install_warning_display(ctx, verbose)


# ------------------------------------------------------------------------------------------------
@main.command(epilog="Example:\n\n  " + EXAMPLES["probe"])
@config_option
@quiet_option
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
@class_option
@seed_scheme_option
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@engine_options
@click.pass_context
def probe(ctx, generator_spec, attributes, labelers_spec, n, out, start, batch_size, truncation_psi, class_index,
          seed_scheme, device, engine, address, num_workers, gpus_per_worker):
    """Sample and label probe latents (the data boundaries are fitted on)."""
    import functools

    from .probes import build_probes

    out = Path(out)
    _check_writable_target(out)
    if isinstance(class_index, (list, str)) and attributes:  # --classes: 'class' is known, it needs no labeler
        attributes = ",".join(a for a in _csv(attributes) if a != "class") or None
    ray_opts, device = _engine(engine, address, num_workers, gpus_per_worker, device)
    if ray_opts:
        from .distributed import build_probes_ray

        make_gen = functools.partial(_generator, _abs_if_file(generator_spec), truncation_psi, device, class_index,
                                     seed_scheme)
        make_labs = functools.partial(_labelers, attributes, _abs_if_file(labelers_spec))
        ps = _run(ctx, build_probes_ray, make_gen, make_labs, n, path=out, start=start, batch_size=batch_size,
                  **ray_opts)
        click.echo(f"{len(ps)} probes in {out} ({', '.join(ps.attributes)})")
        return
    gen = _run(ctx, _generator, generator_spec, truncation_psi, device, class_index, seed_scheme)
    labs = _run(ctx, _labelers, attributes, labelers_spec)
    ps = _run(ctx, build_probes, gen, labs, n, path=out, start=start, batch_size=batch_size)
    click.echo(f"{len(ps)} probes in {out} ({', '.join(ps.attributes)})")


@main.command(epilog="Example:\n\n  " + EXAMPLES["merge"])
@quiet_option
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
    """Describe a checkpoint, probe, model or person file (.npz), a .labeler file or a dataset folder.

    A built-in generator's name (e.g. stylegan2-faces) describes the subgroup model it ships."""
    from ._utils import json_dumps

    # a built-in generator's name describes the model it ships (as `sample --model NAME` uses it)
    from .generators import available_generators

    if not Path(path).exists() and path in available_generators() and _model_file(path) == path:
        raise InputError(f"{path} is a built-in generator that ships no fitted model; `info` describes files "
                         f"(checkpoints, probe / model / person files, .labeler files, dataset folders)")
    click.echo(json_dumps(_run(ctx, describe_path, Path(_model_file(path))), indent=2, sort_keys=True))


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
    if path.suffix == ".labeler":
        from .example_labelers import load_labeler

        lab = load_labeler(path)
        return {"kind": "labeler", "name": lab.name, "classes": list(lab.classes), "id": lab.id, "report": lab.report}
    if path.suffix in (".pkl", ".pt", ".pth"):
        import stylegan_ops

        G = stylegan_ops.load_generator(path)
        out = {"kind": "stylegan2 checkpoint", "z_dim": G.z_dim, "c_dim": G.c_dim, "w_dim": G.w_dim,
               "num_ws": G.num_ws, "img_resolution": G.img_resolution, "img_channels": G.img_channels,
               "parameters": int(sum(p.numel() for p in G.parameters()))}
        if getattr(G, "checkpoint_notes", None):
            out["checkpoint_notes"] = dict(G.checkpoint_notes)
        return out
    raise ValueError(f"cannot describe {path}: expected a dataset folder, a .npz probe, model or person file, a "
                     f".labeler file or a checkpoint (.pkl, .pt, .pth)")


# ------------------------------------------------------------------------------------------------
@main.command(epilog="Example:\n\n  " + EXAMPLES["fit"])
@config_option
@click.option("--probes", type=click.Path(dir_okay=False), required=True, help="Probe file from `probe`.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Model file (.npz) to write.")
@click.option("--attributes", default=None, help="Attributes spanning the cells (default: all in the probes).")
@click.option("--posterior", type=click.Choice(["auto", "independent", "joint", "mlp"]), default="auto",
              show_default=True, help="P(cell | latent): product of calibrated SVMs, joint logistic, or an MLP.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Held-out split seed.")
@click.pass_context
def fit(ctx, probes, out, attributes, posterior, seed):
    """Fit calibrated linear boundaries and the subgroup model on a probe file."""
    from .probes import ProbeSet
    from .subgroups import SubgroupModel

    _check_writable_target(Path(out))
    ps = _run(ctx, ProbeSet.load, probes)
    model = _run(ctx, lambda: SubgroupModel(attributes=_csv(attributes) or None, posterior=posterior, seed=seed).fit(ps))
    _run(ctx, model.save, out)
    summ = model.summary()
    for a, rep in summ["boundaries"].items():
        click.echo(f"{a}: held-out accuracy {rep['accuracy']:.3f} (majority class {rep['majority_accuracy']:.3f}), "
                   f"calibration error (ECE) {rep['ece']:.3f} on {rep['n_heldout']} held-out probes")
        if rep["accuracy"] <= rep["majority_accuracy"]:
            click.echo(_warning_line(f"{a}: the boundary is no more accurate on held-out probes than always "
                                     f"answering the majority class ({rep['accuracy']:.3f} <= "
                                     f"{rep['majority_accuracy']:.3f}): the latent barely predicts {a}, so "
                                     f"latent-only sampling cannot balance it; use --verify (exact counts, at a "
                                     f"synthesis cost) or more probes"), err=True)
    click.echo(f"posterior: {summ['posterior']}; model written to {out}")


def _sampler(ctx, generator, model, target, mode, verify, labelers, sharpness, threshold, seed, batch_size,
             block_size, cell=None, max_sharpness=None, max_synthesis_per_image=10.0, min_diversity=None, exclude=None,
             max_cell_tv=None):
    from .sampling import BalancedSampler

    sharp = sharpness if sharpness == "auto" else float(sharpness)
    if cell:
        # One subgroup: start from any supported matching cell; for_cell sets the natural conditional.
        spec = _cell_spec(cell, model.space_.attributes)
        ok = _run(ctx, model.space_.match, spec) & (model.natural_["counts"] >= 5)
        target = {"cells": {model.space_.ids[int(i)]: 1.0 for i in np.flatnonzero(ok)[:1]}} if ok.any() else None

    def build():
        from .sampling import SamplingError

        try:
            s = BalancedSampler(generator, model, target, mode=mode, verify=verify, labelers=labelers, sharpness=sharp,
                                threshold=threshold, seed=seed, batch_size=batch_size, block_size=block_size,
                                max_sharpness=max_sharpness, max_synthesis_per_image=max_synthesis_per_image,
                                **({} if min_diversity is None else {"min_diversity": min_diversity}),
                                **({} if max_cell_tv is None or not verify else {"max_cell_tv": max_cell_tv}),
                                **({"exclude": list(exclude)} if exclude else {}))
            return s.for_cell(spec) if cell else s
        except SamplingError as err:  # a budget or target it cannot meet, found while planning: nothing made yet
            hint = " (raise it with --max-synthesis-per-image)" if "max_synthesis_per_image" in str(err) else ""
            raise InputError(_cli_names(f"{err}{hint}")) from err

    return _run(ctx, build)


def _verify_reason(ctx, model, target, cell) -> str | None:
    """Why `sample` verifies by default (None: it does not): one subgroup, or cells the target excludes."""
    from .targets import Target

    if cell:
        return f"--cell {cell} asks for one subgroup"
    counts = model.natural_["counts"]
    q = _run(ctx, lambda: Target.coerce(target).resolve(model.space_, counts))
    excluded = [cid for cid, v, c in zip(model.space_.ids, q, counts) if v == 0 and c > 0]
    if excluded:
        return f"the target excludes {len(excluded)} cell(s) the generator makes ({', '.join(excluded[:4])}" + \
               (", ..." if len(excluded) > 4 else "") + ")"
    return None


def _precision(sampler) -> float:
    """Predicted share of latent-only outputs labelled in a cell the target asks for."""
    pred = np.asarray(sampler.plan_["predicted"])
    return float(pred[sampler.q > 0].sum())


def _cell_spec(cell: str, attributes) -> dict:
    parts = _csv(cell.replace("|", ","))
    if len(parts) != len(attributes):
        raise InputError(f"--cell needs one class per attribute ({', '.join(attributes)}), got {cell!r}")
    return {a: c for a, c in zip(attributes, parts) if c != "*"}


@main.command(epilog="Examples:\n\n  " + EXAMPLES["sample"])
@config_option
@quiet_option
@click.option("--generator", "generator_spec", default=None,
              help="Built-in generator name or checkpoint path; must be the one the model was fitted on "
                   "(default: the built-in generator the model was fitted on).")
@click.option("--model", "model_path", type=click.Path(dir_okay=False), required=True,
              help="Model file from `fit`, or the name of a built-in generator that ships one (stylegan2-faces).")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Dataset folder (resumed if it exists).")
@click.option("--n", type=click.IntRange(min=1), required=True, help="Number of images.")
@click.option("--target", default="uniform", show_default=True,
              help="'uniform' or a YAML target file (cells / marginals / exclude; see the README).")
@click.option("--cell", default=None, help="Only this subgroup: one class per attribute, e.g. female,old,smiling "
                                           "('*' = any).")
@click.option("--mode", type=click.Choice(["posterior", "matched", "natural"]), default="matched", show_default=True,
              help="matched: mixture weights over latent components so the labelled distribution matches the "
                   "target in expectation (warns with the closest reachable one); posterior: rejection in latent "
                   "space with the calibrated posterior P(cell | latent)^sharpness; natural: the unbalanced generator.")
@click.option("--verify/--no-verify", default=None,
              help="Label every image and keep it only for a cell that needs it: exact counts. Default: on "
                   "when --cell asks for one subgroup or the target excludes cells (zero mass: no image may be "
                   "labelled in them), off otherwise. --no-verify: latent-only, the labelled share is predicted.")
@click.option("--attributes", default=None, help="Labelers to record in the manifest (default: the model's).")
@click.option("--labelers", "labelers_spec", default=None, type=click.Path(dir_okay=False), help="YAML labeler spec.")
@click.option("--sharpness", default="auto", show_default=True,
              help="Acceptance exponent (1 = the model's own conditional; larger = purer, less diverse), or 'auto'.")
@click.option("--max-sharpness", type=click.FloatRange(min=1), default=None,
              help="Upper bound for --sharpness auto (e.g. 2 keeps diversity closer to the natural generator's).")
@click.option("--min-diversity", type=click.FloatRange(0, 1), default=None,
              help="Floor of each cell's predicted diversity (latent spread of its images over the natural "
                   "generator's, from the held-out probes; default 0 = no floor; 0.985 is the benchmark's suggestion). "
                   "Allocation and --sharpness auto keep it at a predicted cost in balance (latent-only) or "
                   "synthesis calls (verify); see docs/sampling.md.")
@click.option("--max-cell-tv", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="With --verify: bound on the total variation distance between each cell's kept images (their "
                   "latents) and the natural generator's images of that cell; candidates that would crowd a cell "
                   "are refused in proportion, at a predicted cost in synthesis calls; with a bound, verify also "
                   "draws from the plain generator where that is cheaper, so a bound never costs more than plain "
                   "rejection sampling (default 0.2, relaxed with a warning when it does not fit "
                   "--max-synthesis-per-image; 1 = no bound, the cheapest; see docs/sampling.md).")
@click.option("--max-synthesis-per-image", type=click.FloatRange(min=1), default=10.0, show_default=True,
              help="Verify: stop before starting when more synthesis calls per kept image are predicted "
                   "(rare cells can need more: female,old,smiling on dcgan-faces, model fitted on 20,000 probes, "
                   "about 7-14 without the cell cap, 46 with the default cap).")
@click.option("--threshold", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Accept only latents with P(cell | latent) >= this.")
@click.option("--exclude", "exclude", multiple=True, type=click.Path(dir_okay=False),
              help="Person file from `forget` (repeatable): latents in the person's region are rejected before "
                   "synthesis, and no image whose face embedding is within the person's threshold is written "
                   "(docs/forget.md).")
@click.option("--seed", type=click.IntRange(0, 2**20 - 1), default=0, show_default=True)
@click.option("--block-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Images per block (unit of resumption and sharding).")
@click.option("--shard", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--num-shards", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--save-latents", is_flag=True, help="Also save the latents (.npy) for later editing.")
@click.option("--format", "image_format", type=click.Choice(["png", "jpg", "webp"]), default="png", show_default=True,
              help="Image format: png (lossless) or jpg / webp (lossy, at --quality).")
@click.option("--quality", type=int, default=None,
              help="jpg / webp quality, 1 (smallest files) to 100 (best); default 95. Not for png (lossless).")
@click.option("--image-size", type=int, default=None,
              help="Resize the images to this height in pixels (width keeps the aspect ratio) before encoding: "
                   "antialiased bicubic, on --device. Labels are of the synthesized images. Default: as synthesized.")
@click.option("--layout", type=click.Choice(["files", "webdataset"]), default="files", show_default=True,
              help="files: one image file per image; webdataset: one tar per block (images/00000.tar, image + JSON "
                   "manifest row per sample), readable by the webdataset package: for millions of images.")
@click.option("--encode-workers", type=click.IntRange(min=0), default=None,
              help="Image encoding processes (default: one per core, at most one per 128 images; 0: the writer "
                   "thread). The output is the same for any value.")
@click.option("--truncation-psi", type=float, default=None, help="StyleGAN2 truncation, applied after selection.")
@class_option
@seed_scheme_option
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@engine_options
@click.pass_context
def sample(ctx, generator_spec, model_path, out, n, target, cell, mode, verify, attributes, labelers_spec, sharpness,
           max_sharpness, min_diversity, max_cell_tv, max_synthesis_per_image, threshold, seed, block_size, shard, num_shards,
           save_latents, image_format, quality, image_size, layout, encode_workers, truncation_psi, class_index,
           seed_scheme, batch_size, device, engine, address, num_workers, gpus_per_worker, exclude=()):
    """Write a balanced, labelled dataset (PNG images, manifest CSV/JSONL, dataset card)."""
    from .export import _output_settings, check_output, write_dataset
    from .sampling import BalancedSource
    from .sources import NaturalSource
    from .subgroups import SubgroupModel

    out = Path(out)
    if shard >= num_shards:
        raise InputError(f"--shard must be below --num-shards ({num_shards}), got {shard}")
    if max_cell_tv is not None and (verify is False or mode == "natural"):
        raise InputError(_CAP_NEEDS_VERIFY)
    output = {"image_format": image_format, "quality": quality, "image_size": image_size, "layout": layout}
    try:
        _output_settings(image_format, quality, image_size, layout)
    except ValueError as err:
        raise InputError(str(err).replace("quality", "--quality").replace("image size", "--image-size")) from None
    if sharpness != "auto":
        try:
            if float(sharpness) <= 0:
                raise ValueError
        except ValueError:
            raise InputError(f"--sharpness must be a positive number or 'auto', got {sharpness!r}") from None
    _check_writable_target(out)
    ray_opts, device = _engine(engine, address, num_workers, gpus_per_worker, device, shards=num_shards)
    model = _run(ctx, SubgroupModel.load, _model_file(model_path))
    if generator_spec is None:
        from .generators import _builtin_name_of

        fitted_on = model.meta_.get("generator", {}).get("id")
        generator_spec = _builtin_name_of(fitted_on or "")
        if generator_spec is None:
            raise InputError(f"the model {model_path} was fitted on {fitted_on!r}, not a built-in generator: "
                             f"give --generator (the checkpoint it was fitted on)")
    gen = _run(ctx, _generator, generator_spec, truncation_psi, device, class_index, seed_scheme)
    fitted = model.meta_.get("generator", {})
    if fitted.get("class_index") != getattr(gen, "class_index", None) or fitted.get("c") != gen.describe().get("c"):
        raise InputError(f"the model {model_path} was fitted on probes of class {fitted.get('class_index')!r} "
                         f"(label {fitted.get('c')}; classes {fitted.get('classes')}), but this run generates class "
                         f"{getattr(gen, 'class_index', None)!r} (classes {gen.describe().get('classes')}); give the "
                         f"same --class or --classes")
    known = {k.name for k in getattr(gen, "known_attributes", []) or []}  # --classes: 'class' needs no labeler
    lab_spec = labelers_spec or [a for a in (_csv(attributes) if attributes else list(model.space_.attributes))
                                 if a not in known]
    labs = _run(ctx, _labelers, None, lab_spec) if labelers_spec else _run(ctx, _labelers, ",".join(lab_spec), None)
    extra = {"generator_spec": {"name": generator_spec,
                                "kwargs": _generator_kwargs(truncation_psi, class_index, seed_scheme)},
             "labelers_spec": str(Path(labelers_spec).resolve()) if labelers_spec else lab_spec}
    exclude = [str(Path(e).resolve()) for e in exclude]
    for e in exclude:
        if not Path(e).is_file():
            raise InputError(f"--exclude {e}: no such person file (make one with `latent-balance forget`)")
    if exclude and mode == "natural":
        raise InputError("--exclude needs a sampler mode (matched or posterior): --mode natural writes the generator's "
                         "own images unfiltered")
    if mode == "natural":
        from .targets import Target

        tgt = _run(ctx, lambda: Target.coerce(target).resolve(model.space_, model.natural_["counts"]))
        source = NaturalSource(gen, labs, attributes=list(model.space_.attributes),
                               target=dict(zip(model.space_.ids, map(float, tgt))), seed=seed, batch_size=batch_size)
    else:
        auto_why = None
        if verify is None:
            auto_why = _verify_reason(ctx, model, target, cell)
            verify = auto_why is not None
        if max_cell_tv is not None and not verify:
            raise InputError(_CAP_NEEDS_VERIFY)
        # planning warnings wait until the output folder is known to accept this run (a refused resume
        # says only why it is refused)
        with warnings.catch_warnings(record=True) as planning_warnings:
            warnings.simplefilter("always")
            try:
                sampler = _sampler(ctx, gen, model, target, mode, verify, labs, sharpness, threshold, seed,
                                   batch_size, block_size, cell=cell, max_sharpness=max_sharpness,
                                   max_synthesis_per_image=max_synthesis_per_image, min_diversity=min_diversity,
                                   exclude=exclude, max_cell_tv=max_cell_tv)
            except InputError as err:
                planning_error = err
            else:
                planning_error = None
        err = planning_error
        if err is not None:
            if not auto_why:
                raise err
            if "--max-synthesis-per-image" not in str(err):  # not a budget the user can raise: say why as it is
                raise InputError(f"{auto_why}, so verification is on by default, and {err}") from None
            # verification was chosen for the user and cannot be had within the budget: refuse, with what
            # latent-only sampling is predicted to give and how to get exact counts
            with warnings.catch_warnings():  # only its prediction is used, for the message
                warnings.simplefilter("ignore")
                try:
                    latent = _sampler(ctx, gen, model, target, mode, False, labs, sharpness, threshold, seed,
                                      batch_size, block_size, cell=cell, max_sharpness=max_sharpness,
                                      min_diversity=min_diversity, exclude=exclude)
                except InputError as latent_err:
                    raise InputError(f"{auto_why}, so verification is on by default, and {err}. Latent-only "
                                     f"sampling is no way out here either: {latent_err}") from None
            raise InputError(f"{auto_why}, so verification is on by default, and {err}. Without verification "
                             f"{_precision(latent):.0%} of the images are predicted to be labelled in the "
                             f"requested cells: pass --no-verify{' (without --max-cell-tv)' if max_cell_tv else ''} "
                             f"to accept that, or raise --max-synthesis-per-image for exact counts"
                             + (f" (--max-cell-tv {max_cell_tv:g} adds to the cost; a larger value costs less)"
                                if max_cell_tv else "")) from None
        source = BalancedSource(sampler)
        _run(ctx, check_output, out, source, n, block_size=block_size, shard=shard, num_shards=num_shards,
             save_latents=save_latents, extra_settings=extra, **output)
        shown = set()
        for w in planning_warnings:
            if (w.category, str(w.message)) not in shown:
                shown.add((w.category, str(w.message)))
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        if auto_why:
            click.echo(f"verify: on ({auto_why}; --no-verify for latent-only sampling)", err=True)
        elif not verify and (cell or np.any(sampler.q == 0)):
            click.echo(f"verify: off (--no-verify); {_precision(sampler):.0%} of the images are predicted to be "
                       f"labelled in the requested cells", err=True)
        if min_diversity:
            # its cost against the same run without the floor (the planner's own diversity_cost compares blends at
            # the chosen sharpness only; the floor also changes which sharpness --sharpness auto picks)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                free = _sampler(ctx, gen, model, target, mode, verify, labs, sharpness, threshold, seed, batch_size,
                                block_size, cell=cell, max_sharpness=max_sharpness,
                                max_synthesis_per_image=max_synthesis_per_image, min_diversity=0.0,
                                max_cell_tv=max_cell_tv).plan_
            plan = sampler.plan_
            key, unit, fmt = (("verify_cost", "synthesis calls per kept image", ".2f") if verify
                              else ("predicted_tv", "predicted total variation from the target", ".3f"))
            click.echo(f"min-diversity {min_diversity:g}: predicted diversity (latent spread ratio) >= "
                       f"{plan['diversity_min']:.3f} in every targeted cell ({'met' if plan['diverse'] else 'NOT met'}; "
                       f"{free['diversity_min']:.3f} without the floor); its cost: {plan[key]:{fmt}} {unit} against "
                       f"{free[key]:{fmt}} without it", err=True)
    if ray_opts:
        import functools

        from .distributed import write_dataset_ray

        recipe = {"model": str(Path(_model_file(model_path)).resolve()), "generator": _abs_if_file(generator_spec),
                  "truncation_psi": truncation_psi, "device": device, "class_index": class_index,
                  "seed_scheme": seed_scheme, "attributes": None if labelers_spec else ",".join(lab_spec),
                  "labelers_spec": _abs_if_file(labelers_spec), "mode": mode, "target": _abs_if_file(target),
                  "verify": verify, "cell": cell, "sharpness": sharpness, "threshold": threshold, "seed": seed,
                  "batch_size": batch_size, "block_size": block_size, "max_sharpness": max_sharpness,
                  "max_synthesis_per_image": max_synthesis_per_image, "min_diversity": min_diversity,
                  "max_cell_tv": max_cell_tv, "natural_target": source.target() if mode == "natural" else None, "exclude": exclude or None}
        res = _run(ctx, write_dataset_ray, out, functools.partial(_rebuild_sample_source, recipe), n,
                   block_size=block_size, source=source, save_latents=save_latents, extra_settings=extra,
                   workers=encode_workers, **output, **ray_opts)
    else:
        res = _run(ctx, write_dataset, out, source, n, block_size=block_size, shard=shard, num_shards=num_shards,
                   save_latents=save_latents, extra_settings=extra, workers=encode_workers, **output)
    done = "complete" if res["complete"] else f"shard {shard}/{num_shards} written; merge the shards when all are done"
    click.echo(f"{out}: {res['blocks_written']} blocks written, {res['blocks_skipped']} already there; {done}")
    if res["complete"]:
        import json as _json

        card = _json.loads((out / "dataset_card.json").read_text())
        m = card["metrics"]
        click.echo(f"achieved (labelers): {_metrics_line(m, card.get('target_band'))}; "
                   + ", ".join(f"{k} {v:.2f}" for k, v in card["cost"].items()))
        for p in card.get("forget", {}).get("persons", []):
            click.echo(f"excluded person {p['person']} ({p['fingerprint']}): {p['latent_rejected']} candidates rejected in latent space, "
                       f"{p['images_rejected']} images rejected on their face embedding")


@main.command(epilog="Examples:\n\n  " + EXAMPLES["audit"])
@config_option
@quiet_option
@click.argument("dataset", required=False, type=click.Path(file_okay=False))
@click.option("--generator", "generator_spec", default=None,
              help="Audit this generator's natural output instead of a dataset (with --attributes).")
@click.option("--attributes", default=None, help="With --generator: attributes spanning the cells.")
@click.option("--target", default="uniform", show_default=True, help="With --generator: 'uniform' or a YAML cells target.")
@click.option("--n", type=click.IntRange(min=2), default=1000, show_default=True, help="With --generator: images.")
@click.option("--natural-n", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Natural images to compare a dataset with (0: none).")
@click.option("--image-metrics/--no-image-metrics", default=True, show_default=True,
              help="LPIPS diversity ratio and KID (VGG16 features, with its natural-vs-natural noise) per cell.")
@click.option("--report-dir", type=click.Path(file_okay=False), default=None,
              help="Where report.html / audit.json go (default DATASET/report).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@class_option
@seed_scheme_option
@click.option("--device", default=None)
@click.pass_context
def audit(ctx, dataset, generator_spec, attributes, target, n, natural_n, image_metrics, report_dir, seed, class_index,
          seed_scheme, device):
    """Measure a dataset (or a generator) against its target; write an HTML report and JSON."""
    from . import audit as audit_mod

    if (dataset is None) == (generator_spec is None):
        raise InputError("give a DATASET folder, or --generator with --attributes (not both)")
    if dataset is not None:
        if class_index is not None or seed_scheme != "pcg64":
            raise InputError("--class and --seed-scheme apply with --generator; a dataset records its own")
        if not Path(dataset).is_dir():
            raise InputError(f"dataset folder {dataset} does not exist")
        if report_dir:
            _check_writable_target(Path(report_dir))
        res = _run(ctx, audit_mod.audit_dataset, dataset, natural_n=natural_n, image_metrics=image_metrics,
                   report_dir=report_dir, seed=seed, device=device)
    else:
        attrs = _csv(attributes)
        labs = _run(ctx, _labelers, attributes, None)
        if report_dir:
            _check_writable_target(Path(report_dir))
        tgt = None
        if target != "uniform":
            import yaml as _yaml

            spec = _run(ctx, lambda: _yaml.safe_load(Path(target).read_text()))
            if not isinstance(spec, dict) or "cells" not in spec:
                raise InputError(f"{target}: a generator audit takes a target with explicit 'cells'")
            tgt = spec["cells"]
        gen = _run(ctx, _generator, generator_spec, None, device, class_index, seed_scheme)
        res = _run(ctx, audit_mod.audit_generator, gen, labs, attrs, target=tgt, n=n, report_dir=report_dir, seed=seed)
    a = res["achieved"]
    click.echo(f"{res['n']} images; {_metrics_line(a, a.get('band'))}"
               + (f"; report: {res['report']}" if res.get("report") else ""))
    click.echo("target band: what 95% of datasets of this size drawn independently from the target show "
               "(a perfect sampler); values outside it are further from the target than sampling noise explains")


@main.command(epilog="Example:\n\n  " + EXAMPLES["demo"])
@config_option
@quiet_option
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output folder.")
@click.option("--generator", "generator_spec", default="dcgan-faces", show_default=True)
@click.option("--attributes", default="gender,age,smile", show_default=True)
@click.option("--n", type=click.IntRange(min=1), default=1000, show_default=True, help="Images in the balanced dataset.")
@click.option("--probes", "n_probes", type=click.IntRange(min=100), default=10000, show_default=True)
@click.option("--verify/--no-verify", default=True, show_default=True)
@click.option("--mode", type=click.Choice(["posterior", "matched"]), default="posterior", show_default=True)
@click.option("--natural-n", type=click.IntRange(min=0), default=1000, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**20 - 1), default=0, show_default=True)
@click.option("--max-synthesis-per-image", type=click.FloatRange(min=1), default=10.0, show_default=True,
              help="Verify budget (small --probes make rare cells costlier).")
@click.option("--device", default=None)
@click.pass_context
def demo(ctx, out, generator_spec, attributes, n, n_probes, verify, mode, natural_n, seed, max_synthesis_per_image,
         device):
    """The whole pipeline offline on the packaged face GAN: probe, fit, sample, audit, report."""
    from .demo import run_demo

    _check_writable_target(Path(out))
    s = _run(ctx, run_demo, out, generator=generator_spec, attributes=_csv(attributes), n=n, n_probes=n_probes,
             verify=verify, mode=mode, natural_n=natural_n, seed=seed, device=device,
             max_synthesis_per_image=max_synthesis_per_image)
    a, nat = s["achieved"], s["natural"]
    click.echo(f"balanced dataset: {n} images in {Path(out) / 'dataset'}")
    click.echo(f"achieved (labelers): {_metrics_line(a, s.get('achieved_band'))}")
    if nat:
        click.echo(f"natural generator ({natural_n} images): {_metrics_line(nat)}")
    click.echo("cost: " + ", ".join(f"{k} {v:.2f}" for k, v in s["cost"].items()))
    click.echo(f"report: {s['report']}; seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in s["seconds"].items()))


@main.command(epilog="Examples:\n\n  " + EXAMPLES["evaluate"])
@config_option
@quiet_option
@click.argument("dataset", type=click.Path(file_okay=False))
@click.option("--classifier", default=None,
              help="Classifier under test: MODULE:NAME, path/to/file.py:NAME or a .onnx file. Called with float32 "
                   "images [N, 3, H, W] in [-1, 1]; returns P(positive) [N] or class probabilities [N, C].")
@click.option("--task", default=None, help="ATTRIBUTE=CLASS (positive class) the classifier predicts, e.g. smile=smiling.")
@click.option("--groups", default=None,
              help="Attributes whose cells are the groups (default: the dataset's target attributes but the task's).")
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.5, show_default=True,
              help="Predicted positive when P >= threshold.")
@click.option("--counterfactual", default=None,
              help="Attribute to flip in counterfactual pairs (needs --model; the generator is the dataset's).")
@click.option("--model", "model_path", default=None,
              help="With --counterfactual: the fitted model (.npz from `fit`, or a built-in generator's name).")
@click.option("--generator", "generator_spec", default=None,
              help="With --counterfactual: the dataset's generator (default: as its settings record).")
@click.option("--system", default=None, help="Image-to-image system under test (MODULE:NAME or file.py:NAME).")
@click.option("--label-agreement", default=None,
              help="ATTR=AGREEMENT,...: our labeler's self-agreement for the label-noise floor, overriding the "
                   "published figures (needed for labelers other than the built-in ones).")
@click.option("--n-boot", type=click.IntRange(min=1), default=200, show_default=True,
              help="Bootstrap replicates and label-noise draws (~0.1 s each).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--report-dir", type=click.Path(file_okay=False), default=None,
              help="Where evaluation.html / evaluation.json go (default DATASET/evaluation).")
@click.option("--device", default=None)
@click.pass_context
def evaluate(ctx, dataset, classifier, task, groups, threshold, counterfactual, model_path, generator_spec, system,
             label_agreement, n_boot, seed, batch_size, report_dir, device):
    """Test another model on a dataset: a classifier per subgroup, counterfactual pairs, an image-to-image system."""
    from .evaluate import evaluate_dataset

    if not Path(dataset).is_dir():
        raise InputError(f"dataset folder {dataset} does not exist")
    if (model_path or generator_spec) and not counterfactual:
        raise InputError("--model and --generator are used with --counterfactual")
    agreement = {}
    for item in _csv(label_agreement):
        name, sep, value = item.partition("=")
        try:
            agreement[name.strip()] = float(value)
        except ValueError:
            raise InputError(f"--label-agreement takes ATTR=NUMBER pairs, got {item!r}") from None
    gen = model = None
    if counterfactual:
        if not model_path:
            raise InputError("--counterfactual needs --model (the model fitted on the dataset's generator)")
        from .subgroups import SubgroupModel

        model = _run(ctx, SubgroupModel.load, _model_file(model_path))
        if generator_spec is None:
            settings = json.loads((Path(dataset) / "settings.json").read_text()) \
                if (Path(dataset) / "settings.json").exists() else {}
            spec = settings.get("generator_spec")
            if spec is None:
                raise InputError(f"{dataset} does not record its generator; give --generator")
            kw = spec.get("kwargs", {})
            gen = _run(ctx, _generator, spec["name"], kw.get("truncation_psi"), device,
                       kw.get("class_index", kw.get("classes")), kw.get("seed_scheme"))
        else:
            gen = _run(ctx, _generator, generator_spec, None, device)
    if report_dir:
        _check_writable_target(Path(report_dir))
    res = _run(ctx, evaluate_dataset, dataset, classifier, task, groups=_csv(groups) or None, threshold=threshold,
               counterfactual=counterfactual, generator=gen, model=model, system=system,
               label_agreement=agreement or None, n_boot=n_boot, seed=seed, batch_size=batch_size,
               report_dir=report_dir, device=device)
    clf = res.get("classifier")
    if clf:
        o = clf["overall"]
        click.echo(f"classifier {res['settings']['classifier']} on {res['n']} images, task {res['settings']['task']}: "
                   f"accuracy {o['accuracy']:.3f}, positive rate {o['positive_rate']:.3f}, "
                   f"groups {' x '.join(clf['groups']['attributes'])}")
        for k, d in clf["disparities"].items():
            if d["value"] is None:
                click.echo(f"  {k.replace('_', ' ')}: undefined ({d.get('reason')})")
                continue
            floor = "no floor" if d["floor"] is None else f"label-noise floor {d['floor']:.3f}" + (
                ", beyond it" if d["beyond_floor"] else ", within it")
            click.echo(f"  {k.replace('_', ' ')} {d['value']:.3f} [95% {d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}]; {floor}")
    cf = res.get("counterfactual")
    if cf:
        o = cf["overall"]
        flip = o["prediction_flip_clean"]["rate"]
        click.echo(f"counterfactual {cf['attribute']}: edit success {o['edit_success']['rate']:.3f}, clean pairs "
                   f"{o['clean']['rate']:.3f}, LPIPS {o['lpips']['mean']:.3f}; prediction flips {o['prediction_flip']['rate']:.3f}"
                   f" (clean pairs {'n/a' if flip is None else f'{flip:.3f}'}), mean |change of P| "
                   f"{o['mean_abs_change']['mean']:.3f}")
    sy = res.get("system")
    if sy:
        o = sy["overall"]
        click.echo(f"system {res['settings']['system']}: labels kept " + ", ".join(
            f"{a} {r['rate']:.3f} (largest gap between cells {sy['kept_gap'][a]:.3f})" for a, r in o["kept"].items())
            + f"; LPIPS to input {o['lpips_to_input']['mean']:.3f}")
    click.echo(f"report: {res['report']}")
# ------------------------------------------------------------------------------------------------
@main.command("make-labeler", epilog="Example:\n\n  latent-balance make-labeler --examples glasses_examples/ "
              "--name glasses --out glasses.labeler\n\n  (glasses_examples/ holds one folder of images per class, "
              "e.g. no_glasses/ and glasses/; use the file as --attributes glasses.labeler or in a --labelers YAML "
              "with 'path: glasses.labeler')\n\n  Photos are re-framed by face detection (--framing detect); for "
              "generated images you sorted use --framing as-is.")
@config_option
@click.option("--examples", type=click.Path(file_okay=False), required=True,
              help="Folder with one sub-folder of images per class (the sub-folder's name is the class).")
@click.option("--name", required=True, help="The attribute's name, e.g. glasses.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="The .labeler file to write.")
@click.option("--min-per-class", type=click.IntRange(min=2), default=10, show_default=True,
              help="Fewest images a class may have.")
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True, help="Cross-validation folds.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.01, show_default=True,
              help="Level of the binomial test of the cross-validated accuracy against the majority-class rate.")
@click.option("--size", type=click.IntRange(min=16), default=64, show_default=True,
              help="Framing size in pixels (the generator's image size).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Fold split seed.")
@click.option("--framing", type=click.Choice(["detect", "as-is"]), default="detect", show_default=True,
              help="detect: re-frame each example by face detection so its face sits where the generator puts "
                   "faces (photos); as-is: centre crop and resize (images already framed by the generator, e.g. "
                   "generated images you sorted).")
@click.option("--generator", "generator_spec", default=None,
              help="With --framing detect: the generator the labeler is for (its face box; default: the packaged "
                   "faces' box).")
@click.option("--skip-no-face", is_flag=True, default=False,
              help="With --framing detect: leave out examples without a usable face (counted) instead of refusing.")
@click.option("--device", default=None)
@click.pass_context
def make_labeler_cmd(ctx, examples, name, out, min_per_class, folds, alpha, size, seed, framing, generator_spec,
                     skip_no_face, device):
    """Make a labeler from examples: a linear classifier on frozen VGG16 features, cross-validated."""
    from .example_labelers import make_labeler

    out_path = Path(out)
    if out_path.suffix != ".labeler":
        raise InputError(f"--out must end in .labeler (labeler specs recognise the file by it), got {out}")
    _check_writable_target(out_path)
    if framing == "as-is" and (generator_spec is not None or skip_no_face):
        raise InputError("--generator and --skip-no-face apply to --framing detect only")
    generator = _run(ctx, _generator, generator_spec, None, device) if generator_spec is not None else None
    lab = _run(ctx, make_labeler, examples, name, out=out_path, min_per_class=min_per_class, folds=folds, alpha=alpha,
               size=size, seed=seed, device=device, framing=framing, generator=generator, skip_no_face=skip_no_face)
    r = lab.report
    click.echo(f"{lab.name}: classes " + ", ".join(f"{c} ({r['counts'][c]} images)" for c in lab.classes))
    fr = r["framing"]
    if fr["mode"] == "detect":
        skipped = sum(len(v) for v in fr["skipped_no_face"].values())
        click.echo(f"framing: {fr['framed_by_detection']} examples framed by face detection into face box "
                   f"{tuple(fr['face_box'])} at {fr['size']} px" + (f" ({fr['generator']})" if fr["generator"] else "")
                   + (f"; {skipped} skipped without a usable face" if skipped else ""))
    else:
        click.echo(f"framing: as-is (centre crop, resized to {fr['size']} px)")
    click.echo(f"cross-validated accuracy {r['cv_accuracy']:.3f} ({r['folds']} folds; majority class "
               f"{r['majority_rate']:.3f}; one-sided binomial p = {r['binomial_p']:.2g})")
    width = max(len(c) for c in lab.classes)
    click.echo("confusion matrix (rows: true class, columns: predicted):")
    click.echo(" " * (width + 2) + " ".join(f"{c:>{max(len(c), 5)}}" for c in lab.classes))
    for c, row in zip(lab.classes, r["confusion"]):
        click.echo(f"  {c:<{width}}" + " ".join(f"{v:>{max(len(k), 5)}}" for k, v in zip(lab.classes, row)))
    click.echo(f"labeler written to {out_path} (id {lab.id})")


@main.command("forget", epilog="Example:\n\n  latent-balance forget --seeds 12,40 --generator stylegan2-faces --out person.npz\n\n"
              "  latent-balance forget --photos jane/ --generator stylegan2-faces --out person.npz\n\n"
              "  latent-balance sample --model stylegan2-faces --n 1000 --out dataset/ --exclude person.npz")
@config_option
@quiet_option
@click.option("--seeds", default=None,
              help="Generated faces that show the person: comma-separated seeds of --generator, e.g. 12,40 "
                   "(or --photos).")
@click.option("--photos", "photos_dir", default=None,
              help="Folder of photos of the person (its .png/.jpg/.jpeg/.bmp/.webp files, not subfolders): each is "
                   "re-framed to the generator's framing and projected into its latent space (or --seeds).")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="With --photos: projector steps (default: the projector's, 500; 0.07-0.7 s per step for 4 "
                   "64 px photos on a CPU).")
@click.option("--skip-no-face", is_flag=True, default=False,
              help="With --photos: leave out photos without a usable face (named) instead of refusing them.")
@click.option("--generator", "generator_spec", required=True, help="Built-in generator name or checkpoint path.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Person file to write (.npz).")
@click.option("--threshold", default=None,
              help="Same-person threshold on the face-embedding distance (default 0.6, dlib's documented value), "
                   "or 'calibrate': the distance below which at most --max-natural-match of the generator's own "
                   "faces fall (0.6 is loose on small generated faces: docs/forget.md).")
@click.option("--max-natural-match", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.01,
              show_default=True, help="With --threshold calibrate: share of natural faces allowed to match.")
@click.option("--probes-per-reference", type=click.IntRange(min=0), default=64, show_default=True,
              help="Latents drawn around each reference to fit the person's latent region.")
@click.option("--natural-probes", type=click.IntRange(min=0), default=256, show_default=True,
              help="Natural latents probed (the region's cost: the share of them inside it). With --threshold "
                   "calibrate at least 1 / --max-natural-match (100 at the default 0.01).")
@click.option("--margin", type=click.FloatRange(min=1), default=1.0, show_default=True,
              help="Region radius = margin x the farthest latent distance at which a probe matched.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True, help="Seed of the probes.")
@click.option("--truncation-psi", type=float, default=None, help="StyleGAN2 truncation (as `sample` will use).")
@class_option
@seed_scheme_option
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.pass_context
def forget_cmd(ctx, seeds, photos_dir, steps, skip_no_face, generator_spec, out, threshold, max_natural_match,
               probes_per_reference, natural_probes, margin, seed, truncation_psi, class_index, seed_scheme, batch_size,
               device):
    """Make a person file: a person's face embeddings and latent region, for `sample --exclude`.

    The person comes from photos (--photos DIR) or from generated seeds (--seeds)."""
    from .forget import person_from_photos, person_from_seeds, save_person

    if (seeds is None) == (photos_dir is None):
        raise InputError("forget needs exactly one of --photos DIR (photos of the person) or --seeds 12,40 "
                         "(generated faces of the person)" + (", not both" if seeds is not None else ""))
    if seeds is not None and (steps is not None or skip_no_face):
        raise InputError("--steps and --skip-no-face apply to --photos only")
    photo_files: list[Path] = []
    if photos_dir is not None:
        from .example_labelers import IMAGE_SUFFIXES

        folder = Path(photos_dir)
        if not folder.is_dir():
            raise InputError(f"--photos {photos_dir}: " + ("not a folder" if folder.exists() else "no such folder"))
        photo_files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not photo_files:
            raise InputError(f"--photos {photos_dir} holds no photos (files ending in {', '.join(IMAGE_SUFFIXES)})")
    else:
        try:
            seed_list = [int(v) for v in _csv(seeds)]
        except ValueError:
            raise InputError(f"--seeds must be comma-separated integers, e.g. 12,40; got {seeds!r}") from None
        if not seed_list:
            raise InputError("--seeds needs at least one seed, e.g. --seeds 12,40")
    if threshold is not None and threshold != "calibrate":
        try:
            threshold = float(threshold)
            if not threshold > 0:
                raise ValueError
        except ValueError:
            raise InputError(f"--threshold must be a positive distance or 'calibrate', got {threshold!r}") from None
    out_path = Path(out)
    if out_path.suffix != ".npz":
        raise InputError(f"--out must end in .npz, got {out}")
    _check_writable_target(out_path)
    gen = _run(ctx, _generator, generator_spec, truncation_psi, device, class_index, seed_scheme)
    common = dict(threshold=threshold, probes_per_reference=probes_per_reference, natural_probes=natural_probes,
                  margin=margin, seed=seed, batch_size=batch_size, name=out_path.stem,
                  max_natural_match=max_natural_match)
    if photo_files:
        from .forget import _default_steps

        n_steps = _default_steps() if steps is None else int(steps)
        from ._utils import progress_enabled

        if str(gen.device).startswith("cpu") and progress_enabled():  # progress output: not with --quiet
            # the projector's measured CPU cost (latent_balance.projector.project): 0.07 (light load) to 0.7 s
            # (loaded 2-core machine) per step for 4 64 px images optimised together, ~ proportional to the photos
            k = max(1.0, len(photo_files) / 4) * n_steps * (max(64, min(int(gen.img_resolution), 256)) / 64) ** 2
            click.echo(f"projecting {len(photo_files)} photo(s) into {gen.latent_space.upper()} with {n_steps} steps: "
                       f"expect about {_duration(0.07 * k)} to {_duration(0.7 * k)} on a CPU (longer when it is shared)",
                       err=True)
        person = _run(ctx, person_from_photos, gen, [str(p) for p in photo_files], steps=n_steps,
                      skip_no_face=skip_no_face, **common)
        lp = person.meta["projection"]["lpips_final"]
        refs = f"{len(lp)} of {len(photo_files)} photo(s) used"
        if person.skipped_:
            refs += " (skipped: " + ", ".join(Path(n).name for n in person.skipped_) + ")"
        refs += f", projection LPIPS {min(lp):.3f}-{max(lp):.3f}"
    else:
        person = _run(ctx, person_from_seeds, gen, seed_list, **common)
        refs = f"{len(seed_list)} reference(s)"
    _run(ctx, save_person, person, out_path)
    st = person.meta["stats"]
    nat = ("" if st["natural_match_rate"] is None else
           f"; natural probes: {100 * st['natural_match_rate']:.1f}% match, {100 * st['natural_inside']:.1f}% inside the region")
    click.echo(f"{out_path}: {refs}, threshold {person.threshold:g}, latent radius "
               f"{person.radius:.4g} ({st['probe_matches']} of {st['probes']} probes match{nat})")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


if __name__ == "__main__":  # pragma: no cover
    main()
