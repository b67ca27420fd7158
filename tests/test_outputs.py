"""Outputs never cost the user a file: what may be replaced, where outputs may go, write errors,
signals, stale temporaries, and options refused before any work (issue 11). Every case is a real
file, folder, mount or process of that shape."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import layerfilm.study

SMALL = ("--size", "320x180", "--points", "16", "--quiet")
IN_PROCESS = (*SMALL, "--jobs", "1")  # no film workers: where the output folder is the point, not the workers


@pytest.fixture
def ckpts(tiny_run, tmp_path) -> Path:
    """Three checkpoints of a real training run, in a folder of their own."""
    d = tmp_path / "ckpts"
    d.mkdir()
    for name in ("step_000000.safetensors", "step_000030.safetensors", "step_000060.safetensors"):
        shutil.copy2(tiny_run / name, d / name)
    return d


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its kind, size and content stamp."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns,
                                         p.read_bytes() if p.is_file() and not p.is_symlink() else None)
    return out


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("layerfilm: error: ") and "Traceback" not in err
    return lines[0]


def no_partials(*folders: Path) -> None:
    for f in folders:
        left = [p.name for p in f.iterdir() if ".partial-" in p.name or ".palette-" in p.name or ".old-" in p.name]
        assert not left, left


# ---------------------------------------------------------------- what may be replaced

@pytest.mark.parametrize("where", ["equal", "inside", "around"])
def test_out_equal_to_inside_or_around_the_input_is_refused(ckpts, tmp_path, run_cli, where):
    out = {"equal": ckpts, "inside": ckpts / "film.webm", "around": tmp_path}[where]
    before = snapshot(tmp_path)
    code, _, err = run_cli("render", ckpts, "--out", out, *SMALL)
    assert code == 2
    line = one_error_line(err)
    assert "input" in line and str(out) in line
    assert snapshot(tmp_path) == before


def test_render_into_its_own_input_folder_keeps_every_checkpoint(ckpts, run_cli):
    """The issue's reproduction: `layerfilm render /tmp/v --out /tmp/v` deleted the folder."""
    names = sorted(p.name for p in ckpts.iterdir())
    code, _, err = run_cli("render", ckpts, "--out", ckpts, *SMALL)
    assert code == 2 and sorted(p.name for p in ckpts.iterdir()) == names


def make_existing(kind: str, tmp_path: Path) -> Path:
    if kind == "folder named like a film":
        out = tmp_path / "d" / "film.webm"
        out.mkdir(parents=True)
        (out / "keep").write_text("mine")
    elif kind == "plain file":
        out = tmp_path / "NOTES"
        out.write_text("my notes")
    elif kind == "empty folder named like a film":
        out = tmp_path / "notes.webm"
        out.mkdir()
    elif kind == "folder with other files":
        out = tmp_path / "frames"
        out.mkdir()
        (out / "frame_000001.png").write_bytes(b"\x89PNG")
        (out / "thesis.tex").write_text("mine")
    elif kind == "fifo":
        out = tmp_path / "film.webm"
        os.mkfifo(out)
    elif kind == "symlink":
        target = tmp_path / "precious.webm"
        target.write_bytes(b"mine")
        out = tmp_path / "film.webm"
        out.symlink_to(target)
    else:
        raise AssertionError(kind)
    return out


@pytest.mark.parametrize("kind", ["folder named like a film", "plain file", "empty folder named like a film",
                                  "folder with other files", "fifo", "symlink"])
def test_an_existing_output_that_layerfilm_did_not_write_is_never_replaced(ckpts, tmp_path, run_cli, kind):
    out = make_existing(kind, tmp_path)
    before = snapshot(tmp_path)
    code, _, err = run_cli("render", ckpts, "--out", out, *SMALL)
    assert code == 2
    assert "never replaces" in one_error_line(err)
    assert snapshot(tmp_path) == before


