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
  figures = report.get("figures", [])
  if figures:
    lines += ["", *[f"![{f}]({f})" for f in figures]]
  return "\n".join(lines) + "\n"


def write_report(workdir: str, report: dict[str, Any]) -> tuple[str, str]:
  """Writes ``report.json`` and ``report.md`` into ``workdir``."""
  json_path = os.path.join(workdir, "report.json")
  md_path = os.path.join(workdir, "report.md")
  with open(json_path, "w") as f:
    json.dump(report, f, indent=2)
  with open(md_path, "w") as f:
    f.write(_markdown(report))
  return json_path, md_path
