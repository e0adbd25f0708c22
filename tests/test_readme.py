"""Every Python block of the README runs as written, in order, in one fresh interpreter from
the repository root (blocks marked ``<!-- readme test: skip (why) -->`` need processes
started elsewhere and are run by their engines' tests)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- readme test: skip \((?P<why>[^)]*)\) -->\n)?```python\n(?P<code>.*?)```",
                   re.S)


def readme_blocks() -> list:
    text = (ROOT / "README.md").read_text()
    return [(m.group("code"), m.group("why")) for m in BLOCK.finditer(text)]


def test_every_skipped_block_says_why():
    blocks = readme_blocks()
    assert len(blocks) >= 8
    assert all(why is None or why.strip() for _, why in blocks)
    assert sum(why is None for _, why in blocks) >= len(blocks) - 1  # only the folder's


@pytest.mark.timeout(240)
def test_the_readme_python_blocks_run_as_written(tmp_path):
    script = "\n".join(f"# --- README block {i}\n{code}" for i, (code, why) in
                       enumerate(readme_blocks()) if why is None)
    path = tmp_path / "readme.py"
    path.write_text(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLM_")}  # a user's shell
    proc = subprocess.Popen([sys.executable, str(path)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=200)
    finally:
        for child in psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None \
                else []:
            child.kill()
        proc.kill()
    assert proc.returncode == 0, out[-4000:]
    loss = float(re.search(r"global loss ([0-9.e-]+)", out).group(1))
    assert loss < 0.02, out[-2000:]  # option 3's SGD converges (it diverged to 1e148)
    assert "C(rank)[T.4]" in out and "-1.5515" in out  # R's coefficient for rank 4