def test_a_device_node_is_never_an_output(ckpts, run_cli):
    code, _, err = run_cli("render", ckpts, "--out", "/dev/null", *SMALL)
    assert code == 2 and "never replaces" in one_error_line(err)
    assert Path("/dev/null").is_char_device()


def test_a_film_and_a_frames_folder_of_layerfilm_are_replaced(ckpts, tmp_path, run_cli):
    film, frames = tmp_path / "film.webm", tmp_path / "frames"
    for out in (film, frames):
        for _ in range(2):  # the second render replaces the first one's output
            code, _, err = run_cli("render", ckpts, "--out", out, "--fps", "2", *SMALL)
            assert code == 0, err
    assert film.stat().st_size > 0
    assert sorted(p.name for p in frames.iterdir()) == [f"frame_{i:06d}.png" for i in range(1, 6)]
    no_partials(tmp_path)


@pytest.mark.parametrize("command", ["stills", "report", "export"])
def test_stills_report_and_export_follow_the_same_rule(ckpts, tmp_path, run_cli, command):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep").write_text("mine")
    cases = {"stills": [("stills", ckpts, "--out", ckpts / "s.png"), ("stills", ckpts, "--out", make_dir(tmp_path, "s.png"))],
             "report": [("report", ckpts, "--out", ckpts / "r.html"), ("report", ckpts, "--out", make_dir(tmp_path, "r.html")),
                        ("report", ckpts, "--out", tmp_path / "r.md")],
             "export": [("render", ckpts, "--out", tmp_path / "f.webm", "--export-points", ckpts / "p.npz"),
                        ("render", ckpts, "--out", tmp_path / "f.webm", "--export-points", make_dir(tmp_path, "p.npz"))]}
    if command == "report":  # Markdown's PNGs go beside it: one of them is a folder of the user's
        make_dir(tmp_path, "r_heatmap.png")
    before = snapshot(tmp_path)
    for argv in cases[command]:
        code, _, err = run_cli(*argv, "--points", "16", "--quiet")
        assert code == 2, argv
        one_error_line(err)
        assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command, beside", [("report", "r_heatmap.png"), ("stills", "s_update_ratio.png")])
def test_a_users_file_where_layerfilm_writes_beside_the_output_is_never_replaced(ckpts, tmp_path, run_cli, command,
                                                                                beside):
    """A report's figures and the stills' heatmap are named by layerfilm, not by the user: a file of the
    user's there is refused in one line before any work and left as it was; layerfilm's own is replaced."""
    out = tmp_path / ("r.md" if command == "report" else "s.png")
    user = tmp_path / beside
    user.write_bytes(b"\x89PNG the user's own picture")
    before = snapshot(tmp_path)
    code, _, err = run_cli(command, ckpts, "--out", out, "--points", "16", "--quiet")
    assert code == 2 and beside in one_error_line(err) and "not written by layerfilm" in err
    assert snapshot(tmp_path) == before
    if command == "report":  # a report's own figure from an earlier run is replaced
        user.unlink()
        for _ in range(2):
            code, _, err = run_cli(command, ckpts, "--out", out, "--points", "16", "--quiet")
            assert code == 0, err
        assert user.exists()


def make_dir(tmp_path: Path, name: str) -> Path:
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    (d / "keep").write_text("mine")
    return d


@pytest.mark.parametrize("out", [".", "..", ""])
def test_out_dot_is_refused(ckpts, run_cli, out, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    code, _, err = run_cli("render", ckpts, "--out", out, *SMALL)
    assert code == 2
    one_error_line(err)
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- write errors

@pytest.fixture
def mount(tmp_path):
    """Mount a tiny tmpfs (root, as CI runs); yields a function (name, size, read_only) -> Path."""
    mounted = []

    def make(name: str, size: str = "1m", read_only: bool = False) -> Path:
        d = tmp_path / name
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True)
        if r.returncode:
            # CI runs as root on this machine kind, where mounting works: a failure here is a real one
            pytest.fail(f"cannot mount a tmpfs for the read-only / full-disk cases ({r.stderr.decode().strip()})")
        mounted.append(d)
        return d

    yield make
    for d in mounted:
        subprocess.run(["umount", str(d)], check=False)


