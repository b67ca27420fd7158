"""The README's set-up commands are the contract with new users: check them and run their parts."""

import re
import subprocess
import sys

from conftest import ROOT


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text, re.S)[:2]


def test_readme_starts_with_two_setup_commands():
    render_cmd, test_cmd = readme_commands()
    assert "\n" not in render_cmd and "\n" not in test_cmd
    assert render_cmd.endswith(
        "python examples/make_checkpoints.py outputs/ckpts && layerfilm render outputs/ckpts --out outputs/film.webm")
    assert "pip install torch==2.13.0" in render_cmd and "pip install torch==2.13.0" in test_cmd
    assert test_cmd.endswith("python -m pytest -q")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -q -e '.[dev]'" in ci and "python -m pytest -q" in ci  # [dev]: [test] and the linters


def test_example_script_runs_as_the_readme_calls_it(tmp_path):
    """`python examples/make_checkpoints.py DIR` (shrunk) writes a step-0-inclusive safetensors series."""
    out = tmp_path / "ckpts"
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "make_checkpoints.py"), str(out),
                           "--steps", "25", "--every", "10", "--layers", "2", "--width", "16"],
                          check=True, capture_output=True, text=True)
    names = sorted(p.name for p in out.iterdir() if p.suffix == ".safetensors")
    assert names == ["step_000000.safetensors", "step_000010.safetensors", "step_000020.safetensors",
                     "step_000025.safetensors"]  # the last step is saved even off the --every grid
    metrics = (out / "metrics.csv").read_text().splitlines()  # the loss and lr of every step, as CSVLogger writes
    assert metrics[0] == "step,train_loss,lr-AdamW" and [int(r.split(",")[0]) for r in metrics[1:]] == list(range(1, 26))
    logged = [int(m) for m in re.findall(r"^step +(\d+) ", done.stderr, re.M)]
    assert logged and logged[-1] == int(names[-1][5:11])  # the log ends at the last file's step, not one before


def test_readme_frames_in_a_report_example_runs_as_written(tiny_run, tmp_path, monkeypatch):
    """The README's "frames you chose" block, run as written in a folder whose outputs/ckpts is a real run."""
    import shutil

    block = next(b for b in re.findall(r"```python\n(.+?)\n```", (ROOT / "README.md").read_text(), re.S)
                 if "frames={" in b)
    shutil.copytree(tiny_run, tmp_path / "outputs" / "ckpts")
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    text = (tmp_path / "outputs" / "chosen.html").read_text()
    assert "<h2>The last key frame</h2>" in text and "<h2>Before and after</h2>" in text
    assert (tmp_path / "outputs" / "before_after.png").stat().st_size > 1000
