"""Render an audit (see :mod:`latent_balance.audit`) as a self-contained HTML page plus PNG contact sheets.

The page holds everything inline (SVG bar charts, contact sheets as base64 PNG), so it can be mailed
or opened from anywhere without its folder. Charts: per cell and per targeted attribute, achieved
vs target vs natural shares with the achieved share's Wilson 95% interval; tables of the scalar
metrics with the target's 95% band for the same number of images (what a perfect sampler shows),
the drift of non-targeted attributes, diversity (LPIPS ratio) and kernel distance (KID, with its
natural-vs-natural noise) per cell, and contact sheets of each cell beside the natural generator's.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ._utils import atomic_write_bytes, atomic_write_text, images_to_uint8, json_dumps

__all__ = ["contact_sheet", "write_evaluation_report", "write_report"]

_COLORS = {"achieved": "#2b6cb0", "target": "#38a169", "natural": "#a0aec0",
           # evaluation charts (write_evaluation_report)
           "accuracy": "#2b6cb0", "TPR": "#38a169", "FPR": "#e53e3e", "positive rate": "#d69e2e",
           "flip (all)": "#e53e3e", "flip (clean)": "#2b6cb0", "edit success": "#38a169", "LPIPS": "#805ad5"}



def _html_page(title: str, body: list[str], max_width: int) -> str:
    """A self-contained HTML page: the report style, `body` (HTML fragments) in order."""
    return ("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title><style>"
            f"body{{font-family:sans-serif;max-width:{max_width}px;margin:2em auto;color:#1a202c}}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #cbd5e0;padding:3px 8px;"
            "font-size:13px;text-align:right}td:first-child,th:first-child{text-align:left}"
            "img{image-rendering:pixelated;max-width:100%}</style></head><body>" + "".join(body) + "</body></html>")

def contact_sheet(images, ncol: int = 8, pad: int = 2) -> bytes:
    """A PNG grid of images.

    Args:
        images: float [N, 3, H, W] in [-1, 1] (torch or numpy), or uint8 [N, H, W, 3].
        ncol:   images per row.
        pad:    white border in pixels.

    Returns:
        PNG bytes (a white 1x1 image when N = 0).
    """
    from PIL import Image

    arr = images if isinstance(images, np.ndarray) and images.dtype == np.uint8 else images_to_uint8(images)
    n = arr.shape[0]
    buf = io.BytesIO()
    if n == 0:
        Image.new("RGB", (1, 1), "white").save(buf, format="PNG")
        return buf.getvalue()
    h, w = arr.shape[1:3]
    ncol = min(ncol, n)
    nrow = math.ceil(n / ncol)
    sheet = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        sheet[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = arr[i]
    Image.fromarray(sheet).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _bar_chart(title: str, labels: Sequence[str], series: Mapping[str, Sequence[float]],
               intervals: Sequence[tuple[float, float]] | None = None, width: int = 760) -> str:
    """Grouped vertical bar chart as inline SVG (shares in [0, 1])."""
    series = {k: v for k, v in series.items() if v is not None}
    n, k = len(labels), len(series)
    top = max([1e-9] + [max(v) for v in series.values()] + ([hi for _, hi in intervals] if intervals else []))
    top = min(1.0, math.ceil(top * 10 + 1e-9) / 10)
    left, plot_h = 46, 170
    # rotated (30 degree) category labels: ~6 px per character at font size 10
    label_px = 6.0 * max([len(lab) for lab in labels] + [1])
    right = 10 + max(0.0, label_px * 0.87 - (width - left - 10) / max(n, 1) * 0.6)  # room for the last label
    h = int(20 + plot_h + 14 + label_px * 0.5 + 10)
    group_w = (width - left - right) / max(n, 1)
    bar_w = max(2.0, group_w * 0.8 / max(k, 1))
    y = lambda v: 20 + plot_h * (1 - min(v, top) / top)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" role="img" '
             f'aria-label="{html.escape(title)}"><text x="{left}" y="14" font-size="13" font-weight="bold">'
             f'{html.escape(title)}</text>']
    for j, name in enumerate(series):  # legend: top right, in the title row
        lx = width - 10 - (k - j) * 90
        parts.append(f'<rect x="{lx}" y="4" width="10" height="10" fill="{_COLORS.get(name, "#718096")}"/>'
                     f'<text x="{lx + 14}" y="13" font-size="11">{name}</text>')
    for t in np.linspace(0, top, 5):
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#e2e8f0"/>'
                     f'<text x="{left - 4}" y="{y(t) + 4:.1f}" font-size="10" text-anchor="end">{t:.2f}</text>')
    for i, lab in enumerate(labels):
        gx = left + i * group_w + group_w * 0.1
        for j, (name, vals) in enumerate(series.items()):
            v = float(vals[i])
            parts.append(f'<rect x="{gx + j * bar_w:.1f}" y="{y(v):.1f}" width="{bar_w - 1:.1f}" '
                         f'height="{max(0.0, y(0) - y(v)):.1f}" fill="{_COLORS.get(name, "#718096")}">'
                         f'<title>{html.escape(lab)} {name}: {v:.3f}</title></rect>')
            if name == "achieved" and intervals:
                lo, hi = intervals[i]
                cx = gx + j * bar_w + (bar_w - 1) / 2
                parts.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y(hi):.1f}" y2="{y(lo):.1f}" stroke="#1a202c"/>')
        parts.append(f'<text transform="translate({gx + group_w * 0.4:.1f},{20 + plot_h + 12}) rotate(30)" '
                     f'font-size="10">{html.escape(lab)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _scaled(v, factor: float = 1000.0):
    return None if v is None else float(v) * factor


def _pm(v, se, digits: int) -> str:
    """'value &plusmn; se' (only the value when the standard error is missing or not finite)."""
    if v is None:
        return "n/a"
    if se is None or not math.isfinite(se):
        return _fmt(float(v), digits)
    return f"{_fmt(float(v), digits)} &plusmn; {_fmt(float(se), digits)}"


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:.{digits}f}" if isinstance(v, float) else html.escape(str(v))


def write_report(audit: dict, out_dir: str | Path, sheets: Mapping[str, bytes] | None = None,
                 settings: Mapping | None = None, title: str = "latent-balance audit",
                 natural_sheets: Mapping[str, bytes] | None = None) -> Path:
    """Write ``report.html``, ``audit.json`` and ``contact_sheets/<cell>.png`` into `out_dir`.

    Args:
        audit:    the dict of :func:`latent_balance.audit.audit_labels`, optionally with ``images``
                  (from :func:`latent_balance.audit.image_metrics_per_cell`) and ``cost`` entries.
        out_dir:  folder (created).
        sheets:   cell name -> contact sheet PNG bytes.
        natural_sheets: cell name -> contact sheet of the natural generator's images of that cell
                  (shown beside the cell's sheet; written as ``contact_sheets/natural/<cell>.png``).
        settings: what was run (shown verbatim as JSON).
        title:    page title.

    Returns:
        Path of ``report.html``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sheets = dict(sheets or {})
    for cell, png in sheets.items():
        atomic_write_bytes(out_dir / "contact_sheets" / f"{cell.replace('|', '__')}.png", png)
    for cell, png in (natural_sheets or {}).items():
        atomic_write_bytes(out_dir / "contact_sheets" / "natural" / f"{cell.replace('|', '__')}.png", png)
    atomic_write_text(out_dir / "audit.json", json_dumps(audit, indent=2, sort_keys=True))

    ach = audit["achieved"]
    nat = audit.get("natural")
    cells = audit["cells"]
    e = html.escape
    body = [f"<h1>{e(title)}</h1>"]
    body.append(f"<p>{audit['n']} images, labelled by the attribute labelers (not by the latent model); "
                f"cells over {e(' x '.join(audit['attributes']))}.</p>")
    rows = []
    band = ach.get("band", {})
    nat_band = nat.get("band", {}) if nat else {}
    for key, label in (("kl", "KL(achieved || target), nats"), ("tv", "total variation"),
                       ("fairness_discrepancy_l2", "fairness discrepancy (L2)"), ("worst_cell_ratio", "worst-cell ratio")):
        b = band.get(key)
        nb = nat_band.get(key)
        rows.append(f"<tr><td>{label}</td><td>{_fmt(ach[key])}</td>"
                    f"<td>{'' if b is None else _fmt(b[0]) + ' to ' + _fmt(b[1])}</td>"
                    f"<td>{_fmt(nat[key]) if nat else 'n/a'}</td>"
                    f"<td>{'' if nb is None else _fmt(nb[0]) + ' to ' + _fmt(nb[1])}</td></tr>")
    if "chi2_p" in ach:
        rows.append(f"<tr><td>goodness of fit p, counts vs target ({e(str(ach.get('chi2_method')))})</td>"
                    f"<td>{_fmt(ach['chi2_p'])}</td><td></td>"
                    f"<td>{_fmt(nat.get('chi2_p')) if nat else 'n/a'}</td><td></td></tr>")
    cost = audit.get("cost", {})
    for key, val in cost.items():
        rows.append(f"<tr><td>{e(key.replace('_', ' '))}</td><td>{_fmt(val)}</td><td></td><td></td><td></td></tr>")
    info = ach.get("band_info")
    nat_n = f" ({nat['n']} images)" if nat else ""
    body.append("<h2>Distribution vs target</h2><table><tr><th>metric</th><th>this set</th>"
                f"<th>target band (95%), {ach['n']} images</th><th>natural generator{nat_n}</th>"
                "<th>target band (95%), natural n</th></tr>" + "".join(rows) + "</table>"
                + (f"<p>{e(info['meaning'])} Bands from {info['draws']} simulated datasets (seed {info['seed']}). "
                   "Datasets made with verify have exact counts by construction and sit at the band's best end. "
                   "The goodness-of-fit p-value is Pearson's chi-square test when every expected count is at least "
                   "5, a Monte Carlo test on the same simulated datasets otherwise.</p>" if info else ""))
    body.append(_bar_chart("Share of images per cell", cells,
                           {"achieved": [c["achieved"] for c in ach["cells"]], "target": audit["target"],
                            "natural": [c["achieved"] for c in nat["cells"]] if nat else None},
                           intervals=[(c["low"], c["high"]) for c in ach["cells"]]))
    for a, m in audit["marginals"].items():
        body.append(_bar_chart(f"Marginal: {a}", m["classes"], {"achieved": m["achieved"], "target": m["target"],
                                                                 "natural": m.get("natural")}))
    if audit.get("drift"):
        rows = []
        for a, d in audit["drift"].items():
            for i, c in enumerate(d["classes"]):
                rows.append(f"<tr><td>{e(a)}</td><td>{e(c)}</td><td>{_fmt(d['achieved'][i], 3)}</td><td>{_fmt(d['natural'][i], 3)}"
                            f"</td><td>{_fmt(d['difference'][i], 3)} [{_fmt(d['low'][i], 3)}, {_fmt(d['high'][i], 3)}]</td></tr>")
        body.append("<h2>Drift of attributes that were not targeted</h2><table><tr><th>attribute</th><th>class</th>"
                    "<th>achieved</th><th>natural</th><th>difference [95%]</th></tr>" + "".join(rows) + "</table>")
    natural_sheets = dict(natural_sheets or {})
    if audit.get("images"):
        rows = []
        for cell, r in audit["images"].items():
            rows.append(f"<tr><td>{e(cell)}</td><td>{r['n']}</td><td>{r['n_natural']}</td><td>{_fmt(r['lpips'])}</td>"
                        f"<td>{_fmt(r['lpips_natural'])}</td><td>{_pm(r.get('lpips_ratio'), r.get('lpips_ratio_stderr'), 3)}"
                        f"</td><td>{_pm(_scaled(r.get('kid')), _scaled(r.get('kid_stderr')), 2)}</td>"
                        f"<td>{_pm(_scaled(r.get('kid_noise')), _scaled(r.get('kid_noise_stderr')), 2)}</td></tr>")
        whole = audit["images"].get("_all", {}).get("frechet_vgg16")
        body.append("<h2>Diversity and distribution shift per cell</h2><p>Mean pairwise LPIPS within each cell "
                    "(higher = more diverse) and the ratio of this set's to the natural generator's images of the "
                    "same cell (&plusmn; standard error; within noise of 1 = as varied as the generator's own "
                    "faces of that cell). KID: the unbiased polynomial-kernel MMD between this set's and the "
                    "natural images of the cell on VGG16 features (x 1000, &plusmn; jackknife standard error); "
                    "KID noise: the same between two halves of the natural images, what two sets from one "
                    "distribution show. KID is unbiased at any size, so cells compare; the Frechet distance is "
                    "biased at per-cell sizes and is given only for the whole sets"
                    + (f" ({_fmt(whole, 2)})" if whole is not None else "") + ".</p>"
                    "<table><tr><th>cell</th><th>n</th><th>n natural</th><th>LPIPS</th><th>LPIPS natural</th>"
                    "<th>ratio</th><th>KID x1000</th><th>KID noise x1000</th></tr>" + "".join(rows) + "</table>")
    if sheets:
        body.append("<h2>Contact sheets</h2>" + ("<p>Left: this set; right: the natural generator's images "
                                                   "labelled in the same cell.</p>" if natural_sheets else ""))
        for cell, png in sheets.items():
            img = (f"<img alt='{e(cell)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'/>")
            if cell in natural_sheets:
                nat_img = (f"<img alt='{e(cell)} natural' src='data:image/png;base64,"
                           f"{base64.b64encode(natural_sheets[cell]).decode()}'/>")
                body.append(f"<h3>{e(cell)}</h3><table class='sheets'><tr><th>this set</th><th>natural</th></tr>"
                            f"<tr><td>{img}</td><td>{nat_img}</td></tr></table>")
            else:
                body.append(f"<h3>{e(cell)}</h3>{img}")
    if settings:
        body.append("<h2>Settings</h2><pre>" + e(json_dumps(settings, indent=2, sort_keys=True))
                    + "</pre>")
    page = _html_page(title, body, 960)
    path = out_dir / "report.html"
    atomic_write_text(path, page)
    return path


def _ci(v) -> str:
    return "" if not v else f"[{_fmt(v[0], 3)}, {_fmt(v[1], 3)}]"


def _rate_cell(r) -> str:
    return f"{_fmt(r['rate'], 3)} {_ci(r['ci95'])}" if r and r.get("rate") is not None else "n/a"


def write_evaluation_report(result: dict, out_dir: str | Path, sheets: Mapping[str, bytes] | None = None,
                            title: str = "latent-balance evaluation") -> Path:
    """Write ``evaluation.json`` and ``evaluation.html`` (charts inline) for :func:`latent_balance.evaluate.evaluate_dataset`.

    Args:
        result:  the evaluation dict (sections ``classifier``, ``counterfactual``, ``system`` as present).
        out_dir: folder (created).
        sheets:  ``"counterfactual"`` / ``"system"`` -> PNG bytes (pairs: originals over edits; system:
                 inputs over outputs), shown inline.
        title:   page title.

    Returns:
        Path of ``evaluation.html``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "evaluation.json", json_dumps(result, indent=2, sort_keys=True))
    e = html.escape
    st = result["settings"]
    body = [f"<h1>{e(title)}</h1><p>{result['n']} images of {e(str(result['dataset']))} (generator "
            f"{e(str(st.get('generator')))}, {e(str(st.get('dataset_mode')))}); reference labels are our labelers'. "
            f"Seed {st['seed']}, {st['n_boot']} bootstrap replicates.</p>"]
    clf = result.get("classifier")
    if clf:
        noise = clf["label_noise"]
        groups = clf["per_group"]
        body.append(f"<h2>Classifier {e(st['classifier'])}: task {e(st['task'])}</h2>"
                    f"<p>Groups: cells over {e(' x '.join(clf['groups']['attributes']))}; predicted positive when "
                    f"P >= {clf['threshold']}.</p>")
        rows = []
        for g, r in list(groups.items()) + [("overall", clf["overall"])]:
            rows.append(f"<tr><td>{e(g)}</td><td>{r['n']}</td><td>{_fmt(r['base_rate'], 3)}</td>"
                        f"<td>{_fmt(r['accuracy'], 3)}</td><td>{_fmt(r['tpr'], 3)}</td><td>{_fmt(r['fpr'], 3)}</td>"
                        f"<td>{_fmt(r['positive_rate'], 3)}</td><td>{_fmt(r['brier'], 3)}</td><td>{_fmt(r['ece'], 3)}</td></tr>")
        body.append("<table><tr><th>group</th><th>n</th><th>label base rate</th><th>accuracy</th><th>TPR</th>"
                    "<th>FPR</th><th>positive rate</th><th>Brier</th><th>ECE</th></tr>" + "".join(rows) + "</table>")
        names = list(groups)
        body.append(_bar_chart("Per group", names, {
            "accuracy": [groups[g]["accuracy"] for g in names],
            "TPR": [groups[g]["tpr"] or 0.0 for g in names], "FPR": [groups[g]["fpr"] or 0.0 for g in names],
            "positive rate": [groups[g]["positive_rate"] for g in names]}))
        rows = []
        for k, d in clf["disparities"].items():
            beyond = {True: "yes", False: "no", None: "n/a"}[d.get("beyond_floor")]
            rows.append(f"<tr><td>{e(k.replace('_', ' '))}</td><td>{_fmt(d['value'], 3)}</td><td>{_ci(d['ci95'])}</td>"
                        f"<td>{_fmt(d['floor'], 3)}</td><td>{beyond}</td></tr>")
        agreement = noise.get("agreement")
        floor_text = (f"Floor: what a fair classifier that reproduces our labels up to our labeler's own disagreement "
                      f"(agreement {agreement:.3f}, {e(str(noise.get('source')))}) shows on this dataset, 95th "
                      f"percentile of {st['n_boot']} draws (5th for the ratio). Such a classifier's accuracy "
                      f"against these labels is about {agreement:.3f} in every group. The bootstrap interval is the "
                      f"plug-in measure's spread (biased upward near 0); compare the value with the floor."
                      if agreement is not None else
                      f"No label-noise floor: {e(str(noise.get('reason')))}.")
        body.append("<h3>Between groups (fairlearn)</h3><table><tr><th>measure</th><th>value</th><th>95% bootstrap</th>"
                    "<th>label-noise floor</th><th>beyond floor</th></tr>" + "".join(rows) + f"</table><p>{floor_text}</p>")
    cf = result.get("counterfactual")
    if cf:
        body.append(f"<h2>Counterfactual pairs: {e(cf['attribute'])} flipped, {e(', '.join(cf['held_fixed']))} held</h2>"
                    f"<p>{e(cf['method'])}. Task {e(cf['task'])}.</p>")
        rows = []
        parts = list(cf["by_direction"].items()) + [("overall", cf["overall"])]
        for name, r in parts:
            kept = "; ".join(f"{e(a)} {_rate_cell(v)}" for a, v in r["others_kept"].items())
            rows.append(f"<tr><td>{e(name)}</td><td>{r['n']}</td><td>{_rate_cell(r['edit_success'])}</td><td>{kept}</td>"
                        f"<td>{_rate_cell(r['clean'])}</td><td>{_fmt(r['lpips']['mean'], 3)}</td>"
                        f"<td>{_rate_cell(r['prediction_flip'])}</td><td>{_rate_cell(r['prediction_flip_clean'])}</td>"
                        f"<td>{_fmt(r['mean_abs_change']['mean'], 3)}</td><td>{_fmt(r['mean_change']['mean'], 3)}</td></tr>")
        body.append("<table><tr><th>direction</th><th>pairs</th><th>edit success</th><th>other labels kept</th>"
                    "<th>clean pairs</th><th>LPIPS pair</th><th>prediction flips</th><th>flips, clean pairs</th>"
                    "<th>mean |change of P|</th><th>mean change of P</th></tr>" + "".join(rows) + "</table>")
        labels = [n for n, _ in parts]
        body.append(_bar_chart("Counterfactual pairs", labels, {
            "edit success": [r["edit_success"]["rate"] or 0.0 for _, r in parts],
            "flip (all)": [r["prediction_flip"]["rate"] or 0.0 for _, r in parts],
            "flip (clean)": [r["prediction_flip_clean"]["rate"] or 0.0 for _, r in parts],
            "LPIPS": [r["lpips"]["mean"] or 0.0 for _, r in parts]}))
        ref = cf["reference"]
        if ref.get("labeler_mirror_agreement") is not None:
            body.append(f"<p>Reference: our task labeler's mirror agreement {ref['labeler_mirror_agreement']:.3f}; "
                        f"{e(ref['meaning'])}.</p>")
    sy = result.get("system")
    if sy:
        body.append(f"<h2>Image-to-image system {e(st['system'])}</h2><p>Per cell: how often each attribute's label "
                    "survives the system (label on the output = the dataset's label), and LPIPS from input to output"
                    + (" (outputs resized to the input size)" if sy.get("output_resized_to_input") else "") + ".</p>")
        attrs = list(sy["overall"]["kept"])
        rows = []
        for name, r in list(sy["per_cell"].items()) + [("overall", sy["overall"])]:
            rows.append(f"<tr><td>{e(name)}</td><td>{r['n']}</td>" + "".join(f"<td>{_rate_cell(r['kept'][a])}</td>" for a in attrs)
                        + f"<td>{_fmt(r['lpips_to_input']['mean'], 3)}</td></tr>")
        rows.append("<tr><td>largest gap between cells</td><td></td>" + "".join(f"<td>{_fmt(sy['kept_gap'][a], 3)}</td>" for a in attrs)
                    + f"<td>{_fmt(sy['lpips_gap'], 3)}</td></tr>")
        rows.append("<tr><td>reference: labeler mirror agreement</td><td></td>"
                    + "".join(f"<td>{_fmt(sy['reference'][a], 3)}</td>" for a in attrs) + "<td></td></tr>")
        body.append("<table><tr><th>cell</th><th>n</th>" + "".join(f"<th>{e(a)} kept</th>" for a in attrs)
                    + "<th>LPIPS to input</th></tr>" + "".join(rows) + "</table>")
        cells = list(sy["per_cell"])
        series = {f"{a} kept": [sy["per_cell"][c]["kept"][a]["rate"] or 0.0 for c in cells] for a in attrs}
        series["LPIPS"] = [sy["per_cell"][c]["lpips_to_input"]["mean"] or 0.0 for c in cells]
        body.append(_bar_chart("System: labels kept and LPIPS per cell", cells, series))
    for key, caption in (("counterfactual", "originals (top) and edits (bottom), largest classifier changes first"),
                         ("system", "inputs (top) and outputs (bottom), one per cell")):
        png = (sheets or {}).get(key)
        if png:
            body.append(f"<h3>{e(key)}: {e(caption)}</h3><img alt='{e(key)}' src='data:image/png;base64,"
                        f"{base64.b64encode(png).decode()}'/>")
    body.append("<h2>Settings</h2><pre>" + e(json_dumps(st, indent=2, sort_keys=True)) + "</pre>")
    page = _html_page(title, body, 1100)
    path = out_dir / "evaluation.html"
    atomic_write_text(path, page)
    return path