def read_only(d: Path) -> Path:
    subprocess.run(["mount", "-o", "remount,ro", str(d)], check=True)
    return d


@pytest.mark.parametrize("argv", [
    ("render", "{ckpts}", "--out", "{ro}/frames"),
    ("render", "{ckpts}", "--out", "{ro}/film.webm"),
    ("render", "{ckpts}", "--out", "{tmp}/film.webm", "--export-points", "{ro}/p.npz"),
    ("stills", "{ckpts}", "--out", "{ro}/s.png"),
    ("report", "{ckpts}", "--out", "{ro}/r.html"),
])
def test_a_read_only_folder_is_one_line_before_any_work(ckpts, tmp_path, run_cli, mount, argv, monkeypatch):
    ro = read_only(mount("ro"))
    monkeypatch.setattr(layerfilm.study, "scan_for", lambda *a, **k: pytest.fail("scanned before checking the output"))
    code, _, err = run_cli(*(a.format(ckpts=ckpts, ro=ro, tmp=tmp_path) for a in argv), *SMALL)
    assert code == 2
    assert "cannot write" in one_error_line(err) and str(ro) in err
    assert not list(tmp_path.glob("*.webm"))


def test_a_full_disk_for_export_points_is_one_line_and_leaves_no_partial(ckpts, tmp_path, run_cli, mount):
    full = mount("full", size="16k")
    (full / "ballast").write_bytes(b"\0" * 12_000)
    code, _, err = run_cli("render", ckpts, "--out", tmp_path / "film.webm", "--export-points", full / "p.npz",
                           "--points", "512", "--size", "320x180", "--quiet", "--jobs", "1")
    assert code == 2
    line = one_error_line(err)
    assert "p.npz" in line and "No space left" in line
    assert sorted(p.name for p in full.iterdir()) == ["ballast"]


def test_a_full_film_disk_is_one_line_and_leaves_no_partial(ckpts, run_cli, mount):
    full = mount("full", size="8k")
    code, _, err = run_cli("render", ckpts, "--out", full / "film.webm", "--fps", "30", *SMALL)
    assert code == 2
    one_error_line(err)
    assert list(full.iterdir()) == []


def test_a_weights_film_needs_no_scratch_space(ckpts, tmp_path, run_cli, mount, monkeypatch):
    """Block chunks are kept in memory (layerfilm.study): a full $TMPDIR does not matter."""
    import tempfile

    full = mount("tmp", size="8k")
    monkeypatch.setattr(tempfile, "tempdir", str(full))
    code, _, err = run_cli("render", ckpts, "--out", tmp_path / "film.webm", "--no-cache", *SMALL)
    assert code == 0, err
    assert (tmp_path / "film.webm").stat().st_size > 0 and list(full.iterdir()) == []


def test_a_full_scratch_folder_is_one_error_naming_tmpdir(mount):
    """Activation films still stage key frames on disk: no room there is one OutputError."""
    import numpy as np

    from layerfilm.errors import OutputError
    from layerfilm.points import FeatureStore

    full = mount("tmp", size="8k")
    store = FeatureStore(full / "work")
    with pytest.raises(OutputError, match=r"cannot write key frames .*; set TMPDIR to a folder with room"):
        store.append(np.ones((4, 64, 64), np.float32))
    assert list((full / "work").iterdir()) == []


# ---------------------------------------------------------------- options refused before any work

