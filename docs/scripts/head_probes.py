"""Matched probes of the loss: the same photos and budget for each head, scored over each head's dial.

    python docs/scripts/head_probes.py --data-root TRAINING_SETS --out runs/probes [--train 20000] [--score 2000]
        [--runs mse cls cls-flat] [--learning-rate 3e-4] [--split-only RUN_FOLDER]

--split-only writes the shipped weights' remade split (shipped_split) into RUN_FOLDER/split.json and stops:
a long `train --init-from shipped --output RUN_FOLDER` then validates on photos the shipped weights never
trained on (`train` reuses a split.json it finds in its output folder). --score-run NAME=RUN_FOLDER (any
number) scores more runs (the long ones) on the same photos over the same dials, and --temperatures and
--saturations change the dials.

Last, the shipping rule, fixed before any published photo is looked at, picks among every scored setting:
the highest colourfulness whose PSNR is at least RULE_DB above the gray baseline's and whose frame
statistic is at most RULE_FRAME; its line is printed last, as JSON.

Every probe starts from the shipped weights (`train --init-from shipped`) and trains one pass over the same
`--train` photos, drawn with a fixed seed from the training part of the shipped weights' own split (remade
here exactly: the same photos, seed and fractions, docs/model_card.md), with the shipped recipe otherwise:

    mse        the paper's MSE head, continued
    cls        the classification head (model/distribution.py) with class rebalancing (lambda 0.5)
    cls-flat   the classification head without rebalancing

Then each probe, and the shipped weights untouched, is scored the way `test` scores (evaluate.score_photos:
`colorize`'s full-resolution output) on the first `--score` photos of the validation part, never trained on,
at every setting of its dial: saturation 1, 1.5, 2 for MSE, temperature 1, 0.6, 0.38, 0.25 for the
classification head. One JSON line per (run, setting) goes to OUT/results.jsonl (settings already there are
not scored again, so an interrupted call resumes), then OUT/frontier.png (PSNR - gray against
colourfulness / the photos') and a markdown table on stdout. The photos on which results are published are
never used here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np

from koalarization.config import RunConfig
from koalarization.data.split import Split, make_split
from koalarization.inference.colorize import Colorizer
from koalarization.inference.evaluate import score_photos, summarize
from koalarization.run import BACKUP_DIR, SHIPPED_WEIGHTS, SPLIT_FILE, WEIGHTS_FILE, TrainedRun
from koalarization.training.train import photo_cache, train

PROBES = {
    "mse": {"loss": "mse", "rebalance": True},
    "cls": {"loss": "classification", "rebalance": True},
    "cls-flat": {"loss": "classification", "rebalance": False},
}
SATURATIONS = (1.0, 1.5, 2.0)
TEMPERATURES = (1.0, 0.6, 0.38, 0.25)
RULE_DB, RULE_FRAME = 0.5, 1.0


def shipped_config(data_root: Path) -> RunConfig:
    cfg = RunConfig.load(SHIPPED_WEIGHTS.with_name("config.json"))
    data = tuple(str(data_root / d) for d in cfg.train.data)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, data=data))


def shipped_split(store, cfg: RunConfig) -> Split:
    """The shipped weights' split, remade: scikit-learn's split (make_split) of every photo the cache lists,
    with the shipped seed and fractions, then without the photos the cache skipped. The shipped run split
    all 153,648 photos; today's gray check (at the embedder's 224 px) also skips 11 of them, and splitting
    the 153,637 left instead would move other photos between train and validation."""
    t = cfg.train
    full = make_split(store.photos, t.val_fraction, t.test_fraction, t.seed, sources=t.data)
    keep = lambda files: tuple(f for f in files if f not in store.skipped)  # noqa: E731
    return Split(full.root, keep(full.train), keep(full.val), keep(full.test), full.sources)


def probe_config(base: RunConfig, name: str, out: Path, learning_rate: float) -> RunConfig:
    spec = PROBES[name]
    model = dataclasses.replace(base.model, loss=spec["loss"])
    t = dataclasses.replace(base.train, output=str(out / name), epochs=1, init_from="shipped",
                            rebalance=spec["rebalance"], learning_rate=learning_rate, lr_schedule="plateau",
                            validate_every_steps=None, backup_every_steps=200)
    return RunConfig(model=model, train=t)


def settings(run: TrainedRun, temperatures=TEMPERATURES, saturations=SATURATIONS, gains=()) -> list[dict]:
    """The run's dial: temperatures for the classification head; saturations (colorize --saturation) and
    ab gains (config.json's ab_gain, what the weights ship with) for MSE."""
    cfg = RunConfig.load(run.config_file)
    if cfg.model.loss == "classification":
        return [{"saturation": 1.0, "temperature": t, "ab_gain": 1.0} for t in temperatures]
    return ([{"saturation": s, "temperature": None, "ab_gain": 1.0} for s in saturations]
            + [{"saturation": 1.0, "temperature": None, "ab_gain": g} for g in gains if g != 1.0])


def with_gain(run: TrainedRun, gain: float, folder: Path) -> TrainedRun:
    """`run` with config.json's ab_gain set to `gain` (a run trained from a config that ships a gain keeps
    it in its config.json, so gain 1 needs a folder too): a folder beside the results with that config and a
    link to the run's weights (ab_gain changes no weight)."""
    cfg = RunConfig.load(run.config_file)
    if gain == cfg.model.ab_gain:
        return run
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, ab_gain=gain)).to_json())
    link = folder / WEIGHTS_FILE
    link.unlink(missing_ok=True)
    link.symlink_to(run.weights.resolve())
    return TrainedRun(link)


