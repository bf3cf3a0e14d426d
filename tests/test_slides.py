"""Slide readers and pyramid writer: a pyramidal TIFF built from scikit-image's bundled IHC image
(so the tests run on a fresh clone), other TIFF layouts, plain images, every error path, and the
real slides in ../shared/data/slides when present."""
from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import openslide
import pytest
import tifffile

from segmenter.errors import CysegError
from segmenter.io.images import composite_on_white, rgba_on_white
from segmenter.wsi import pyramid
from segmenter.wsi.pyramid import (
    halve,
    pyramid_sizes,
    write_pyramid,
    write_pyramid_streaming,
)
from segmenter.wsi.readers import ImageReader, OpenSlideReader, open_slide
from segmenter.wsi.tiff import TiffReader

SLIDES = Path(__file__).resolve().parents[2] / "shared" / "data" / "slides"
GLASS = (236, 232, 238)
MOSAIC_SHAPE = (1536, 2048)
DESCRIPTION = "BUILT from skimage.data.immunohistochemistry() tiles on glass (cyseg tests)"


def ihc_mosaic() -> np.ndarray:
    """A 2048x1536 RGB mosaic: four copies of the 512x512 IHC image (some flipped) on glass."""
    from skimage import data

    ihc = data.immunohistochemistry()
    image = np.empty((*MOSAIC_SHAPE, 3), np.uint8)
    image[:] = GLASS
    for (y, x), tile in zip([(0, 0), (256, 768), (1024, 1280), (1024, 256)],
                            [ihc, ihc[::-1], ihc[:, ::-1], ihc.transpose(1, 0, 2)], strict=True):
        image[y:y + 512, x:x + 512] = tile
    return image


def levels_of(image: np.ndarray, count: int) -> list[np.ndarray]:
    """The level arrays write_pyramid stores: repeated halving."""
    out = [image]
    while len(out) < count:
        out.append(halve(out[-1]))
    return out


@pytest.fixture(scope="module")
def mosaic() -> np.ndarray:
    return ihc_mosaic()


@pytest.fixture(scope="module")
def built(tmp_path_factory, mosaic) -> dict[str, Path]:
    """The mosaic written as zlib (lossless) and JPEG pyramids, 0.5 µm/px."""
    root = tmp_path_factory.mktemp("pyramids")
    return {c: write_pyramid(root / f"ihc-{c}.tif", mosaic, compression=c, mpp=0.5, description=DESCRIPTION)
            for c in ("zlib", "jpeg")}


