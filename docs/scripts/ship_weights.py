"""Copy a trained run's best weights into the package (koalarization/weights/), stored as float16.

    python docs/scripts/ship_weights.py --run RUN --ab-gain G --border-context B [--temperature T] [--data-root DIR]

Writes koalarization/weights/colorize.weights.h5 (float16 arrays: Keras casts them to the float32
variables on load) and config.json (the run's config with the chosen weightless settings, from
docs/scripts/calibrate.py or head_probes.py; `train --config koalarization/weights/config.json` reruns the
recipe) and, for the classification head, the run's ab_prior.json (its bins, prior and class weights), then loads
both back and prints the file size and the largest difference from the float32 weights' output.
The config's photo folders are written relative to --data-root (where the training sets were extracted),
its drop lists as the copies in docs/training-sets/, so that it names no path of the training machine.
"""

import argparse
import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np

from koalarization.config import RunConfig
from koalarization.run import CONFIG_FILE, PRIOR_FILE, STAMP, WEIGHTS_FILE, load_trained

PACKAGE_WEIGHTS = Path(__file__).resolve().parents[2] / "koalarization" / "weights"


def to_float16(src: Path, dst: Path, stamp: str) -> None:
    """An .h5 weights file with every float32 array as float16; groups and attributes kept; new stamp."""
    tmp = dst.with_name(dst.name + ".tmp")
    with h5py.File(src, "r") as fin, h5py.File(tmp, "w") as fout:
        def copy(name, obj):
            if isinstance(obj, h5py.Dataset):
                data = obj[()]
                if data.dtype == np.float32:
                    data = data.astype(np.float16)
                fout.create_dataset(name, data=data)
            else:
                fout.require_group(name)
            fout[name].attrs.update(dict(obj.attrs))

        fin.visititems(copy)
        fout.attrs.update(dict(fin.attrs))
        fout.attrs[STAMP] = stamp
    tmp.replace(dst)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a train output folder")
    p.add_argument("--ab-gain", type=float, required=True, help="from docs/scripts/calibrate.py")
    p.add_argument("--border-context", type=int, required=True, help="from docs/scripts/calibrate.py")
    p.add_argument("--temperature", type=float, default=None,
                   help="classification head: the default temperature (docs/scripts/head_probes.py's rule)")
    p.add_argument("--out", default=str(PACKAGE_WEIGHTS))
    p.add_argument("--data-root", help="folder the training sets were extracted under (default: none)")
    args = p.parse_args()
    run, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = RunConfig.load(run / CONFIG_FILE)
    model = dataclasses.replace(cfg.model, ab_gain=args.ab_gain, border_context=args.border_context,
                                temperature=args.temperature or cfg.model.temperature)
    data = tuple(str(Path(d).relative_to(args.data_root)) if args.data_root else d for d in cfg.train.data)
    drops = tuple(f"docs/training-sets/{Path(e).name}" for e in cfg.train.exclude_list)
    init = "shipped" if cfg.train.init_from else None  # the weights it started from were the shipped ones then
    train = dataclasses.replace(cfg.train, output=run.name, data=data, exclude_list=drops, cache=None, init_from=init)
    shipped = dataclasses.replace(cfg, model=model, train=train)
    to_float16(run / WEIGHTS_FILE, out / WEIGHTS_FILE, json.dumps(dataclasses.asdict(shipped.model)))
    (out / CONFIG_FILE).write_text(shipped.to_json() + "\n")
    prior = out / PRIOR_FILE
    if (run / PRIOR_FILE).is_file():
        prior.write_bytes((run / PRIOR_FILE).read_bytes())
    else:
        prior.unlink(missing_ok=True)

    # The run's float32 weights under the shipped settings, against the float16 copy.
    (run / "shipped-check").mkdir(exist_ok=True)
    (run / "shipped-check" / CONFIG_FILE).write_text(shipped.to_json())
    (run / "shipped-check" / WEIGHTS_FILE).write_bytes((run / WEIGHTS_FILE).read_bytes())
    if prior.is_file():
        (run / "shipped-check" / PRIOR_FILE).write_bytes(prior.read_bytes())
    reference, _ = load_trained(run / "shipped-check" / WEIGHTS_FILE)
    loaded, _ = load_trained(out / WEIGHTS_FILE)
    rng = np.random.default_rng(0)
    size, resolution = cfg.train.image_size, 224
    inputs = {"L": rng.uniform(-1, 1, (2, size, size, 1)).astype("float32"),
              "L_embedder": rng.uniform(-1, 1, (2, resolution, resolution, 1)).astype("float32")}
    expected = np.asarray(reference.predict_on_batch(inputs))
    got = np.asarray(loaded.predict_on_batch(inputs))
    print(json.dumps({"weights": str(out / WEIGHTS_FILE), "mb": (out / WEIGHTS_FILE).stat().st_size / 2**20,
                      "max_abs_diff_vs_float32": float(np.abs(expected - got).max())}))


if __name__ == "__main__":
    main()