def choose(results: list[dict]) -> dict | None:
    """The shipping rule (module docstring): None when no setting passes."""
    passing = [r for r in results if r["psnr_minus_gray"] >= RULE_DB and r["frame"] <= RULE_FRAME]
    return max(passing, key=lambda r: r["colourfulness_share"], default=None)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True, type=Path, help="folder holding the three training sets")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--train", type=int, default=20_000, help="training photos of every probe")
    parser.add_argument("--score", type=int, default=2000, help="validation photos scored")
    parser.add_argument("--runs", nargs="*", default=list(PROBES), choices=list(PROBES),
                        help="probes to train and score (none: score only the shipped weights and --score-run)")
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--split-only", type=Path, metavar="RUN_FOLDER")
    parser.add_argument("--shipped-as", default="shipped", metavar="NAME",
                        help="the name the shipped weights' rows get (a run already scored under another name, "
                             "once its weights ship, is not scored twice, nor confused with earlier shipped weights)")
    parser.add_argument("--score-run", action="append", default=[], metavar="NAME=RUN_FOLDER")
    parser.add_argument("--temperatures", type=float, nargs="+", default=list(TEMPERATURES))
    parser.add_argument("--saturations", type=float, nargs="+", default=list(SATURATIONS))
    parser.add_argument("--gains", type=float, nargs="+", default=[], help="ab_gain settings of MSE runs")
    args = parser.parse_args()

    base = shipped_config(args.data_root)
    store = photo_cache(base)
    full = shipped_split(store, base)
    print(f"split: {len(full.train)} train, {len(full.val)} val, {len(full.test)} test", flush=True)
    if args.split_only:
        args.split_only.mkdir(parents=True, exist_ok=True)
        full.save(args.split_only / SPLIT_FILE, seed=base.train.seed)
        return
    chosen = np.random.default_rng(21).permutation(len(full.train))[: args.train]
    probe_split = Split(full.root, tuple(full.train[i] for i in sorted(chosen)), full.val, full.test, full.sources)
    scored = list(full.val[: args.score])

    results_file = args.out / "results.jsonl"
    args.out.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in results_file.read_text().splitlines()] if results_file.is_file() else []
    runs = {args.shipped_as: TrainedRun.at(None)}
    for name in args.runs:
        cfg = probe_config(base, name, args.out, args.learning_rate)
        folder = Path(cfg.train.output)
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / SPLIT_FILE).is_file():
            probe_split.save(folder / SPLIT_FILE, seed=base.train.seed)
        if not (folder / WEIGHTS_FILE).is_file() or (folder / BACKUP_DIR).is_dir():
            start = time.time()
            train(cfg, verbose=2)
            (folder / "train_seconds.txt").write_text(f"{time.time() - start:.0f}\n")
        runs[name] = TrainedRun(folder / WEIGHTS_FILE)
    for item in args.score_run:
        name, _, folder = item.partition("=")
        runs[name] = TrainedRun.named(folder)

    for name, run in runs.items():
        for setting in settings(run, args.temperatures, args.saturations, args.gains):
            if any(r["run"] == name and r["saturation"] == setting["saturation"] and r.get("ab_gain", 1.0) ==
                   setting["ab_gain"] and r["temperature"] == setting["temperature"] for r in done):
                continue
            colorizer = Colorizer(with_gain(run, setting["ab_gain"], args.out / "gains" / f"{name}-{setting['ab_gain']:g}"))
            start = time.time()
            rows, skipped = score_photos(colorizer, scored, setting["saturation"], setting["temperature"])
            summary = summarize(rows, skipped.count)
            result = {"run": name, **setting, "n_images": summary["n_images"],
                      "psnr_minus_gray": summary["psnr"] - summary["gray_psnr"],
                      "colourfulness_share": summary["colorfulness"] / summary["gt_colorfulness"],
                      "above_gray": summary["n_better_than_gray"] / summary["n_images"],
                      **{k: summary[k] for k in ("psnr", "gray_psnr", "ssim", "auc", "gray_auc", "frame")},
                      "seconds": round(time.time() - start, 1)}
            done.append(result)
            with open(results_file, "a") as f:
                f.write(json.dumps(result) + "\n")
            print(json.dumps(result), flush=True)
    plot_frontier(done, args.out / "frontier.png")
    print(table(done))
    print(json.dumps({"rule": f"highest colourfulness with PSNR >= gray + {RULE_DB} dB and frame <= {RULE_FRAME}",
                      "chosen": choose(done)}))


