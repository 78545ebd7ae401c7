"""``report.json`` and ``report.md`` of an evaluation run.

Both are replaced atomically (temporary file, then rename). ``report.json``
is strict JSON: undefined values (NaN, infinities) are ``null``.
"""

from __future__ import annotations

import os
from typing import Any

from lapjax.train.run_folder import atomic_write, dumps


def _markdown(report: dict[str, Any]) -> str:
  c = report["classification"]
  names = report["class_names"]
  lines = [
      f"# Evaluation of `{report['workdir']}`", "",
      f"Checkpoint step {report['step']}, split `{report['split']}`, "
      f"{c['n']} images, model `{report['model']}`, data `{report['data']}`.",
      "", "| metric | value |", "|---|---|",
      f"| accuracy | {c['accuracy']:.4f} |",
      f"| balanced accuracy | {c['balanced_accuracy']:.4f} |",
      f"| F1 (macro) | {c['f1_macro']:.4f} |", "",
      "| class | F1 |", "|---|---|"]
  for name, f1 in zip(names, c["f1_per_class"]):
    lines.append(f"| {name} | {'n/a' if f1 is None else f'{f1:.4f}'} |")
  lines += ["", "Confusion matrix (rows: true class, columns: predicted):", "",
            "| | " + " | ".join(names) + " |",
            "|---" * (len(names) + 1) + "|"]
  for name, row in zip(names, c["confusion_matrix"]):
    lines.append(f"| **{name}** | " + " | ".join(map(str, row)) + " |")
  if "explanations" in report:
    lines += _explanation_tables(report)
  if "saliency" in report:
    from lapjax.evaluation.saliency_report import markdown
    lines += markdown(report["saliency"])
  if "lap" in report:
    from lapjax.evaluation.lap_report import markdown
    lines += markdown(report["lap"])
  figures = report.get("figures", [])
  if figures:
    lines += ["", *[f"![{f}]({f})" for f in figures]]
  return "\n".join(lines) + "\n"


def _explanation_tables(report: dict[str, Any]) -> list[str]:
  ex = report["explanations"]
  scores = ex["scores"]
  metric_names = list(next(iter(scores.values())))
  lines = ["", f"## Explanations ({ex['n_images']} test images, maps for "
           f"the {ex['targets']})", "",
           "Mean ± std over images where defined; n = defined values, NaN = "
           "undefined (empty masks, constant maps).", "",
           "| method | " + " | ".join(metric_names) + " |",
           "|---" * (len(metric_names) + 1) + "|"]
  for method, per_metric in scores.items():
    cells = [f"{s['mean']:.3f} ± {s['std']:.3f} (n={s['n']}, NaN={s['nan']})"
             for s in per_metric.values()]
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  lines += _failure_tables(ex)
  faith = report.get("faithfulness", {})
  if faith.get("scores"):
    names = list(next(iter(faith["scores"].values())))
    lines += ["", f"## Faithfulness ({faith['n_images']} clue images, "
              f"{faith['misclassified']} misclassified; maps and scores for "
              "the true class; AUCs in percent; baseline "
              f"{faith.get('baseline', 'zero')})", "",
              "POS, DEL lower is better; NEG, INS, NPD = NEG - POS, IDD = "
              "INS - DEL, AIC, SIC higher is better. Mean ± std; SIC/AIC "
              "skip images failing PAIR's confidence filters.", "",
              "| method | " + " | ".join(n.upper() for n in names)
              + " | SIC/AIC skipped |", "|---" * (len(names) + 2) + "|"]
    for method, per_metric in faith["scores"].items():
      cells = [f"{s['mean']:.1f} ± {s['std']:.1f}"
               for s in per_metric.values()]
      lines.append(f"| {method} | " + " | ".join(cells)
                   + f" | {faith['sic_aic_skipped'][method]} |")
  sanity = report.get("sanity", {})
  if sanity:
    first = next(iter(sanity.values()))
    keys = first["config"].get("keys", 1)
    lines += ["", "## Cascading randomisation (Spearman to trained maps, "
              f"mean over images and {keys} randomisation keys)", "",
              "| method | " + " | ".join(["trained"] + first["layers"]) + " |",
              "|---" * (len(first["layers"]) + 2) + "|"]
    for method, r in sanity.items():
      lines.append(f"| {method} | " + " | ".join(
          f"{v:.3f}" for v in r["spearman"]) + " |")
  return lines


def _failure_tables(ex: dict[str, Any]) -> list[str]:
  """Per method, the maps with no score (all-zero or constant maps,
  non-finite maps) and the means with those maps scored as misses."""
  status = ex.get("map_status")
  if not status:
    return []
  lines = ["", "### Maps without a score", "",
           "Images whose mask is neither empty nor full, per method: maps "
           "that are constant (e.g. all zero: Grad-CAM after its ReLU when "
           "the class evidence is negative) are undefined for the rankings, "
           "non-finite maps are invalid. The means above leave them out; "
           "the worst case below scores every NaN on these images as a miss "
           "(0), so a method that fails often is not flattered.", "",
           "| method | images | constant maps | non-finite maps |",
           "|---|---|---|---|"]
  for method, s in status.items():
    lines.append(f"| {method} | {s['usable_masks']} | {s['constant_maps']} "
                 f"| {s['nonfinite_maps']} |")
  worst = {m: {k: v["worst_mean"] for k, v in per.items()
               if "worst_mean" in v}
           for m, per in ex["scores"].items()}
  names = list(next(iter(worst.values())))
  if not names:
    return lines
  lines += ["", "### Worst case (undefined and invalid maps scored as "
            "misses, 0)", "",
            "| method | " + " | ".join(names) + " |",
            "|---" * (len(names) + 1) + "|"]
  for method, per in worst.items():
    lines.append(f"| {method} | " + " | ".join(
        f"{per[k]:.3f}" for k in names) + " |")
  return lines


def write_report(workdir: str, report: dict[str, Any]) -> tuple[str, str]:
  """Writes ``report.json`` (strict JSON, ``null`` for NaN) and
  ``report.md`` into ``workdir``, each atomically."""
  json_path = os.path.join(workdir, "report.json")
  md_path = os.path.join(workdir, "report.md")
  markdown = _markdown(report)
  atomic_write(json_path, dumps(report, indent=2))
  atomic_write(md_path, markdown)
  return json_path, md_path
