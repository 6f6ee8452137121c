"""Shell completion of the installed `ait` (typer's): the script and live completions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

AIT = str(Path(sys.executable).parent / "ait")


def test_bash_completion_script_and_candidates() -> None:
    script = subprocess.run(
        [AIT, "--show-completion", "bash"], capture_output=True, text=True, timeout=60
    )
    assert script.returncode == 0 and "_ait_completion" in script.stdout
    env = {
        **os.environ,
        "_AIT_COMPLETE": "complete_bash",
        "COMP_WORDS": "ait wal",
        "COMP_CWORD": "1",
    }
    words = subprocess.run([AIT], env=env, capture_output=True, text=True, timeout=60)
    assert words.stdout.split() == ["wallet"]
    env["COMP_WORDS"], env["COMP_CWORD"] = "ait wallet ", "2"
    words = subprocess.run([AIT], env=env, capture_output=True, text=True, timeout=60)
    assert set(words.stdout.split()) == {"create", "history"}
