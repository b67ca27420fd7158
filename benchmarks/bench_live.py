"""What adding one checkpoint to a watched film costs (layerfilm.live.film), against a full render.

On the reference series (benchmarks/make_reference.py), a LiveFilm follows a folder holding all but the
last checkpoint (hard links to the reference's files); the last one is then linked in and one update
is measured in this process:

  bytes read:  /proc/self/io rchar around each part of the update: finding and reading the new
               checkpoint (its header and tracked rows) against its tracked bytes (blocks x points x row
               in its dtype; target <= 1.2x); the measures (with the overlay, every key frame's rows read
               back from the scratch store for the distance to the newest one); the film (ffmpeg's reads
               of the raw frames, counted in this process's rchar once ffmpeg is reaped).
  time:        the update's wall time (read, project, measures, film) against `render --no-cache` of the
               whole folder in the same process and options (the same --film-layout). Target: <= 0.2x.
               The film's part is split into the layout (axes, colour scale, legend: every key frame
               splatted once), the segments' digests, encoding the segments that changed (how many
               frames of the film: a live layout re-encodes only the new key frame's unless the layout
               changed) and joining them (.webm: layerfilm.video.webm copies the clusters; .mp4: ffmpeg
               concat, -c copy).

Rows: the default (overlay on: the scratch rows are read back) and --no-overlay (nothing kept but the
last key frame's rows); both --refit never, --film-layout live (watch's default; ``--film-layout fit``
measures the whole-film layout, which re-encodes every frame).

    python benchmarks/bench_live.py --quick            # 16 blocks x width 64 x 24 checkpoints (seconds to write)
    python benchmarks/bench_live.py --ref /tmp/ref     # a reference folder made already (full: 128 x 179)

``--trainer``: what the Trainer callback costs the training process: a tiny GPT-2 (CPU) trained for
60 steps with a checkpoint every 10, without and with ``LayerfilmCallback``: wall time of ``train()``
up to the last step (on_train_end's wait for the last update reported apart), the time spent inside
``on_save`` (putting a path on a queue; the first also spawns the process), and the checkpoint saves.

    python benchmarks/bench_live.py --trainer

The table is printed and appended to benchmarks/RESULTS.md (``--no-record``: not appended).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


def link_all(src: list[Path], folder: Path) -> None:
    for f in src:
        if not (folder / f.name).exists():
            os.link(f, folder / f.name)


def measure(ref: Path, work: Path, opts, label: str) -> dict:
    from layerfilm.film import film_timeline, render
    from layerfilm.live.film import LiveFilm, LiveOptions

    files = sorted(ref.glob("step_*.safetensors"))
    folder = work / f"watched-{label}"
    folder.mkdir()
    link_all(files[:-1], folder)
    film = LiveFilm(folder, work / f"live-{label}.webm", opts, LiveOptions(refit="never"))
    with film:
        film.ready.poll()
        t0 = time.perf_counter()
        film.update()
        first = time.perf_counter() - t0
        link_all(files[-1:], folder)
        film.ready.poll()  # the new file, unchanged across two polls, is complete at the update's poll
        # the steps of LiveFilm.update, with rchar between them (a reaped child's reads count in its parent's
        # rchar: ffmpeg's reading of the raw frames shows in the film's part, never in the reading's)
        r0, t0 = rchar(), time.perf_counter()
        new = film.read_new()
        r1, t1 = rchar(), time.perf_counter()
        assert len(new) == 1 and len(film.xy) == len(film.steps)  # --refit never: projected as it was added
        traj = film.traj = film.trajectories()
        r2, t2 = rchar(), time.perf_counter()
        encoded = film.write(traj)
        r3, t3 = rchar(), time.perf_counter()
        parts = {"read": t1 - t0, "measure": t2 - t1, "write": t3 - t2}
        store = film.segments.seconds if film.segments is not None else {}
        n_frames = film_timeline(traj.steps, opts).n_frames
        seconds, read, readback, frames = t3 - t0, r1 - r0, r2 - r1, r3 - r2
        wp = film.wp
        assert wp is not None
        T = len(film.steps)
    with open(files[-1], "rb") as f:  # the dtype of the filmed rows, from the safetensors header
        import json
        import struct

        n = struct.unpack("<Q", f.read(8))[0]
        dtype = json.loads(f.read(n))[wp.tensor_names[0]]["dtype"]
    itemsize = {"BF16": 2, "F16": 2, "F32": 4}[dtype]
    tracked = len(wp.tensor_names) * wp.point_ids.shape[1] * wp.shape[1] * itemsize
    t0 = time.perf_counter()
    render(ref, work / f"once-{label}.webm", replace(opts, fit="first"), progress=False)
    full = time.perf_counter() - t0
    return dict(label=label, T=T, first=first, seconds=seconds, parts=parts, read=read, readback=readback, frames=frames,
                tracked=tracked, store=store, encoded=encoded, n_frames=n_frames,
                full=full, shape=f"{len(wp.tensor_names)} blocks x {wp.point_ids.shape[1]} points x {wp.shape[1]}")


def table(rows: list[dict]) -> str:
    lines = ["| what | key frames | update s (find+read+project / measures / film) | film s (layout+other outputs / "
             "digests / encode / join) | frames encoded | full render s | time ratio | "
             "checkpoint bytes read | tracked bytes of the checkpoint | bytes ratio | scratch rows read back | "
             "ffmpeg's raw frames (its rchar) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p, st = r["parts"], r["store"]
        parts = " / ".join(f"{p.get(k, 0):.2f}" for k in ("read", "measure", "write"))
        film = (" / ".join(f"{v:.2f}" for v in [p["write"] - sum(st.values()), *(st.get(k, 0) for k in
                                                ("fingerprint", "encode", "join"))]) if st else "(whole film re-encoded)")
        lines.append(f"| {r['label']} | {r['T'] - 1} + 1 | {r['seconds']:.2f} ({parts}) | {film} | "
                     f"{r['encoded']} of {r['n_frames']} | {r['full']:.1f} | "
                     f"{r['seconds'] / r['full']:.3f} x (<= 0.2: {'yes' if r['seconds'] <= 0.2 * r['full'] else 'NO'}) | "
                     f"{r['read'] / 2**20:.2f} MiB | {r['tracked'] / 2**20:.2f} MiB | {r['read'] / r['tracked']:.2f} x (<= 1.2: "
                     f"{'yes' if r['read'] <= 1.2 * r['tracked'] else 'NO'}) | {r['readback'] / 2**20:.1f} MiB | "
                     f"{r['frames'] / 2**20:.1f} MiB |")
    return "\n".join(lines)


def trainer_costs(work: Path) -> str:
    import torch
    import transformers as T

    from layerfilm.callbacks import LayerfilmCallback

    class Clock(T.TrainerCallback):
        """Times saves: on_step_end (before a save) to on_save (after it)."""

        def __init__(self) -> None:
            self.saves, self.mark, self.saved_at = 0.0, 0.0, 0.0

        def on_step_end(self, args, state, control, **kw):
            self.mark = time.perf_counter()

        def on_save(self, args, state, control, **kw):
            self.saved_at = time.perf_counter()
            self.saves += self.saved_at - self.mark

    class Timed(LayerfilmCallback):
        spent: list[float] = []

        def on_save(self, *a, **kw):
            t0 = time.perf_counter()
            super().on_save(*a, **kw)
            self.spent.append(time.perf_counter() - t0)

    rows = []
    for label in ("without callback", "with LayerfilmCallback"):
        torch.manual_seed(0)
        model = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=256, n_positions=64, n_embd=128, n_layer=4, n_head=4))
        data = [{"input_ids": torch.randint(256, (64,)), "labels": torch.randint(256, (64,))} for _ in range(480)]
        out = work / label.replace(" ", "-")
        args = T.TrainingArguments(output_dir=str(out), max_steps=60, save_steps=10, per_device_train_batch_size=8,
                                   report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="steps", seed=0)
        clock = Clock()
        callbacks: list = [clock]
        if label.startswith("with "):
            callbacks.append(Timed(out=work / "film.webm", points=128, size="640x360"))
        trainer = T.Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks)
        t0 = time.perf_counter()
        trainer.train()
        done = time.perf_counter()
        rows.append((label, clock.saved_at - t0, clock.saves, sum(Timed.spent) if label.startswith("with ") else 0.0,
                     done - clock.saved_at))
    head = ("| run | training to the last save s | of which checkpoint saves s | inside on_save s | train() end after the "
            "last save s (with the callback: waits for the film's last update) |\n|---|---|---|---|---|\n")
    return f"tiny GPT-2 (4 blocks x 128), 60 steps, 6 checkpoints, CPU; load average {os.getloadavg()[0]:.1f}\n\n" + head + \
        "\n".join(f"| {r[0]} | {r[1]:.1f} | {r[2]:.2f} | {r[3]:.4f} | {r[4]:.1f} |" for r in rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the CI-scale reference (16 blocks, width 64, 24 checkpoints)")
    p.add_argument("--ref", default=None, help="a reference folder (default: written to a temporary folder)")
    p.add_argument("--size", default="1280x720", help="film size (default 1280x720)")
    p.add_argument("--no-record", action="store_true", help="do not append the table to benchmarks/RESULTS.md")
    p.add_argument("--trainer", action="store_true", help="measure the Trainer callback's cost to training instead")
    p.add_argument("--film-layout", choices=("live", "fit"), default="live", help="the film's layout (default live, "
                   "watch's; fit re-encodes the whole film at every update)")
    a = p.parse_args()
    if a.trainer:
        with tempfile.TemporaryDirectory(prefix="lf-bench-live-") as tmp:
            text = trainer_costs(Path(tmp))
        print(text)
        if not a.no_record:
            with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
                f.write(f"\n\n## `python benchmarks/bench_live.py --trainer` (the callback's cost to training)\n\n{text}\n")
        return
    import make_reference
    from layerfilm.draw.raster import Style, parse_size
    from layerfilm.film_options import FilmOptions

    with tempfile.TemporaryDirectory(prefix="lf-bench-live-") as tmp:
        work = Path(tmp)
        shape = make_reference.QUICK if a.quick else make_reference.FULL
        ref = Path(a.ref) if a.ref else make_reference.make(work / "ref", shape, log=False)
        w, h = parse_size(a.size)
        base = FilmOptions(style=Style(width=w, height=h), cache=False, film_layout=a.film_layout)
        rows = [measure(ref, work, base, "overlay (default)"), measure(ref, work, replace(base, overlay=False), "--no-overlay")]
    load = os.getloadavg()
    text = (f"layerfilm live update benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} CPUs; "
            f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\nreference: {rows[0]['shape']}, "
            f"{rows[0]['T']} checkpoints; film {a.size}, 15 fps, 1 s per key frame, --film-layout {a.film_layout}; "
            f"the first update ({rows[0]['T'] - 1} checkpoints at once) took {rows[0]['first']:.1f} s\n\n" + table(rows))
    print(text)
    if not a.no_record:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
            f.write(f"\n\n## `python benchmarks/bench_live.py{' --quick' if a.quick else ''}` (adding the last checkpoint "
                    f"to a watched film)\n\n{text}\n")


if __name__ == "__main__":
    main()
