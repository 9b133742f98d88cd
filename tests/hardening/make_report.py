"""Regenerate docs/hardening.md from a real run of the hardening suite.

Usage: ``python tests/hardening/make_report.py [pytest args]`` (default: the whole suite,
slow tests included). The "what the user sees" column is the captured output of each case.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "hardening.md"

HEADER = """\
# Hardening: bad inputs, faults and security

Every case below was run by the hardening suite (`tests/hardening/`); the middle column is
what the user saw in that run (temporary paths shortened to `<tmp>`). Regenerate with
`python tests/hardening/make_report.py`.

Rules the suite enforces:

* a bad input, config or bundle gives **one line** on stderr, starting with `Error:`, naming
  the file (and the dotted key for configs) and the fix, with **exit code 1**, and leaves no
  output under a final name (nor temporary files);
* odd but usable inputs (PNG/JPEG without georeferencing, no CRS, all nodata, NaN/inf,
  1x1 and 1x100000 pixels, labels in another CRS, invalid polygons) work, with at most a
  one-line `Warning:`;
* Ctrl-C exits 130 and SIGTERM 143 after removing temporary files; a run's outputs are under
  their final names all together with their summary, or none of them is (a signal during the
  final renames is held until the set is in place); after SIGKILL nothing is under a final
  name; a rerun completes and `train --resume` continues from the last epoch;
* nothing is unpickled, no shell is used, GDAL options are a fixed choice, and list files and
  manifests cannot make geopsp write outside `--out`.
"""


NOTES = """\
## Other findings

* Thin scenes work but are slow with small tiles: a 1x100000 scene with the bundle's 64 px
  tiles runs ~1800 tiles (each padded to 32 rows), about a minute on 2 busy cores. Before the
  tile grid clamped short axes (`TileGrid.input_shape`), `--tile 4096` on that scene was
  killed for memory; with the clamp it is 32x4096 per tile.
* `vectorize/_strips.py` pickles WKB bytes between its own worker processes (allowed by the
  source check: the bytes are never read from a file); multiprocessing pickles them anyway,
  so the extra `pickle.dumps`/`loads` could be dropped.
"""


def _cell(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > 400:
        text = text[:400] + " ..."
    return "`" + text.replace("`", "'").replace("|", "\\|") + "`" if text else ""


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        records = Path(tmp) / "records.json"
        junit = Path(tmp) / "junit.xml"
        env = {**os.environ, "GEOPSP_HARDENING_REPORT": str(records)}
        args = argv or ["tests/hardening", "-m", "not gpu"]
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *args],
            cwd=ROOT,
            env=env,
            check=False,
        )
        seconds = time.perf_counter() - t0
        rows = json.loads(records.read_text()) if records.exists() else []
        import xml.etree.ElementTree as ET

        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite[0]
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        xfails = [
            f"`{c.get('classname', '').replace('.', '/')}.py::{c.get('name')}`: {s.get('message', '')}"
            for c in suite.iter("testcase")
            if (s := c.find("skipped")) is not None and "xfail" in (s.get("type", "") + s.get("message", ""))
        ]
    lines = [HEADER, f"## Cases ({len(rows)})\n", "| # | Case | What the user sees | Test |", "|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        lines.append(f"| {i} | {r['case']} | {_cell(r['seen'])} | `{r['test']}` |")
    lines += [
        "",
        f"Run: {counts['tests']} tests, {counts['failures']} failed, {counts['errors']} errors, "
        f"{counts['skipped']} skipped or xfailed, {seconds:.0f} s wall on this machine (`{' '.join(args)}`).",
        "",
        "## Known gaps (strict xfail tests, for the lead)\n",
    ]
    lines += [f"* {x}" for x in xfails] or ["* none"]
    lines += ["", NOTES]
    DOC.write_text("\n".join(lines) + "\n")
    print(f"wrote {DOC} ({len(rows)} cases)")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
