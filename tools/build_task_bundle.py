"""Build cyseg's Cytomine App Engine task bundle: a zip holding, at its root, descriptor.yml and the
task's Docker image saved as <namespace>-<version>.tar, which is what the App Engine's uploader
looks for (TaskService.uploadTask: the descriptor by its full entry name, the image as the .tar
entry). The uploader names the image in its registry after the tar: the text before the first '-'
with '.' turned into '/' is the repository, the rest the tag; so the image is tagged with that name
before it is saved, and a namespace holding '-' is refused.

    docker build -f appengine.Dockerfile -t cyseg-appengine .
    .venv/bin/python tools/build_task_bundle.py --image cyseg-appengine [--gpus 1] [--out FILE]
    .venv/bin/python tools/build_task_bundle.py --image-tar saved.tar    # an image saved already

Only `docker_save` needs Docker; everything else runs anywhere (and is tested with a stand-in tar).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from segmenter.errors import CysegError
from segmenter.io.atomic import atomic_path

ROOT = Path(__file__).resolve().parents[1]
DESCRIPTOR = ROOT / "descriptor.yml"
# The uploader reads each zip entry into one Java byte array (InputStream.readAllBytes), which holds
# at most 2^31 - 9 bytes: a bigger image cannot be uploaded.
MAX_TAR_BYTES = 2**31 - 9
GPUS_LINE = re.compile(r"^(?P<indent>[ \t]+)gpus:[ \t]*\d+[ \t]*$", re.M)


class BundleError(Exception):
    """A bundle that cannot be built as asked: reported as one line."""


@dataclass(frozen=True)
class BundleNames:
    """The names the App Engine expects: the tar entry and the image reference it derives from it."""

    tar: str
    image: str
    zip: str


def bundle_names(descriptor: dict) -> BundleNames:
    """<namespace>-<version>.tar, the registry name <namespace with '/' for '.'>:<version>, and the
    bundle's default file name."""
    namespace, version = str(descriptor.get("namespace", "")), str(descriptor.get("version", ""))
    if not namespace or not version:
        raise BundleError("the descriptor needs a namespace and a version")
    if "-" in namespace:
        raise BundleError(f"namespace {namespace!r} holds '-': the App Engine would cut the image's name there")
    return BundleNames(f"{namespace}-{version}.tar", f"{namespace.replace('.', '/')}:{version}",
                       f"{namespace}-{version}.zip")


def with_gpus(text: str, gpus: int) -> str:
    """The descriptor's text with configuration.resources.gpus set to `gpus` (comments kept)."""
    if gpus < 0:
        raise BundleError(f"--gpus {gpus} must be >= 0")
    changed, count = GPUS_LINE.subn(lambda m: f"{m['indent']}gpus: {gpus}", text)
    if count != 1 or yaml.safe_load(changed)["configuration"]["resources"]["gpus"] != gpus:
        raise BundleError("the descriptor has no single 'gpus:' line under configuration.resources to set")
    return changed


def docker_save(image: str, reference: str, tar: Path) -> Path:
    """Tag `image` as `reference` and save it to `tar` (the one step that needs Docker)."""
    for command in (["docker", "tag", image, reference], ["docker", "save", "--output", str(tar), reference]):
        try:
            subprocess.run(command, check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise BundleError(f"{' '.join(command)} failed ({exc}); build the image first (see --help)") from None
    return tar


def check_image_tar(tar: Path) -> None:
    """Refuse a tar the App Engine cannot take: missing, empty, or larger than it can read."""
    if not tar.is_file() or tar.stat().st_size == 0:
        raise BundleError(f"image tar {tar} is missing or empty")
    if tar.stat().st_size > MAX_TAR_BYTES:
        raise BundleError(f"image tar {tar} holds {tar.stat().st_size / 2**30:.2f} GiB; the App Engine's uploader "
                          "reads at most 2 GiB per entry: slim the image (the CPU image fits)")


def write_bundle(out: Path, descriptor_text: str, tar: Path, tar_name: str) -> Path:
    """The zip: descriptor.yml and the image tar, both at its root (written atomically)."""
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as z:
        z.writestr("descriptor.yml", descriptor_text)
        z.write(tar, arcname=tar_name)
    return out


def build(descriptor: Path, image: str | None, image_tar: Path | None, out: Path | None, gpus: int | None) -> Path:
    """Write the bundle for `descriptor` with the image `image` (saved here) or `image_tar`."""
    text = descriptor.read_text(encoding="utf-8")
    if gpus is not None:
        text = with_gpus(text, gpus)
    names = bundle_names(yaml.safe_load(text))
    out = out or Path(names.zip)
    with tempfile.TemporaryDirectory(prefix=".bundle-", dir=out.resolve().parent) as tmp:
        tar = image_tar if image_tar is not None else docker_save(str(image), names.image, Path(tmp) / names.tar)
        check_image_tar(tar)
        return write_bundle(out, text, tar, names.tar)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="the built App Engine image (name or id), saved with docker save")
    source.add_argument("--image-tar", type=Path, help="an image saved already (docker save), tagged as the "
                        "registry name the App Engine derives from the tar's name")
    parser.add_argument("--descriptor", type=Path, default=DESCRIPTOR, help="default: %(default)s")
    parser.add_argument("--gpus", type=int, default=None,
                        help="set configuration.resources.gpus (1 for a CUDA image); default: the descriptor's")
    parser.add_argument("--out", type=Path, default=None, help="the zip; default: <namespace>-<version>.zip")
    args = parser.parse_args(argv)
    try:
        out = build(args.descriptor, args.image, args.image_tar, args.out, args.gpus)
    except (BundleError, CysegError, OSError) as exc:
        sys.exit(f"build_task_bundle: error: {exc}")
    print(out)


if __name__ == "__main__":
    main()