@pytest.mark.parametrize("argv,option", [
    (("--fps", "nan"), "--fps"), (("--fps", "inf"), "--fps"), (("--fps", "0"), "--fps"), (("--fps", "1e6"), "--fps"),
    (("--seconds-per-keyframe", "nan"), "--seconds-per-keyframe"),
    (("--seconds-per-keyframe", "inf"), "--seconds-per-keyframe"),
    (("--seed", "-1"), "--seed"), (("--size", "100000x100000"), "--size"), (("--size", "30000x30000"), "--size"),
    (("--size", "8192x8192"), "--size"), (("--size", "100x100"), "--size"),
    (("--size", "640x178"), "--size"), (("--settle-threshold", "0"), "--settle-threshold"),
    (("--settle-threshold", "-1"), "--settle-threshold"), (("--settle-threshold", "1"), "--settle-threshold"),
    (("--settle-threshold", "nan"), "--settle-threshold"), (("--settle-threshold", "inf"), "--settle-threshold"),
    (("--projection", "umap", "--umap-alignment", "nan"), "--umap-alignment"),
    (("--projection", "umap", "--umap-alignment", "inf"), "--umap-alignment"),
])
def test_bad_options_are_refused_before_any_checkpoint_is_read(ckpts, tmp_path, run_cli, monkeypatch, argv, option):
    monkeypatch.setattr(layerfilm.study, "scan_for", lambda *a, **k: pytest.fail("scanned before checking the options"))
    code, _, err = run_cli("render", ckpts, "--out", tmp_path / "film.webm", "--quiet", *argv)
    assert code == 2
    assert one_error_line(err).startswith(f"layerfilm: error: {option} ")
    assert list(tmp_path.iterdir()) == [ckpts]


@pytest.mark.parametrize("command", ["stability", "stills", "report"])
def test_the_settle_threshold_rule_is_the_same_everywhere(ckpts, tmp_path, run_cli, command):
    out = () if command == "stability" else ("--out", tmp_path / ("s.png" if command == "stills" else "r.html"))
    if command == "stills":
        argv = ("--seed", "-1")  # stills has no settle threshold; the seed rule is shared the same way
    else:
        argv = ("--settle-threshold", "nan")
    code, _, err = run_cli(command, ckpts, *out, *argv, "--quiet")
    assert code == 2 and one_error_line(err).startswith(f"layerfilm: error: {argv[0]} ")


def test_a_film_of_too_many_frames_is_refused_after_the_scan_before_reading_tensors(ckpts, tmp_path, run_cli,
                                                                                    monkeypatch):
    monkeypatch.setattr(layerfilm.study.Study, "trajectories", lambda *a, **k: pytest.fail("read the checkpoints"))
    code, _, err = run_cli("render", ckpts, "--out", tmp_path / "film.webm", "--fps", "240",
                           "--seconds-per-keyframe", "3600", "--quiet")
    assert code == 2
    line = one_error_line(err)
    assert "1,728,001 frames" in line and "at most 500,000" in line


# ---------------------------------------------------------------- signals and stale temporaries

ROOT = Path(__file__).resolve().parents[1]


