"""What the Trainer callback costs a training run: `train()`'s wall time with and without
LayerfilmCallback, in an unguarded training script run as users run it (a tiny GPT-2, 120 steps, a
save every 20), and the script's whole wall time (the film's last update finishes before Python exits).

    python benchmarks/bench_callback.py [--repeats 3] [--steps 120] [--every 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import time, torch, transformers as T
{imports}
torch.manual_seed(0)
model = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=256, n_positions=64, n_embd=64, n_layer=4, n_head=4))
g = torch.Generator().manual_seed(0)
data = [{{"input_ids": x, "labels": x}} for x in torch.randint(0, 256, (512, 64), generator=g)]
args = T.TrainingArguments(output_dir="run", max_steps={steps}, save_steps={every}, per_device_train_batch_size=8,
                           report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="steps", seed=0)
trainer = T.Trainer(model=model, args=args, train_dataset=data, callbacks=[{callback}])
t0 = time.perf_counter()
trainer.train()
print("TRAIN_S", time.perf_counter() - t0, flush=True)
"""


def once(callback: bool, steps: int, every: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        script = SCRIPT.format(steps=steps, every=every,
                               imports="from layerfilm.callbacks import LayerfilmCallback" if callback else "",
                               callback='LayerfilmCallback(out="film.webm")' if callback else "")
        Path(tmp, "train.py").write_text(script)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "LAYERFILM_CACHE": str(Path(tmp, "cache"))}
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "train.py"], cwd=tmp, env=env, capture_output=True, text=True, check=False)
        total = time.perf_counter() - t0
        if done.returncode or (callback and not Path(tmp, "film.webm").is_file()):
            sys.exit(f"the training script failed ({done.returncode}):\n{done.stderr[-3000:]}")
        train = float(next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("TRAIN_S")))
        return train, total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--every", type=int, default=20)
    a = p.parse_args()
    rows = {False: [], True: []}
    for _ in range(a.repeats):  # alternated, so that a busy moment of the machine hits both
        for callback in (False, True):
            rows[callback].append(once(callback, a.steps, a.every))
    base = statistics.median(t for t, _ in rows[False])
    print(f"{'':<22}{'train() s (median)':>20}{'runs':>26}{'script s (median)':>20}{'ratio':>8}")
    for callback, label in ((False, "without the callback"), (True, "with LayerfilmCallback")):
        train = [t for t, _ in rows[callback]]
        total = [s for _, s in rows[callback]]
        print(f"{label:<22}{statistics.median(train):>20.2f}{', '.join(f'{t:.2f}' for t in train):>26}"
              f"{statistics.median(total):>20.2f}{statistics.median(train) / base:>8.2f}")
    print(f"{os.cpu_count()} cores; {a.steps} steps, a save every {a.every}; a tiny GPT-2 (4 blocks, width 64)")


if __name__ == "__main__":
    main()