def table(results: list[dict]) -> str:
    lines = ["| run | setting | PSNR − gray (dB) | colourfulness / photos' | photos above gray | ab accuracy (gray) | frame |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        dial = (f"T {r['temperature']}" if r["temperature"] is not None else f"ab_gain {r['ab_gain']:g}"
                if r.get("ab_gain", 1.0) != 1.0 else f"saturation {r['saturation']}")
        lines.append(f"| {r['run']} | {dial} | {r['psnr_minus_gray']:+.2f} | {100 * r['colourfulness_share']:.0f} % | "
                     f"{100 * r['above_gray']:.0f} % | {r['auc']:.3f} ({r['gray_auc']:.3f}) | {r['frame']:.2f} |")
    return "\n".join(lines)


def plot_frontier(results: list[dict], out_png: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=100, layout="constrained")
    ax = fig.subplots()
    # One colour per run; its saturation (or temperature) dial solid, its ab_gain dial dashed, each sorted
    # by colourfulness. The gain line starts at gain 1, which is saturation 1.
    for index, name in enumerate(dict.fromkeys(r["run"] for r in results)):
        points = [r for r in results if r["run"] == name]
        gains = [r for r in points if r.get("ab_gain", 1.0) != 1.0]
        dials = [[r for r in points if r not in gains]]
        if gains:
            dials.append([r for r in dials[0] if r["saturation"] == 1.0] + gains)
        for style, dial_points in zip(("-o", "--s"), dials):
            dial_points = sorted(dial_points, key=lambda r: r["colourfulness_share"])
            x = [100 * r["colourfulness_share"] for r in dial_points]
            y = [r["psnr_minus_gray"] for r in dial_points]
            ax.plot(x, y, style, color=f"C{index}", label=name if style == "-o" else None)
            for r, xi, yi in zip(dial_points, x, y):
                dial = (f"T {r['temperature']}" if r["temperature"] is not None else f"gain {r['ab_gain']:g}"
                        if r.get("ab_gain", 1.0) != 1.0 else f"×{r['saturation']:g}")
                ax.annotate(dial, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axhline(0.0, color="gray", linestyle="--", linewidth=1)
    ax.set(xlabel="colourfulness, % of the photos' own", ylabel="PSNR − gray baseline (dB)",
           title="validation photos at full resolution")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(out_png, format="png")


if __name__ == "__main__":
    main()