def cli(*argv, **kw) -> subprocess.Popen:
    """The `layerfilm` command as installed (its entry point, layerfilm_main), in a process of its own."""
    return subprocess.Popen([sys.executable, "-m", "layerfilm_main", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT, **kw)


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.parametrize("ext", ["webm", "gif"])
def test_a_signal_while_encoding_leaves_nothing_and_says_so(ckpts, tmp_path, sig, code, ext):
    out = tmp_path / "out" / f"film.{ext}"
    out.parent.mkdir()
    proc = cli("render", ckpts, "--out", out, "--fps", "60", "--seconds-per-keyframe", "30", "--no-cache", "--quiet",
               "--size", "320x180", "--points", "16")
    deadline = time.monotonic() + 120
    while not any(".partial-" in p.name for p in out.parent.iterdir()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    err = err.decode()
    assert proc.returncode == code, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "nothing half-written was left" in lines[0], err
    assert list(out.parent.iterdir()) == []


def importing(pid: int, library: str) -> bool:
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.parametrize("library", ["_multiarray_umath", "matplotlib/ft2font"])
def test_a_signal_at_start_up_is_one_line_too(ckpts, tmp_path, sig, code, library):
    """While the package is still being imported (most of a second: NumPy, then matplotlib), before any work."""
    proc = cli("render", ckpts, "--out", tmp_path / "film.webm", *SMALL)
    deadline = time.monotonic() + 60
    while not importing(proc.pid, library) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    lines = [ln for ln in err.decode().splitlines() if ln.strip()]
    if proc.returncode == 0:  # it finished first: nothing to check
        return
    assert proc.returncode == code and len(lines) == 1 and "nothing half-written was left" in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpts"]


def dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        pid -= 1


def test_partials_of_dead_processes_are_removed_others_kept(ckpts, tmp_path, run_cli):
    out = tmp_path / "film.webm"
    dead, alive = dead_pid(), os.getppid()
    stale = [tmp_path / f".film.webm.partial-{dead}", tmp_path / f".film.webm.palette-{dead}.png"]
    (tmp_path / f".film.webm.old-{dead}").mkdir()
    for p in stale:
        p.write_bytes(b"half")
    live = tmp_path / f".film.webm.partial-{alive}"
    live.write_bytes(b"another render at work")
    other = tmp_path / f".notes.partial-{dead}"
    other.write_bytes(b"not ours to judge")
    code, _, err = run_cli("render", ckpts, "--out", out, "--fps", "2", *IN_PROCESS)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ckpts", "film.webm", live.name, other.name])


# ---------------------------------------------------------------- names that are not one printable line

def test_undecodable_and_multi_line_names_print_escaped_on_one_line(ckpts, tmp_path):
    bad = os.fsencode(ckpts) + b"/step_000045\xff\nx.safetensors"
    with open(bad, "wb") as f:
        f.write(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    proc = cli("render", ckpts, "--out", tmp_path / "film.webm", *SMALL, env=env)
    _, err = proc.communicate(timeout=300)
    err = err.decode()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    warning = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warning) == 1 and "step_000045\\udcff\\nx.safetensors" in warning[0], err


# ---------------------------------------------------------------- a frames folder changed during the run (issue 24)

def frames_line(out: Path, names: tuple[str, ...]) -> str:
    """The one line a frames folder gets when one of ``names`` came into it during the run."""
    return next(f"layerfilm: error: {out}: {n} appeared in it during the run and is not a layerfilm frame; "
                "the folder was left as it was, the new frames not written: move it away and run again" for n in names)


@pytest.mark.parametrize("when", ["during the render", "after the last check"])
def test_a_file_that_appears_in_a_frames_folder_during_the_render_stays(ckpts, tmp_path, run_cli, monkeypatch, when):
    """`render --out fr` while a file appears in fr/: the old code deleted the folder whole. Injected once the
    frames are being written (every check before them passed), or between the last check and the rename."""
    import layerfilm.io.outputs as outputs

    fr = tmp_path / "fr"
    code, _, err = run_cli("render", ckpts, "--out", fr, "--fps", "2", *IN_PROCESS)
    assert code == 0, err

    def add_notes():
        (fr / "NOTES.txt").write_text("notes")

    if when == "during the render":  # atomic_output's first step, before the frames are written
        real = outputs.remove_stale_partials
        monkeypatch.setattr(outputs, "remove_stale_partials", lambda out: real(out) or add_notes())
    else:
        real_check = outputs._recheck
        monkeypatch.setattr(outputs, "_recheck", lambda out, folder: real_check(out, folder) or add_notes())
    before = snapshot(tmp_path)
    code, _, err = run_cli("render", ckpts, "--out", fr, "--fps", "3", *IN_PROCESS)
    assert code == 2
    assert err.splitlines() == [frames_line(fr, ("NOTES.txt",))]
    after = snapshot(tmp_path)
    assert after.pop("fr/NOTES.txt")[3] == b"notes" and fr.is_dir()
    after.pop("fr"), before.pop("fr")  # the folder's mtime: NOTES.txt came
    assert after == before and len(list(fr.glob("frame_*.png"))) == 5  # the old frames (fps 2) as they were
    no_partials(tmp_path)


def test_watch_keeps_files_added_to_its_frames_folder_between_updates(tiny_run, tmp_path, monkeypatch):
    """`watch ck --out frames`, then NOTES.txt and sub/ put into frames/: the next update deleted both. Now it
    is one line, exit 2, the frames of the last update stay, no partial or scratch folder is left."""
    from test_live import Watch

    ck, frames, scratch = tmp_path / "ck", tmp_path / "frames", tmp_path / "tmp"
    ck.mkdir()
    scratch.mkdir()
    for step in (0, 10, 20):
        shutil.copy2(tiny_run / f"step_{step:06d}.safetensors", ck)
    monkeypatch.setenv("TMPDIR", str(scratch))
    w = Watch(ck, frames, "--interval", "0.2", "--json", str(tmp_path / "s.json"))  # --json: rows kept on scratch disk
    try:
        assert [w.line().split(",")[0] for _ in range(3)] == [f"key frame: step {s}" for s in (0, 10, 20)]
        (frames / "NOTES.txt").write_text("notes")
        (frames / "sub").mkdir()
        (frames / "sub" / "keep").write_text("mine")
        before = snapshot(frames)
        shutil.copy2(tiny_run / "step_000030.safetensors", ck)
        assert w.proc.wait(timeout=120) == 2
    finally:
        if w.proc.poll() is None:  # the old code went on watching
            w.proc.kill()
    assert w.proc.stderr is not None
    assert w.proc.stderr.read().splitlines() == [frames_line(frames, ("NOTES.txt", "sub"))]
    assert snapshot(frames) == before and len(list(frames.glob("frame_*.png"))) == 5
    no_partials(tmp_path)
    assert list(scratch.iterdir()) == []


def test_scratch_folders_of_killed_processes_are_removed(tiny_run, tmp_path, monkeypatch):
    """A watch killed with SIGKILL leaves layerfilm-live-PID-* in $TMPDIR; the next scratch folder made
    there (a watch's, an activation film's) removes it once its process is gone and it is an hour old.
    Kept: a process still alive, a young folder of a dead one, anything not named as layerfilm names them."""
    import tempfile

    from layerfilm.io.outputs import STALE_SCRATCH_S, new_scratch
    from layerfilm.live.film import LiveFilm, LiveOptions
    from test_live import Watch

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))  # the child's
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # this process's (read once, at its first use)
    w = Watch(tiny_run, tmp_path / "live.webm", "--interval", "0.2", "--json", str(tmp_path / "s.json"))
    try:
        w.line()
    finally:
        if w.proc.poll() is None:
            w.proc.kill()
    assert w.proc.wait(timeout=60) == -signal.SIGKILL  # killed in the middle of watching: nothing cleaned up
    killed = list(scratch.glob(f"layerfilm-live-{w.proc.pid}-*"))
    assert len(killed) == 1 and list(killed[0].rglob("*.npy"))  # its rows on scratch disk
    dead, alive = dead_pid(), os.getppid()
    keep = [scratch / f"layerfilm-live-{alive}-abc", scratch / f"layerfilm-act-{dead}-young", scratch / "layerfilm-notes",
            scratch / f"layerfilm-live-{dead}"]
    stale = [killed[0], scratch / f"layerfilm-act-{dead}-old"]
    for d in keep + stale:
        d.mkdir(exist_ok=True)
        (d / "f").write_text("x")
    hour_ago = time.time() - STALE_SCRATCH_S - 60
    for d in keep + stale:
        if "young" not in d.name:
            for p in [*d.rglob("*"), d]:
                os.utime(p, (hour_ago, hour_ago))
    with LiveFilm(tiny_run, tmp_path / "b.webm", live=LiveOptions(refit="always")) as film:
        assert film.store is not None and film.store.folder.parent.parent == scratch
        assert sorted(scratch.iterdir()) == sorted([*keep, film.store.folder.parent])
    assert sorted(scratch.iterdir()) == sorted(keep)
    with new_scratch("act") as work:  # an activation film's (layerfilm.study)
        assert Path(work).name.startswith(f"layerfilm-act-{os.getpid()}-")
    assert sorted(scratch.iterdir()) == sorted(keep)
