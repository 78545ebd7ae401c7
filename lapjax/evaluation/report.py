"""``report.json`` and ``report.md`` of an evaluation run."""

from __future__ import annotations

import json
import os
from typing import Any


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


def write_report(workdir: str, report: dict[str, Any]) -> tuple[str, str]:
  """Writes ``report.json`` and ``report.md`` into ``workdir``."""
  json_path = os.path.join(workdir, "report.json")
  md_path = os.path.join(workdir, "report.md")
  with open(json_path, "w") as f:
    json.dump(report, f, indent=2)
  with open(md_path, "w") as f:
    f.write(_markdown(report))
  return json_path, md_path
