"""The learning curve of a model trained in parts (sessions, warm starts): append a run's probe rows to a CSV
history with cumulative CPU-hours, and plot the whole history.

Each part is a run folder whose ``logs*/metrics.csv`` hold the probe columns of
:class:`tvcsp.diagnostics.ProbeCallback`, trained from its step ``--start-step`` (a resumed run; 0 for a new or
warm-started run) at a cost of ``--hours-per-step`` (cores × wall-clock hours per step), when the whole model
already had ``--start-hours`` CPU-hours; ``--offset-steps`` is added to the run's steps (a warm start counts from
0 again). Rows already in the history at the same total step are replaced.

Run: ``python tools/probe_history.py models/perov_5_probe_history.csv --run runs/perov_5_cpu_ws1 --part ws1
--offset-steps 9700 --start-hours 2.12 --hours-per-step 0.00025 --plot figures/train/perov_5_cpu_probe_curve.png``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from tvcsp.train import read_metrics
from tvcsp.viz import plot_probe_curve

COLUMNS = ["step", "cpu_hours", "part", "probe_train_match_rate", "probe_val_match_rate",
           "probe_train_composition_accuracy", "probe_val_composition_accuracy"]


def part_rows(run: Path, part: str, start_step: int, start_hours: float, hours_per_step: float,
              offset_steps: int) -> pd.DataFrame:
    metrics = read_metrics(run)
    probes = metrics.dropna(subset=["probe_val_match_rate"]).drop_duplicates("step", keep="last")
    rows = probes[probes["step"] > start_step][[c for c in COLUMNS if c in probes.columns]].copy()
    rows["cpu_hours"] = start_hours + (rows["step"] - start_step) * hours_per_step
    rows["step"] = rows["step"] + offset_steps
    rows["part"] = part
    return rows.reindex(columns=COLUMNS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("history", type=Path)
    parser.add_argument("--run", type=Path, help="run folder to append")
    parser.add_argument("--part", default="", help="label of the part (e.g. the session or the recipe)")
    parser.add_argument("--start-step", type=int, default=0)
    parser.add_argument("--start-hours", type=float, default=0.0)
    parser.add_argument("--offset-steps", type=int, default=0)
    parser.add_argument("--hours-per-step", type=float, default=0.0)
    parser.add_argument("--plot", type=Path, help="write the probe curve of the whole history here")
    parser.add_argument("--title", default="perov_5, cpu recipe")
    args = parser.parse_args()
    history = pd.read_csv(args.history) if args.history.is_file() else pd.DataFrame(columns=COLUMNS)
    if args.run:
        new = part_rows(args.run, args.part, args.start_step, args.start_hours, args.hours_per_step,
                        args.offset_steps)
        history = pd.concat([history[~history["step"].isin(new["step"])], new]).sort_values("step")
        history.to_csv(args.history, index=False, float_format="%.6g")
        print(f"{args.history}: {len(new)} rows from {args.run} ({args.part})")
    if args.plot:
        plot_probe_curve(history, None, args.title, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
