"""Chapter 5 (``05_federated``): records, FID curves and the study's findings on FedAvg of DC-GANs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..data import ImageSet
from ..store import Step, StepResult
from .common import dataset_fields, labelled, phantom_banner, verdict

if TYPE_CHECKING:
    from ..federated import Design


def site_pair_fields(sets: list[ImageSet]) -> dict[str, Any]:
    """``dataset_fields`` of a federation: one data set split across the sites, or one data set per site."""
    if len(sets) == 1:
        return dataset_fields(sets[0])
    return {"dataset": " | ".join(s.name for s in sets), "modality": " | ".join(s.modality for s in sets),
            "phantom": any(s.is_phantom for s in sets), "data_checksum": " | ".join(s.checksum for s in sets)}


def federated_records(fields: dict[str, Any], config: dict[str, Any], run: str, rows: list[dict[str, Any]],
                      feature_extractor: str) -> list[dict[str, Any]]:
    """``metrics.json`` records of one federation (``run`` "FedAvg") or baseline ("centralised", "local only,
    site 0", ...): FID and KID per round and model, with the federation's settings."""
    settings = {key: config[key] for key in ("split", "alpha", "image_size", "local_epochs", "networks")}
    return [{**fields, "section": "federated", "run": run, **settings, **row, "feature_extractor": feature_extractor}
            for row in rows]


def communication_record(fields: dict[str, Any], config: dict[str, Any], rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Bytes and seconds per FedAvg round; the first round also pays for starting the simulated sites."""
    later = rounds[1:] or rounds
    return {**fields, "section": "communication", "split": config["split"], "image_size": config["image_size"],
            "local_epochs": config["local_epochs"], "rounds": len(rounds),
            "bytes_per_round": float(np.mean([r["bytes_to_sites"] + r["bytes_from_sites"] for r in rounds])),
            "first_round_seconds": rounds[0]["seconds"], "seconds_per_later_round": float(np.mean([r["seconds"] for r in later]))}


def design_notice(design: Design) -> str:
    """Markdown: what this run federates, and which of the study's settings it leaves out."""
    settings = design.settings
    text = (f"Profile `{settings['profile']}`: {settings['fl_epochs']} local epochs per site, aggregated every "
            f"{design.periods} epoch(s), {design.sizes} px, splits {design.splits}, averaging {design.networks}.")
    sizes, splits = set(design.sizes), set(design.splits)
    if design.extended:
        name, more_sizes, more_splits = design.extended
        sizes, splits = sizes | set(more_sizes), splits | set(more_splits)
        text += (f" {name} alone also federates at {design.sizes_for(name)} px under splits "
                 f"{design.splits_for(name)}.")
    left_out = [f"{what} (the study's)" for what, ran in (("128 px", 128 in sizes),
                                                          ("aggregation every 1, 3 and 5 epochs",
                                                           {1, 3, 5} <= set(design.periods))) if not ran]
    left_out += [] if "dirichlet" in splits else ["the non-IID (dirichlet) split"]
    if left_out:
        text += (f"\n\n**This run leaves out {', '.join(left_out)}**: the `{settings['profile']}` profile's settings; "
                 "the `gpu` profile runs them all, and `-p sizes`, `-p periods` or `-p splits` add them here.")
    return text


def sites_table(gaps: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Per federation and site (rows of ``federated.site_gap``): its images and pathology share,
    beside the FID between the two sites, raw and relative to the features' spread."""
    rows = [{"data": gap["federation"].name, "split": gap["federation"].split, "px": gap["federation"].image_size,
             "site": site, "images": images, "pathology share": share, "FID between the sites": gap["site_fid"],
             "relative to the feature spread": gap["site_fid_relative"]}
            for gap in gaps for site, (images, share) in enumerate(zip(gap["images"], gap["pathology_shares"]))]
    return pd.DataFrame(rows).set_index(["data", "split", "px", "site"])


def from_steps(steps: Sequence[Step], results: dict[str, StepResult]) -> tuple[list[dict[str, Any]],
                                                                              list[dict[str, Any]]]:
    """Chapter 5's stored results as ``(gaps, runs)``: each federation's ``federated.site_gap`` row and each study
    run's ``federated.evaluate_run`` row, in the order of its steps (``medsec_utils.steps.federated``)."""
    gaps, runs = [], []
    for step in steps:
        row = {"federation": step.inputs["federation"], **results[step.id].record}
        (runs if "run" in step.inputs else gaps).append(row)
    return gaps, runs


def chapter_records(gaps: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``metrics.json`` records of the chapter: each federation's heterogeneity (``federated.site_gap``), then the
    FIDs of every run and each FedAvg run's communication (``federated.evaluate_run``)."""
    records = []
    for gap in gaps:
        federation = gap["federation"]
        records.append({**site_pair_fields(list(federation.sets)), "section": "heterogeneity",
                        "split": federation.split, "image_size": federation.image_size, "site_fid": gap["site_fid"],
                        "site_fid_relative": gap["site_fid_relative"],
                        **{f"n_site_{site}": n for site, n in enumerate(gap["images"])}})
    for result in results:
        fields = site_pair_fields(list(result["federation"].sets))
        records += federated_records(fields, result["config"], result["run"], result["fids"],
                                     result["feature_extractor"])
        if result["run"] == "FedAvg":
            records.append(communication_record(fields, result["config"], result["rounds"]))
    return records


def communication_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Rounds, bytes per round and seconds per round of every FedAvg run."""
    frame = pd.DataFrame([r for r in records if r["section"] == "communication"])
    return frame.set_index(["dataset", "split", "image_size", "local_epochs"])[
        ["rounds", "bytes_per_round", "first_round_seconds", "seconds_per_later_round"]].round(2)


def _fid_curves(records: list[dict[str, Any]]) -> pd.DataFrame:
    frame = labelled(pd.DataFrame([r for r in records if r["section"] == "federated"]))
    frame = frame[(frame["run"] == "FedAvg") | (frame["model"] == "server")]
    frame["curve"] = np.where(frame["run"] == "FedAvg", "FedAvg " + frame["model"], frame["run"])
    fed, base = frame[frame["run"] == "FedAvg"], frame[frame["run"] != "FedAvg"]
    splits = fed.groupby(["dataset", "image_size"])["split"].unique()
    periods = fed.groupby(["dataset", "image_size", "split"])["local_epochs"].unique()
    panels = [fed]
    for (name, size, split), rows in base.groupby(["dataset", "image_size", "split"]):
        for each in (splits.get((name, size), []) if split == "pooled" else [split]):
            for period in periods.get((name, size, each), []):
                panels.append(rows.assign(split=each, local_epochs=period))
    curves = pd.concat(panels, ignore_index=True)
    curves["sites"] = curves["dataset"] + ", " + curves["split"] + ", " + curves["image_size"].astype(str) + " px"
    return curves


def plot_federated_fid(records: list[dict[str, Any]]) -> plt.Figure:
    """FID against local epochs: the FedAvg server and each site's model before averaging, beside centralised
    training on the pooled images and local-only training; one row per data set and split, one column per
    aggregation period."""
    curves = _fid_curves(records)
    grid = sns.relplot(data=curves, x="epoch", y="fid", hue="curve", col="local_epochs", row="sites", kind="line",
                       marker="o", markersize=3, height=2.1, aspect=1.5, facet_kws={"sharey": "row"})
    grid.set_titles("{row_name}; aggregate every {col_name} epoch(s)", size=7)
    grid.set(yscale="log", xlabel="local epochs per site", ylabel="FID")
    extractors = "; ".join(dict.fromkeys(curves["feature_extractor"]))
    grid.figure.text(0.01, -0.02, f"features: {extractors}", fontsize=6, wrap=True)
    phantom_banner(grid.figure, curves["dataset"])
    return grid.figure


def federated_summary(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Per data set, split, size and aggregation period: the FID of the FedAvg server, of centralised and
    of local-only training over the second half of training (the median, as single rounds of a GAN jump by
    orders of magnitude), the untrained generator's FID, their ratios, and the sites' heterogeneity: the
    FID between their real images, raw and relative to the features' spread (comparable across
    modalities, whose feature spaces differ in scale)."""
    curves = _fid_curves(records)
    keys = ["dataset", "split", "image_size", "local_epochs"]
    end = curves.groupby(keys)["epoch"].transform("max")
    late = curves[(curves["epoch"] > 0) & (curves["epoch"] >= end / 2)]
    table = late.pivot_table(index=keys, columns="curve", values="fid", aggfunc="median")
    local = [c for c in table.columns if c.startswith("local only")]
    start = curves[(curves["epoch"] == 0) & (curves["curve"] == "FedAvg server")].groupby(keys)["fid"].first()
    summary = pd.DataFrame({"server_fid": table["FedAvg server"], "centralised_fid": table["centralised"],
                            "local_only_fid": table[local].mean(axis=1), "untrained_fid": start})
    summary["server_over_centralised"] = summary["server_fid"] / summary["centralised_fid"]
    summary["server_over_local_only"] = summary["server_fid"] / summary["local_only_fid"]
    summary["server_over_untrained"] = summary["server_fid"] / summary["untrained_fid"]
    hetero = labelled(pd.DataFrame([r for r in records if r["section"] == "heterogeneity"]))
    hetero = hetero.set_index(["dataset", "split", "image_size"])
    for column, name in (("site_fid", "site_heterogeneity_fid"), ("site_fid_relative", "site_heterogeneity_relative")):
        values = hetero[column] if column in hetero else pd.Series(dtype=float)
        summary[name] = [values.get((d, s, z), np.nan) for d, s, z, _ in summary.index]
    return summary


def _heterogeneity_axis(frame: pd.DataFrame) -> tuple[str, str]:
    """The scale-free heterogeneity when the run recorded it, else the raw FID between the sites."""
    if "site_heterogeneity_relative" in frame and frame["site_heterogeneity_relative"].notna().all():
        return "site_heterogeneity_relative", "FID between the two sites' real images / their feature spread"
    return "site_heterogeneity_fid", "FID between the two sites' real training images (heterogeneity)"


def plot_heterogeneity(summary: pd.DataFrame) -> plt.Figure:
    """How different the sites' images are (x) against how far FedAvg stays from centralised training (y)."""
    from scipy.stats import spearmanr

    frame = summary.reset_index()
    x, label = _heterogeneity_axis(frame)
    fig, ax = plt.subplots(figsize=(6.2, 4))
    sns.scatterplot(data=frame, x=x, y="server_over_centralised", hue="dataset", style="split",
                    size="local_epochs", sizes=(30, 120), ax=ax)
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
    ax.set(xscale="log", yscale="log", xlabel=label, ylabel="FedAvg server FID / centralised FID (second half)")
    ax.legend(fontsize=6, bbox_to_anchor=(1.02, 1), loc="upper left")
    if len(frame) >= 3:
        rho, p = spearmanr(frame[x], frame["server_over_centralised"])
        ax.set_title(f"Spearman rho = {rho:.2f} (p = {p:.2g}, {len(frame)} federations)", fontsize=8)
    phantom_banner(fig, frame["dataset"])
    return fig


FEDERATED_FINDINGS = (  # the study's findings per modality, and the outcome each one predicts
    ("chest X-ray: FedAvg converges", "chest_xray", "converges"),
    ("CT: FedAvg is unstable", "ct", "unstable"),
    ("histology: FedAvg fails", "histology", "fails"),
)


def federated_claims(records: list[dict[str, Any]], converged_within: float = 1.5, failed_beyond: float = 3.0,
                     unstable_above: float = 1.5, learned_below: float = 0.5) -> pd.DataFrame:
    """The study's findings on FedAvg, each judged on this run's IID federations (the study's split).

    Per federation, on the FIDs of :func:`federated_summary` (second half of training): the server has
    *learned* when its FID is below ``learned_below`` times the untrained generator's; the federation
    *converges* when it has learned and is within ``converged_within`` times the centralised FID, *fails*
    when it has not learned or is beyond ``failed_beyond`` times (neither is testable when centralised
    training did not learn either: the GAN, not FedAvg, failed), and is *unstable* when its server FID
    swings ``unstable_above`` times as much as centralised training's over the same epochs
    (:func:`_swing`; a floor of 0.02 keeps a smooth baseline from making any wobble unstable). A finding
    is "reproduced" when it holds for every aggregation period and size of its modality, "not
    reproduced" when for none, "partly" otherwise. The last row tests the study's explanation across all
    federations: the more the sites' images differ (relative FID when recorded), the further FedAvg stays
    from centralised training (Spearman rho > 0 at p < 0.05).
    """
    table = _federation_outcomes(records, converged_within, failed_beyond, unstable_above, learned_below)
    iid = table[table["split"] == "iid"]
    rows = []
    for finding, modality, outcome in FEDERATED_FINDINGS:
        rows.append(_verdict(finding, [(r, r[outcome]) for _, r in iid[iid["modality"] == modality].iterrows()]))
    wide = iid[(iid["image_size"] >= 128) & (iid["local_epochs"] >= 5)]
    rows.append(_verdict("every 5 epochs at 128 px: FedAvg fails", [(r, r["fails"]) for _, r in wide.iterrows()]))
    rows.append(_homogeneity_verdict(table))
    return pd.DataFrame(rows)


def _federation_outcomes(records: list[dict[str, Any]], converged_within: float, failed_beyond: float,
                         unstable_above: float, learned_below: float) -> pd.DataFrame:
    """One row per federation: its FID ratios, swings and the three outcomes."""
    curves = _fid_curves(records)
    modality = dict(zip(curves["dataset"], curves["modality"]))
    rows = []
    for key, row in federated_summary(records).iterrows():
        keys = dict(zip(["dataset", "split", "image_size", "local_epochs"], key))
        panel = curves[np.logical_and.reduce([curves[name] == value for name, value in keys.items()])]
        server = panel[panel["curve"] == "FedAvg server"].set_index("epoch")["fid"].sort_index()
        server = server[server.index > 0]  # round 0 is the untrained model every run starts from
        pooled = panel[panel["curve"] == "centralised"].set_index("epoch")["fid"].reindex(server.index)
        swing, pooled_swing = _swing(server), _swing(pooled)
        ratio, learned = row["server_over_centralised"], bool(row["server_over_untrained"] < learned_below)
        testable = bool(row["centralised_fid"] < learned_below * row["untrained_fid"])
        rows.append({**keys, "modality": modality[key[0]], "server_over_centralised": ratio,
                     "server_over_untrained": row["server_over_untrained"],
                     "centralised_over_untrained": row["centralised_fid"] / row["untrained_fid"],
                     "server_swing": swing, "centralised_swing": pooled_swing,
                     "site_heterogeneity_fid": row["site_heterogeneity_fid"],
                     "site_heterogeneity_relative": row["site_heterogeneity_relative"],
                     "converges": learned and bool(ratio <= converged_within) if testable else None,
                     "fails": not learned or bool(ratio >= failed_beyond) if testable else None,
                     "unstable": bool(swing >= unstable_above * max(pooled_swing, 0.02))
                     if np.isfinite(swing * pooled_swing) else None})
    return pd.DataFrame(rows)


def _swing(fid: pd.Series) -> float:
    """Back-and-forth of a FID curve: per step, the total change of log FID beyond its net change
    (0 for a curve that only falls or only rises)."""
    steps = np.diff(np.log(fid.dropna().to_numpy(dtype=float)))
    return float((np.abs(steps).sum() - abs(steps.sum())) / len(steps)) if len(steps) else float("nan")


def _verdict(finding: str, results: list[tuple[pd.Series, bool | None]]) -> dict[str, str]:
    evidence = "; ".join(
        f"{r['dataset']} {r['image_size']} px every {r['local_epochs']}: server/centralised "
        f"{r['server_over_centralised']:.2f}, server/untrained {r['server_over_untrained']:.2f}, "
        f"centralised/untrained {r['centralised_over_untrained']:.2f}, swing {r['server_swing']:.2f} vs {r['centralised_swing']:.2f}"
        for r, _ in results)
    return {"finding": finding, "verdict": verdict(ok for _, ok in results),
            "evidence": evidence or "no such federation in this run"}


def _homogeneity_verdict(table: pd.DataFrame) -> dict[str, str]:
    from scipy.stats import spearmanr

    finding = "FedAvg does worse the more the sites' images differ"
    x, _ = _heterogeneity_axis(table)
    usable = table.dropna(subset=[x, "server_over_centralised"])
    if len(usable) < 3 or usable[x].nunique() < 2:
        return {"finding": finding, "verdict": "not testable here", "evidence": f"{len(usable)} federation(s)"}
    rho, p = spearmanr(usable[x], usable["server_over_centralised"])
    outcome = "not reproduced" if rho <= 0 else "reproduced" if p < 0.05 else "inconclusive (p >= 0.05)"
    return {"finding": finding, "verdict": outcome,
            "evidence": f"Spearman rho {rho:.2f} (p = {p:.2g}) over {len(usable)} federations, heterogeneity as {x}"}


def invariants(records: list[dict[str, Any]], fl_epochs: int) -> dict[str, bool]:
    """Chapter 5's self-check: FIDs not negative, every FedAvg run as many rounds as its period gives for
    ``fl_epochs`` local epochs, every site holding images."""
    fids = [r for r in records if r["section"] == "federated"]
    return {"FID not negative": all(r["fid"] >= -1e-9 for r in fids),
            "each FedAvg run its rounds": all(r["rounds"] == fl_epochs // r["local_epochs"]
                                              for r in records if r["section"] == "communication"),
            "every site holds images": all(r["n_site_0"] > 0 and r["n_site_1"] > 0
                                           for r in records if r["section"] == "heterogeneity")}
