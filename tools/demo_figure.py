"""Regenerate docs/demo_overlay.jpg, the README's figure: `cyseg demo` with the shipped model, its
overlay figure saved as JPEG.

    python tools/demo_figure.py
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
FIGURE = ROOT / "docs" / "demo_overlay.jpg"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "cyseg.cli", "-q", "demo", "--out", tmp, "--device", "cpu"], check=True)
        figure = cv2.imread(str(Path(tmp) / "overlay.png"), cv2.IMREAD_COLOR)
    if figure is None:
        raise SystemExit("cyseg demo wrote no overlay.png")
    cv2.imwrite(str(FIGURE), figure, [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(f"wrote {FIGURE}")


if __name__ == "__main__":
    main()
