"""Pixel routes: slices, windows, crops, thumbnails, normalized tiles and downloads, each as the
profile's core serves them (docs/cytomine-test-server.md).

* Grails (legacy): windows honour ``zoom``, ``maxSize`` and the mask options and are clipped to the
  image; thumbnails only under ``abstractimage``; no slices, no tiles.
* Spring and monorepo: windows read only the region (``zoom``, ``maxSize``, masks ignored:
  full-resolution pixels), a region leaving the image is refused (PIMS "out of bounds"), a format
  other than png/jpg/webp becomes png; ``imageinstance/{id}/crop`` scales to ``maxSize``
  (default 256); image-instance and abstract-image thumbnails and downloads need a Keycloak token
  from Spring 5.2 on, slice thumbnails do not.
"""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
from shapely import wkt as shapely_wkt
from shapely.geometry import box

from . import imaging
from .http import HttpError, Request, Response, bad_request, json_response, needs, not_found, paginate, route

IMAGE_FORMATS = ("png", "jpg", "jpeg", "tif", "tiff", "webp")
PIMS_FORMATS = ("png", "jpg", "webp")


class PixelApi:
    """Mixed into the server (needs ``store``, ``url``, ``profile``, ``slide()``, ``image_json``)."""

    # ------------------------------------------------------------------ images and slices ---------
    def _image_by_slice(self, slice_id: Any) -> dict:
        row = self.store.one("SELECT * FROM images WHERE slice = ?", (int(slice_id),))
        if row is None:
            raise not_found("SliceInstance", slice_id)
        return row

    def _image_for(self, kind: str, ident: Any) -> dict:
        if kind == "sliceinstance":
            if not self.profile.slices:
                raise HttpError(404, "No endpoint for slices", html=self.profile.html_errors)
            return self._image_by_slice(ident)
        if kind == "abstractimage":
            row = self.store.one("SELECT * FROM images WHERE base_image = ?", (int(ident),))
            if row is None:
                raise not_found("AbstractImage", ident)
            return row
        return self._require("images", ident, "ImageInstance")

    def slice_json(self, i: dict) -> dict:
        return {"id": i["slice"], "class": self._class("sliceinstance"), "created": str(i["created"]),
                "updated": None, "deleted": None, "uploadedFile": None, "imageServerUrl": self.url,
                "project": i["project"], "baseSlice": i["slice"], "image": i["id"], "path": i["path"],
                "mime": i["mime"], "channel": 0, "zStack": 0, "time": 0, "rank": 0, "channelName": None,
                "channelColor": None}

    @route("GET", r"/api/imageinstance/(?P<ident>\d+)/sliceinstance/reference\.json")
    @needs("slices")
    def reference_slice(self, req: Request, ident: str) -> Response:
        return json_response(self.slice_json(self._require("images", ident, "ImageInstance")))

    @route("GET", r"/api/imageinstance/(?P<ident>\d+)/sliceinstance\.json")
    @needs("slices")
    def image_slices(self, req: Request, ident: str) -> Response:
        return json_response(paginate([self.slice_json(self._require("images", ident, "ImageInstance"))], req))

    @route("GET", r"/api/sliceinstance/(?P<ident>\d+)\.json")
    @needs("slices")
    def get_slice(self, req: Request, ident: str) -> Response:
        return json_response(self.slice_json(self._image_by_slice(ident)))

    @route("GET", r"/api/(?P<kind>imageinstance|abstractimage)/(?P<ident>\d+)/download")
    def download_image(self, req: Request, kind: str, ident: str) -> Response:
        image = self._image_for(kind, ident)
        if self.profile.thumb_needs_token and not req.param("authorization") and not req.param("Authorization"):
            raise bad_request("Required request parameter 'Authorization' is not present")
        with open(image["path"], "rb") as fh:
            data = fh.read()
        name = image["original_filename"] or os.path.basename(image["path"])
        return Response(200, data, "application/octet-stream",
                        {"Content-Disposition": f"attachment; filename=\"{name}\""})

    # ------------------------------------------------------------------ helpers ---------------------
    def _format(self, fmt: str) -> str:
        fmt = fmt.lower()
        if not self.profile.legacy:  # the core forwards png, jpg and webp; anything else as png
            return fmt if fmt in PIMS_FORMATS else "jpg" if fmt == "jpeg" else "png"
        if fmt not in IMAGE_FORMATS:
            raise bad_request(f"Format {fmt} is not supported")
        return "jpg" if fmt == "jpeg" else fmt

    def _image_response(self, array: np.ndarray, fmt: str) -> Response:
        return Response(200, imaging.encode(array, fmt), imaging.CONTENT_TYPES[fmt])

    @staticmethod
    def _inside(image: dict, x: int, y: int, w: int, h: int) -> tuple[int, int, int, int]:
        """PIMS refuses a region that leaves the image."""
        if x < 0 or y < 0 or w < 1 or h < 1 or x + w > image["width"] or y + h > image["height"]:
            raise bad_request(f"Region {x},{y},{w},{h} is out of bounds of the {image['width']}x{image['height']} "
                              "image")
        return x, y, w, h

    # ------------------------------------------------------------------ windows and crops ----------
    @route("GET", r"/api/(?P<kind>imageinstance|sliceinstance)/(?P<ident>\d+)/window-(?P<x>-?\d+)-(?P<y>-?\d+)"
                  r"-(?P<w>\d+)-(?P<h>\d+)\.(?P<fmt>\w+)")
    def window(self, req: Request, kind: str, ident: str, x: str, y: str, w: str, h: str, fmt: str) -> Response:
        image = self._image_for(kind, ident)
        fmt = self._format(fmt)
        if not self.profile.window_options:  # only the region is read: full-resolution pixels
            rx, ry, rw, rh = self._inside(image, int(x), int(y), int(w), int(h))
            out_w, out_h = imaging.scaled_size(rw, rh)  # the image server's output: the region's size
            return self._image_response(self.slide(image).read(rx, ry, rw, rh, out_w, out_h), fmt)
        mask = req.bool_param("mask") or req.param("type") == "mask"
        alpha = req.bool_param("alphaMask") or req.param("type") in ("alphaMask", "alphamask")
        if alpha:
            fmt = "png" if fmt not in ("png", "webp") else fmt
        region = imaging.clip_region(int(x), int(y), int(w), int(h), image["width"], image["height"])
        if region is None:
            raise bad_request(f"Window {x},{y},{w},{h} does not intersect the image {image['width']}x{image['height']}")
        rx, ry, rw, rh = region
        out_w, out_h = imaging.scaled_size(rw, rh, req.int_param("zoom"), req.int_param("maxSize"))
        if mask and not alpha:
            return self._image_response(self._window_mask(req, image, rx, ry, rw, rh, out_w, out_h), fmt)
        rgb = self.slide(image).read(rx, ry, rw, rh, out_w, out_h)
        if alpha:
            rgb = np.dstack([rgb, self._window_mask(req, image, rx, ry, rw, rh, out_w, out_h)])
        return self._image_response(rgb, fmt)

    def _window_mask(self, req: Request, image: dict, rx: int, ry: int, rw: int, rh: int, out_w: int,
                     out_h: int) -> np.ndarray:
        """Grails-core window masks: the image's annotations chosen by ``annotations`` (ids) or by
        ``users``/``terms`` (user annotations when no user is given), rasterised in the window."""
        window = box(rx, image["height"] - ry - rh, rx + rw, image["height"] - ry)  # Cytomine frame
        ids = req.list_param("annotations")
        rows = self.store.all("SELECT * FROM annotations WHERE image = ?", (image["id"],))
        if ids:
            rows = [a for a in rows if a["id"] in ids]
        else:
            users, terms = req.list_param("users"), req.list_param("terms")
            rows = [a for a in rows if (a["user"] in users if users else a["kind"] == "user")]
            if terms:
                rows = [a for a in rows if set(self.store.annotation_terms(a["id"])) & set(terms)]
        geoms = [g for g in (shapely_wkt.loads(a["location"]) for a in rows) if g.intersects(window)]
        return imaging.rasterize(geoms, image["height"], rx, ry, out_w / rw, out_h / rh, out_w, out_h)

    @route("GET", r"/api/imageinstance/(?P<ident>\d+)/crop\.(?P<fmt>\w+)")
    def image_crop(self, req: Request, ident: str, fmt: str) -> Response:
        """Spring/monorepo crop of a WKT ``location`` (Cytomine frame): its bounding box scaled to
        ``maxSize`` (default 256; ``zoom`` only counts without maxSize, so never). Not modelled on
        the Grails core, which redirects to the IMS crop."""
        if self.profile.legacy:
            raise HttpError(404, "crop redirects to the image server (not modelled)")
        image = self._require("images", ident, "ImageInstance")
        fmt = fmt.lower() if fmt.lower() in PIMS_FORMATS else "jpg"
        try:
            minx, miny, maxx, maxy = shapely_wkt.loads(str(req.param("location"))).bounds
        except Exception:
            raise bad_request("Parameter location is not a valid WKT geometry") from None
        x, y = math.floor(minx), image["height"] - math.ceil(maxy)
        rx, ry, rw, rh = self._inside(image, x, y, math.ceil(maxx) - x, image["height"] - math.floor(miny) - y)
        out_w, out_h = imaging.scaled_size(rw, rh, max_size=req.int_param("maxSize", 256) or 256)
        return self._image_response(self.slide(image).read(rx, ry, rw, rh, out_w, out_h), fmt)

    # ------------------------------------------------------------------ thumbnails and tiles -------
    @route("GET", r"/api/(?P<kind>imageinstance|sliceinstance|abstractimage)/(?P<ident>\d+)/thumb\.(?P<fmt>\w+)")
    def thumb(self, req: Request, kind: str, ident: str, fmt: str) -> Response:
        if self.profile.legacy and kind != "abstractimage":
            raise HttpError(404, f"No thumbnail route under {kind}")
        image = self._image_for(kind, ident)
        if self.profile.thumb_needs_token and kind != "sliceinstance" and not req.param("authorization"):
            # the core dereferences the missing token: an internal error, not a refusal
            raise HttpError(500, "Cannot invoke \"String.startsWith(String)\" because \"token\" is null")
        fmt = self._format(fmt)
        max_size = req.int_param("maxSize", 512) or 512
        out_w, out_h = imaging.scaled_size(image["width"], image["height"], max_size=max_size)
        rgb = self.slide(image).read(0, 0, image["width"], image["height"], out_w, out_h)
        return self._image_response(rgb, fmt)

    @route("GET", r"/api/(?P<kind>sliceinstance|imageinstance)/(?P<ident>\d+)/normalized-tile/zoom/(?P<z>\d+)"
                  r"/tx/(?P<tx>\d+)/ty/(?P<ty>\d+)\.(?P<fmt>\w+)")
    @needs("tiles")
    def normalized_tile(self, req: Request, kind: str, ident: str, z: str, tx: str, ty: str, fmt: str) -> Response:
        image = self._image_for(kind, ident)
        fmt = self._format(fmt)
        zoom, max_zoom = int(z), image["max_zoom"]
        if zoom > max_zoom:
            raise bad_request(f"Zoom {zoom} is above the maximum zoom {max_zoom}")
        ds = 2 ** (max_zoom - zoom)
        span = imaging.TILE_SIZE * ds
        region = imaging.clip_region(int(tx) * span, int(ty) * span, span, span, image["width"], image["height"])
        if region is None:
            raise bad_request(f"Tile ({tx}, {ty}) is outside the image at zoom {zoom}")
        rx, ry, rw, rh = region
        out_w, out_h = max(1, math.ceil(rw / ds)), max(1, math.ceil(rh / ds))
        return self._image_response(self.slide(image).read(rx, ry, rw, rh, out_w, out_h), fmt)