def assert_one_line_error(excinfo: pytest.ExceptionInfo, *needles: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


# ---------------------------------------------------------------- pyramid writer + OpenSlide


@pytest.mark.parametrize("compression", ["zlib", "jpeg"])
def test_pyramid_is_generic_tiff_with_every_level(built, compression):
    path = built[compression]
    assert openslide.OpenSlide.detect_format(str(path)) == "generic-tiff"
    with openslide.OpenSlide(str(path)) as raw:
        assert raw.level_dimensions == ((2048, 1536), (1024, 768), (512, 384), (256, 192))
        assert raw.level_downsamples == (1.0, 2.0, 4.0, 8.0)
        assert float(raw.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        assert raw.properties["openslide.comment"] == DESCRIPTION
    with open_slide(path) as slide:
        assert isinstance(slide, OpenSlideReader)
        info = slide.describe()
        assert info["format"] == "generic-tiff" and info["description"] == DESCRIPTION
        assert info["mpp"] == pytest.approx(0.5) and info["magnification"] is None
        assert [lvl["width"] for lvl in info["levels"]] == [2048, 1024, 512, 256]
    assert not list(path.parent.glob(".*.part"))  # written under a temporary name, renamed


def test_pyramid_levels_halve_until_one_tile():
    assert pyramid_sizes(2048, 1536, 256) == [(2048, 1536), (1024, 768), (512, 384), (256, 192)]
    assert pyramid_sizes(1001, 300, 256) == [(1001, 300), (501, 150), (251, 75)]
    assert pyramid_sizes(200, 100, 256) == [(200, 100)]
    assert pyramid_sizes(2048, 1536, 256, levels=2) == [(2048, 1536), (1024, 768)]
    with pytest.raises(CysegError) as excinfo:
        pyramid_sizes(4, 4, 16, levels=5)
    assert_one_line_error(excinfo, "5 pyramid levels", "at most 3")


def test_halve_is_the_2x2_block_mean(mosaic):
    block_mean = mosaic.reshape(768, 2, 1024, 2, 3).astype(float).mean(axis=(1, 3))
    assert np.abs(halve(mosaic) - block_mean).max() <= 0.5 + 1e-9
    assert halve(mosaic[:5, :7]).shape == (3, 4, 3)


@pytest.mark.parametrize("compression, max_error, mean_error", [("zlib", 0, 0.0), ("jpeg", 60, 2.5)])
def test_read_every_level_matches_source(built, mosaic, compression, max_error, mean_error):
    with open_slide(built[compression]) as slide:
        for level, expected in enumerate(levels_of(mosaic, slide.level_count)):
            ds = int(slide.level_downsamples[level])
            h, w = expected.shape[:2]
            whole = slide.read(0, 0, w, h, level)
            assert whole.shape == (h, w, 3) and whole.dtype == np.uint8
            error = np.abs(whole.astype(int) - expected)
            assert error.max() <= max_error and error.mean() <= mean_error, (level, error.max(), error.mean())
            # an interior region, x and y in level-0 pixels, size in level pixels
            region = slide.read(96 * ds, 64 * ds, 150, 100, level)
            assert np.array_equal(region, whole[64:164, 96:246])


@pytest.mark.parametrize("reader", [OpenSlideReader, TiffReader])
def test_region_partly_outside_is_white(built, mosaic, reader):
    with reader(built["zlib"]) as slide:
        corner = slide.read(-100, -64, 200, 160, 0)
        assert (corner[:64] == 255).all() and (corner[:, :100] == 255).all()
        assert np.array_equal(corner[64:, 100:], mosaic[:96, :100])
        level1 = levels_of(mosaic, 2)[1]
        edge = slide.read(2048 - 64, 1536 - 32, 100, 50, 1)  # level 1: 32 px then white
        assert np.array_equal(edge[:16, :32], level1[-16:, -32:])
        assert (edge[16:] == 255).all() and (edge[:, 32:] == 255).all()


def test_region_outside_and_bad_requests_raise(built):
    with open_slide(built["zlib"]) as slide:
        for args in [(2048, 0, 10, 10, 0), (0, -20, 10, 20, 0), (-400, -400, 100, 100, 1), (0, 1536, 5, 5, 2)]:
            with pytest.raises(CysegError) as excinfo:
                slide.read(*args)
            assert_one_line_error(excinfo, "outside slide", str(built["zlib"]), "choose a window inside")
        with pytest.raises(CysegError) as excinfo:
            slide.read(0, 0, 10, 10, level=4)
        assert_one_line_error(excinfo, "level 4 does not exist", "levels 0..3")
        with pytest.raises(CysegError) as excinfo:
            slide.read(0, 0, 0, 10)
        assert_one_line_error(excinfo, "region size 0x10", "at least 1x1")


def test_thumbnail_reads_the_smallest_sufficient_level(built, mosaic):
    with open_slide(built["zlib"]) as slide:
        levels_read = []
        original = slide._read
        slide._read = lambda x, y, w, h, level: levels_read.append(level) or original(x, y, w, h, level)
        thumb, downsample = slide.thumbnail(300)
        assert thumb.shape == (225, 300, 3) and downsample == pytest.approx(2048 / 300)
        assert set(levels_read) == {2}  # 512x384 is the smallest level >= 300 px
        expected = cv2.resize(mosaic, (300, 225), interpolation=cv2.INTER_AREA)
        assert np.abs(thumb.astype(int) - expected).mean() < 2
        levels_read.clear()
        small, downsample = slide.thumbnail(64)
        assert small.shape == (48, 64, 3) and downsample == pytest.approx(32) and set(levels_read) == {3}
        whole, downsample = slide.thumbnail(5000)
        assert whole.shape == (1536, 2048, 3) and downsample == 1.0 and np.array_equal(whole, mosaic)


def test_pooled_thumbnail_keeps_objects_smaller_than_a_pixel(tmp_path):
    image = np.empty((1536, 2048, 3), np.uint8)
    image[:] = GLASS
    dots = [(100, 200), (690, 1333), (1480, 2030)]  # (y, x) of 6x6 dark dots, each inside one 32-px cell
    for y, x in dots:
        image[y:y + 6, x:x + 6] = 60
    with open_slide(write_pyramid(tmp_path / "dots.tif", image, compression="zlib")) as slide:
        levels_read = []
        original = slide._read
        slide._read = lambda x, y, w, h, level: levels_read.append(level) or original(x, y, w, h, level)
        mean, downsample = slide.thumbnail(64)
        darkest, pooled_downsample = slide.thumbnail(64, pool=8, reduce="min")
        assert mean.shape == darkest.shape == (48, 64, 3) and downsample == pooled_downsample == 32
        assert set(levels_read) == {3, 2}  # the pooled one samples every 4 level-0 pixels: level 2
        assert mean.min() > 220  # a 6x6 dot is averaged into its 32x32 thumbnail pixel
        for y, x in dots:
            assert darkest[y // 32, x // 32].max() < 120
        assert (np.delete(darkest.reshape(-1, 3), [(y // 32) * 64 + x // 32 for y, x in dots], axis=0) > 220).all()
        brightest, _ = slide.thumbnail(64, pool=8, reduce="max")
        assert brightest.min() > 220
        with pytest.raises(CysegError) as excinfo:
            slide.thumbnail(64, pool=8, reduce="median")
        assert_one_line_error(excinfo, "'median' is not known", "mean, min, max")


def test_level_for_downsample(built):
    with open_slide(built["jpeg"]) as slide:
        picks = {ds: slide.level_for_downsample(ds) for ds in (0.5, 1, 1.9, 2, 3.99, 4, 7.9, 8, 100)}
        assert picks == {0.5: 0, 1: 0, 1.9: 0, 2: 1, 3.99: 2, 4: 2, 7.9: 2, 8: 3, 100: 3}


def test_downsample_for_mpp_and_magnification(built):
    with open_slide(built["jpeg"]) as slide:
        assert slide.downsample_for(mpp=0.5) == 1.0
        assert slide.downsample_for(mpp=1.0) == pytest.approx(2.0)
        assert slide.downsample_for(mpp=0.498) == 1.0  # within 1 % of level 0
        with pytest.raises(CysegError) as excinfo:
            slide.downsample_for(mpp=0.25)
        assert_one_line_error(excinfo, "0.25 µm/px is finer than level 0", "0.5 µm/px")
        with pytest.raises(CysegError) as excinfo:
            slide.downsample_for(magnification=20)
        assert_one_line_error(excinfo, "no objective-power metadata", "(mpp) instead")
        with pytest.raises(CysegError) as excinfo:
            slide.downsample_for()
        assert_one_line_error(excinfo, "exactly one of mpp")
        slide.magnification = 40.0  # as an SVS/NDPI would report it
        assert slide.downsample_for(magnification=10) == pytest.approx(4.0)
        with pytest.raises(CysegError) as excinfo:
            slide.downsample_for(magnification=60)
        assert_one_line_error(excinfo, "60x is finer than level 0", "40x")


@pytest.mark.parametrize("reader", [OpenSlideReader, TiffReader])
def test_pickle_round_trip_reopens_the_file(built, reader):
    slide = reader(built["jpeg"])
    before = slide.read(512, 256, 300, 200, 1)
    state = slide.__getstate__()
    assert not any(name in state for name in ("_slide", "_tif", "_planes", "_lock", "_cache", "_maps"))
    clone = pickle.loads(pickle.dumps(slide))
    assert clone.level_dimensions == slide.level_dimensions and clone.mpp == slide.mpp
    assert np.array_equal(clone.read(512, 256, 300, 200, 1), before)
    slide.close()
    assert np.array_equal(slide.read(512, 256, 300, 200, 1), before)  # reopened after close()
    clone.close()
    slide.close()


@pytest.mark.parametrize("reader", [OpenSlideReader, TiffReader])
def test_concurrent_reads_from_threads(built, reader):
    """Dask's threaded workers share one reader: reads from several threads must not mix."""
    from concurrent.futures import ThreadPoolExecutor

    boxes = [(int(x), int(y), level) for x, y, level in
             np.random.default_rng(0).integers([0, 0, 0], [1800, 1300, 3], (48, 3))]
    with reader(built["jpeg"]) as slide:
        serial = [slide.read(x, y, 200, 150, level) for x, y, level in boxes]
        for _ in range(10):  # each round starts closed: the lazy first reads are where races hide
            slide.close()
            with ThreadPoolExecutor(4) as pool:
                threaded = list(pool.map(lambda box: slide.read(box[0], box[1], 200, 150, box[2]), boxes))
            assert all(np.array_equal(a, b) for a, b in zip(serial, threaded, strict=True))


def test_streaming_writer_matches_in_memory_writer(tmp_path, mosaic, monkeypatch):
    calls = []

    def read_region(x, y, w, h):
        calls.append((x, y, w, h))
        return mosaic[y:y + h, x:x + w]

    monkeypatch.setattr(pyramid, "IN_MEMORY_BYTES", 0)  # force the on-disk buffers of big slides
    out = write_pyramid_streaming(tmp_path / "streamed.tif", 2048, 1536, read_region, tile=512,
                                  compression="zlib", description="streamed")
    assert len(calls) == 4 * 3 and len(set(calls)) == len(calls)  # each level-0 tile read once
    assert not [p for p in tmp_path.iterdir() if p.name != "streamed.tif"]  # temporary buffers gone
    with open_slide(out) as slide:
        assert slide.level_dimensions == [(2048, 1536), (1024, 768), (512, 384)]
        for level, expected in enumerate(levels_of(mosaic, 3)):
            assert np.array_equal(slide.read(0, 0, *slide.level_dimensions[level], level), expected)


def test_streaming_writer_odd_size_and_failures(tmp_path, mosaic):
    odd = mosaic[:1001, :777]
    with open_slide(write_pyramid(tmp_path / "odd.tif", odd, compression=None)) as slide:
        assert slide.level_dimensions == [(777, 1001), (389, 501), (195, 251)]
        assert np.array_equal(slide.read(0, 0, 777, 1001), odd)
        assert np.array_equal(slide.read(0, 0, 195, 251, 2), halve(halve(odd)))
    with pytest.raises(ValueError, match=r"read_region\(0, 0, 256, 256\) returned uint8 \(256, 256\)"):
        write_pyramid_streaming(tmp_path / "bad.tif", 512, 512, lambda x, y, w, h: np.zeros((h, w), np.uint8))
    assert not list(tmp_path.glob("*bad*"))  # nothing left behind by the failed write
    for kwargs, needle in [({"tile": 100}, "multiple of 16"), ({"compression": "lzw"}, "'lzw' is not supported"),
                           ({"mpp": -1.0}, "mpp -1.0"), ({"quality": 0}, "JPEG quality 0")]:
        with pytest.raises(CysegError) as excinfo:
            write_pyramid(tmp_path / "x.tif", mosaic[:64, :64], **kwargs)
        assert_one_line_error(excinfo, needle)
    with pytest.raises(CysegError) as excinfo:
        write_pyramid(tmp_path / "grey.tif", mosaic[..., 0])
    assert_one_line_error(excinfo, "RGB uint8 image")


# ---------------------------------------------------------------- TiffReader and ImageReader


@pytest.mark.parametrize("kwargs", [{}, {"compression": "zlib", "rowsperstrip": 64},
                                    {"planarconfig": "separate", "compression": "zlib", "rowsperstrip": 100}])
def test_tiff_reader_on_plain_stripped_tiff(tmp_path, mosaic, kwargs):
    path = tmp_path / "plain.tif"
    data = np.moveaxis(mosaic, 2, 0) if kwargs.get("planarconfig") else mosaic
    tifffile.imwrite(path, data, photometric="rgb", resolution=(1e4 / 0.25, 1e4 / 0.25),
                     resolutionunit="CENTIMETER", **kwargs)
    assert openslide.OpenSlide.detect_format(str(path)) is None
    with open_slide(path) as slide:
        assert isinstance(slide, TiffReader) and slide.level_count == 1 and slide.mpp == pytest.approx(0.25)
        assert np.array_equal(slide.read(300, 700, 400, 333), mosaic[700:1033, 300:700])
        edge = slide.read(1900, 1400, 300, 300)
        assert np.array_equal(edge[:136, :148], mosaic[1400:, 1900:]) and (edge[136:] == 255).all()


def test_tiff_reader_on_subifd_pyramid(tmp_path, mosaic):
    """tifffile's SubIFD pyramids: OpenSlide sees only level 0, so open_slide uses tifffile."""
    path = tmp_path / "subifds.tif"
    levels = levels_of(mosaic, 4)
    with tifffile.TiffWriter(path) as tw:
        tw.write(levels[0], tile=(256, 256), photometric="rgb", compression="zlib", subifds=3,
                 resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
        for level in levels[1:]:
            tw.write(level, tile=(256, 256), photometric="rgb", compression="zlib", subfiletype=1)
    with openslide.OpenSlide(str(path)) as raw:
        assert raw.level_count == 1
    with open_slide(path) as slide:
        assert isinstance(slide, TiffReader) and slide.level_count == 4 and slide.mpp == pytest.approx(0.5)
        assert slide.level_downsamples == [1.0, 2.0, 4.0, 8.0]
        for level, expected in enumerate(levels):
            ds = 2**level
            assert np.array_equal(slide.read(0, 0, *slide.level_dimensions[level], level), expected)
            assert np.array_equal(slide.read(40 * ds, 24 * ds, 100, 90, level), expected[24:114, 40:140])


def test_tiff_reader_converts_grey_16bit_and_alpha(tmp_path, mosaic):
    grey = (mosaic.mean(axis=2) * 257).astype(np.uint16)
    tifffile.imwrite(tmp_path / "grey16.tif", grey, tile=(128, 128))
    with open_slide(tmp_path / "grey16.tif") as slide:
        rgb = slide.read(0, 0, 2048, 1536)
        assert (rgb[..., 0] == rgb[..., 2]).all()
        assert np.abs(rgb[..., 1].astype(float) - mosaic.mean(axis=2)).max() <= 1
    rgba = np.dstack([mosaic, np.full(MOSAIC_SHAPE, 128, np.uint8)])
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    with open_slide(tmp_path / "rgba.tif") as slide:
        expected = (mosaic.astype(float) * 128 + 255 * 127) / 255
        assert np.abs(slide.read(0, 0, 2048, 1536) - expected).max() <= 1
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([mosaic, mosaic]), photometric="rgb")
    with pytest.raises(CysegError) as excinfo:
        open_slide(tmp_path / "stack.tif")
    assert_one_line_error(excinfo, "stack.tif", "only 2-D grey or RGB images")


@pytest.mark.parametrize("suffix, max_error", [(".png", 0), (".jpg", 40), (".bmp", 0)])
def test_image_reader(tmp_path, mosaic, suffix, max_error):
    path = tmp_path / f"mosaic{suffix}"
    assert cv2.imwrite(str(path), cv2.cvtColor(mosaic, cv2.COLOR_RGB2BGR))
    with open_slide(path) as slide:
        assert isinstance(slide, ImageReader) and slide.level_count == 1 and slide.mpp is None
        assert (slide.width, slide.height) == (2048, 1536)
        region = slide.read(1000, 500, 300, 200)
        assert np.abs(region.astype(int) - mosaic[500:700, 1000:1300]).max() <= max_error
        corner = slide.read(2000, 1500, 100, 100)
        assert (corner[36:] == 255).all() and (corner[:, 48:] == 255).all()
        clone = pickle.loads(pickle.dumps(slide))
        assert "_image" not in slide.__getstate__() and np.array_equal(clone.read(1000, 500, 300, 200), region)
        with pytest.raises(CysegError) as excinfo:
            slide.downsample_for(mpp=1.0)
        assert_one_line_error(excinfo, "no µm-per-pixel metadata", "downsample or level instead")


# ---------------------------------------------------------------- error paths


def test_missing_folder_and_unsupported_files(tmp_path):
    with pytest.raises(CysegError) as excinfo:
        open_slide(tmp_path / "nope.svs")
    assert_one_line_error(excinfo, "nope.svs does not exist")
    with pytest.raises(CysegError) as excinfo:
        open_slide(tmp_path)
    assert_one_line_error(excinfo, "is a folder")
    (tmp_path / "slide.vsi").write_bytes(bytes(100))  # Olympus VSI: not read by OpenSlide 4.0
    with pytest.raises(CysegError) as excinfo:
        open_slide(tmp_path / "slide.vsi")
    assert_one_line_error(excinfo, "slide.vsi has an unsupported format (.vsi)", "supported: SVS, NDPI")
    (tmp_path / "notes.txt").write_text("not a slide")
    with pytest.raises(CysegError) as excinfo:
        open_slide(tmp_path / "notes.txt")
    assert_one_line_error(excinfo, "unsupported format (.txt)")


@pytest.mark.parametrize("name, needle", [("bad.svs", "not a readable SVS file"), ("bad.ndpi", "not a readable NDPI"),
                                          ("bad.czi", "CZI"),
                                          ("bad.tif", "not a readable TIFF"), ("bad.png", "not a readable PNG"),
                                          ("bad.jpg", "not a readable JPEG")])
def test_corrupt_files(tmp_path, name, needle):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(CysegError) as excinfo:
        open_slide(path)
    assert_one_line_error(excinfo, str(path), needle, "corrupt")


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_truncated_files_fail_with_the_file_named(tmp_path, built, mosaic, suffix):
    """A file cut short (interrupted copy): an error naming the file when opened or read."""
    whole = built["zlib"].read_bytes() if suffix == ".tif" else cv2.imencode(".png", mosaic)[1].tobytes()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CysegError) as excinfo, open_slide(path) as slide:
        for level in range(slide.level_count):
            slide.read(0, 0, *slide.level_dimensions[level], level)
    assert_one_line_error(excinfo, str(path))


# ---------------------------------------------------------------- real slides


def real_slide(name: str) -> Path:
    path = SLIDES / name
    if not path.is_file():
        pytest.skip(f"real slide {path} not present (../shared/data/slides is not in a fresh clone)")
    return path


def test_real_svs():
    with open_slide(real_slide("CMU-1-Small-Region.svs")) as slide:
        assert isinstance(slide, OpenSlideReader) and slide.format == "aperio" and slide.vendor == "aperio"
        assert slide.level_dimensions == [(2220, 2967)] and slide.level_downsamples == [1.0]
        assert slide.mpp == pytest.approx(0.499) and slide.magnification == 20.0
        assert slide.downsample_for(magnification=10) == pytest.approx(2.0)
        assert slide.downsample_for(mpp=2.0) == pytest.approx(2.0 / 0.499)
        tissue = slide.read(1000, 1500, 256, 256)
        assert tissue.mean() < 200 and tissue.std() > 20  # H&E, not glass
        glass = slide.read(100, 100, 128, 128)
        assert glass.mean() > 225
        thumb, downsample = slide.thumbnail(512)
        assert max(thumb.shape[:2]) == 512 and downsample == pytest.approx(2967 / 512)


def test_real_ndpi_fluorescence():
    with open_slide(real_slide("test3-DAPI-2-387.ndpi")) as slide:
        assert slide.format == "hamamatsu" and slide.level_count == 7
        assert slide.level_dimensions[0] == (3968, 4864) and slide.level_dimensions[-1] == (62, 76)
        assert slide.level_downsamples == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
        assert slide.mpp == pytest.approx(0.22818, rel=1e-4) and slide.magnification == 40.0
        assert slide.downsample_for(magnification=10) == pytest.approx(4.0)
        thumb, _ = slide.thumbnail(256)
        assert np.median(thumb.max(axis=2)) < 40  # dark background
        assert thumb[..., 2].max() > 200 and thumb[..., :2].max() < 60  # DAPI: blue only
        region = slide.read(1024, 3072, 512, 512, 1)
        assert region.shape == (512, 512, 3)


def test_real_dicom_format_and_levels_only():
    """OpenSlide 4.0.1 decodes this file's colours wrongly: no pixel checks here."""
    with open_slide(real_slide("cmu-1-small-region-dicom/level-0-frames-0-30.dcm")) as slide:
        assert slide.format == "dicom" and slide.level_count == 12
        assert slide.level_dimensions[0] == (2220, 2967) and slide.level_dimensions[-1] == (1, 1)
        assert slide.level_downsamples[1] == pytest.approx(2.0, rel=1e-3)
        assert slide.mpp == pytest.approx(0.499) and slide.magnification is None
        assert slide.level_for_downsample(2.0) == 1 and slide.level_for_downsample(16.0) == 4
        assert slide.read(0, 0, 64, 64, 3).shape == (64, 64, 3)
        restored = pickle.loads(pickle.dumps(slide))
        assert restored.level_dimensions == slide.level_dimensions


def test_rgba_on_white_drops_an_opaque_alpha_and_composites_a_translucent_one(mosaic):
    rgba = np.dstack([mosaic[:64, :80], np.full((64, 80), 255, np.uint8)])
    opaque = rgba_on_white(rgba)
    assert opaque.flags.c_contiguous and np.array_equal(opaque, mosaic[:64, :80])
    rgba[10:20, 10:30, 3] = 100
    np.testing.assert_array_equal(rgba_on_white(rgba), composite_on_white(rgba[..., :3], rgba[..., 3]))
    assert (rgba_on_white(rgba)[10:20, 10:30] >= mosaic[10:20, 10:30]).all()  # lighter: drawn over white
