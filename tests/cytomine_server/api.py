"""The REST endpoints: JSON views of stored objects and the handlers behind each route.

Shapes follow Cytomine-core-spring (CE 2023-2024) as read by cytomine-python-client 4.3.0; see
docs/cytomine-test-server.md for the list and for where the older Grails core is followed instead.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, ClassVar

import numpy as np
import shapely
from shapely import wkt as shapely_wkt
from shapely.geometry import Polygon, box
from shapely.geometry.base import BaseGeometry

from . import imaging
from .http import (
    HttpError,
    Request,
    Response,
    bad_request,
    json_response,
    not_found,
    parse_multipart,
    route,
)
from .store import now_ms

CLASS = {
    "project": "be.cytomine.domain.project.Project",
    "ontology": "be.cytomine.domain.ontology.Ontology",
    "term": "be.cytomine.domain.ontology.Term",
    "imageinstance": "be.cytomine.domain.image.ImageInstance",
    "abstractimage": "be.cytomine.domain.image.AbstractImage",
    "sliceinstance": "be.cytomine.domain.image.SliceInstance",
    "userannotation": "be.cytomine.domain.ontology.UserAnnotation",
    "algoannotation": "be.cytomine.domain.ontology.AlgoAnnotation",
    "annotationterm": "be.cytomine.domain.ontology.AnnotationTerm",
    "algoannotationterm": "be.cytomine.domain.ontology.AlgoAnnotationTerm",
    "user": "be.cytomine.domain.security.User",
    "userjob": "be.cytomine.domain.security.UserJob",
    "software": "be.cytomine.domain.processing.Software",
    "softwareparameter": "be.cytomine.domain.processing.SoftwareParameter",
    "job": "be.cytomine.domain.processing.Job",
    "jobparameter": "be.cytomine.domain.processing.JobParameter",
    "attachedfile": "be.cytomine.domain.meta.AttachedFile",
    "property": "be.cytomine.domain.meta.Property",
}

#: Job status codes (Cytomine ``Job``): 0 NOT_LAUNCH ... 8 KILLED.
JOB_STATUS = {0: "NOTLAUNCH", 1: "INQUEUE", 2: "RUNNING", 3: "SUCCESS", 4: "FAILED", 5: "INDETERMINATE",
              6: "WAIT", 7: "PREVIEWED", 8: "KILLED"}

IMAGE_FORMATS = ("png", "jpg", "jpeg", "tif", "tiff", "webp")


def _ts(value: int | None) -> str | None:
    return None if value is None else str(value)


def paginate(items: list, req: Request) -> dict:
    """``buildJsonList`` of the Spring core: offset/max slicing and the page fields."""
    offset = req.int_param("offset", 0) or 0
    max_ = req.int_param("max", 0) or 0
    size = len(items)
    per = max_ if max_ > 0 else 2**31 - 1
    sub = items[offset:offset + per] if offset < size else []
    return {"collection": sub, "offset": offset, "perPage": min(per, size), "size": size,
            "totalPages": math.ceil(size / per) if size else 0}


def _message(verb: str, name: str, ident: Any) -> str:
    return f"{name} {ident} {'added' if verb == 'Add' else 'edited' if verb == 'Edit' else 'deleted'}"


def respond_command(key: str, obj: dict, verb: str, name: str) -> Response:
    body = {"printMessage": True, "callback": {f"{key}ID": obj.get("id"), "method": f"be.cytomine.{verb}{name}Command"},
            "message": _message(verb, name, obj.get("id")), key: obj}
    return json_response(body)


def geometry_boundaries(geom: BaseGeometry) -> tuple[int, int, int, int] | None:
    """``GeometryUtils.getGeometryBoundaries``: (topLeftX, topLeftY (Cytomine frame), width, height);
    a single point gives a 100 x 100 box around it; no point gives None."""
    n = shapely.get_num_coordinates(geom)
    if n == 0 or geom.is_empty:
        return None
    minx, miny, maxx, maxy = geom.bounds
    if n > 1:
        return round(minx), round(maxy), int(maxx - minx), int(maxy - miny)
    return round(minx - 50), round(maxy + 50), 100, 100


class Api:
    """Route handlers; mixed into :class:`CytomineTestServer` (needs ``store``, ``url``, ``slide()``)."""

    # ------------------------------------------------------------------ helpers --------------------
    def _require(self, table: str, ident: Any, domain: str) -> dict:
        row = self.store.get(table, ident)
        if row is None:
            raise not_found(domain, ident)
        return row

    def _image_by_slice(self, slice_id: Any) -> dict:
        row = self.store.one("SELECT * FROM images WHERE slice = ?", (int(slice_id),))
        if row is None:
            raise not_found("SliceInstance", slice_id)
        return row

    def _image_for(self, kind: str, ident: Any) -> dict:
        if kind == "sliceinstance":
            return self._image_by_slice(ident)
        if kind == "abstractimage":
            row = self.store.one("SELECT * FROM images WHERE base_image = ?", (int(ident),))
            if row is None:
                raise not_found("AbstractImage", ident)
            return row
        return self._require("images", ident, "ImageInstance")

    def _annotation(self, ident: Any, kind: str = "annotation") -> dict:
        row = self.store.get("annotations", ident)
        if row is None or (kind == "userannotation" and row["kind"] != "user") or \
                (kind == "algoannotation" and row["kind"] != "algo"):
            name = {"userannotation": "UserAnnotation", "algoannotation": "AlgoAnnotation"}.get(kind, "Annotation")
            raise not_found(name, ident)
        return row

    def _is_admin(self, user: dict) -> bool:
        return bool(user and user["admin"])

    # ------------------------------------------------------------------ views ----------------------
    def user_json(self, u: dict, requester: dict | None = None) -> dict:
        d = {"id": u["id"], "class": CLASS["userjob" if u["algo"] else "user"], "created": _ts(u["created"]),
             "updated": None, "deleted": None, "username": u["username"], "firstname": u["username"],
             "lastname": "", "email": f"{u['username']}@test.invalid", "language": "ENGLISH",
             "origin": "TEST", "algo": bool(u["algo"]), "isDeveloper": False, "enabled": True,
             "admin": bool(u["admin"]), "user": None, "guest": False, "publicKey": u["public_key"]}
        if u["algo"]:
            creator = self.store.get("users", u["creator"]) if u["creator"] else None
            d.update(job=u["job"], user=u["creator"], humanUsername=creator["username"] if creator else None)
        if requester is not None and (requester["id"] == u["id"] or requester["admin"]
                                      or (u["algo"] and u["creator"] == requester["id"])):
            d["privateKey"] = u["private_key"]
        return d

    def ontology_json(self, o: dict) -> dict:
        terms = self.store.all("SELECT * FROM terms WHERE ontology = ? ORDER BY id", (o["id"],))
        projects = self.store.all("SELECT id, name FROM projects WHERE ontology = ?", (o["id"],))
        return {"id": o["id"], "class": CLASS["ontology"], "created": _ts(o["created"]), "updated": None,
                "deleted": None, "name": o["name"], "title": o["name"], "data": o["name"], "user": None,
                "attr": {"id": o["id"], "type": CLASS["ontology"]}, "isFolder": True, "key": o["id"],
                "hidden": False, "state": "open", "projects": projects,
                "children": [{"id": t["id"], "name": t["name"], "title": t["name"], "data": t["name"],
                              "color": t["color"], "class": CLASS["term"], "parent": t["parent"],
                              "attr": {"id": t["id"], "type": CLASS["term"]}, "checked": False,
                              "key": t["id"], "isFolder": False, "hidden": False, "children": []}
                             for t in terms]}

    def term_json(self, t: dict) -> dict:
        return {"id": t["id"], "class": CLASS["term"], "created": _ts(t["created"]), "updated": None,
                "deleted": None, "name": t["name"], "comment": None, "ontology": t["ontology"],
                "color": t["color"], "parent": t["parent"]}

    def project_json(self, p: dict) -> dict:
        ontology = self.store.get("ontologies", p["ontology"]) if p["ontology"] else None
        count = lambda sql: self.store.one(sql, (p["id"],))["n"]  # noqa: E731
        return {"id": p["id"], "class": CLASS["project"], "created": _ts(p["created"]), "updated": None,
                "deleted": None, "name": p["name"], "ontology": p["ontology"],
                "ontologyName": ontology["name"] if ontology else None, "discipline": None,
                "disciplineName": None, "blindMode": False, "areImagesDownloadable": True,
                "hideUsersLayers": False, "hideAdminsLayers": False, "isClosed": False, "isReadOnly": False,
                "isRestricted": False, "mode": "CLASSIC",
                "numberOfImages": count("SELECT COUNT(*) n FROM images WHERE project = ?"),
                "numberOfAnnotations": count("SELECT COUNT(*) n FROM annotations WHERE project = ? AND kind = 'user'"),
                "numberOfJobAnnotations": count("SELECT COUNT(*) n FROM annotations "
                                                "WHERE project = ? AND kind = 'algo'"),
                "numberOfReviewedAnnotations": 0}

    def image_json(self, i: dict) -> dict:
        count = lambda kind: self.store.one(  # noqa: E731
            "SELECT COUNT(*) n FROM annotations WHERE image = ? AND kind = ?", (i["id"], kind))["n"]
        base = self.url
        ext = os.path.splitext(i["original_filename"] or "")[1].lstrip(".").lower() or None
        return {"id": i["id"], "class": CLASS["imageinstance"], "created": _ts(i["created"]), "updated": None,
                "deleted": None, "baseImage": i["base_image"], "project": i["project"], "user": i["user"],
                "uploadedFile": None, "sample": None, "instanceFilename": i["instance_filename"],
                "originalFilename": i["original_filename"], "blindedName": None, "filename": i["path"],
                "path": i["path"], "extension": ext, "contentType": i["mime"], "mime": i["mime"],
                "width": i["width"], "height": i["height"], "depth": 1, "duration": 1, "channels": 1,
                "apparentChannels": 3, "physicalSizeX": i["physical_size"], "physicalSizeY": i["physical_size"],
                "physicalSizeZ": None, "resolution": i["physical_size"], "fps": None, "zoom": i["max_zoom"],
                "tileSize": imaging.TILE_SIZE, "magnification": i["magnification"], "bitPerSample": 8,
                "samplePerPixel": 3, "colorspace": None, "reviewed": False, "inReview": False,
                "reviewStart": None, "reviewStop": None, "reviewUser": None,
                "numberOfAnnotations": count("user"), "numberOfJobAnnotations": count("algo"),
                "numberOfReviewedAnnotations": 0,
                "thumb": f"{base}/api/imageinstance/{i['id']}/thumb.png?maxSize=512",
                "preview": f"{base}/api/imageinstance/{i['id']}/thumb.png?maxSize=1024",
                "macroURL": None}

    def slice_json(self, i: dict) -> dict:
        return {"id": i["slice"], "class": CLASS["sliceinstance"], "created": _ts(i["created"]), "updated": None,
                "deleted": None, "uploadedFile": None, "imageServerUrl": self.url, "project": i["project"],
                "baseSlice": i["slice"], "image": i["id"], "path": i["path"], "mime": i["mime"], "channel": 0,
                "zStack": 0, "time": 0, "rank": 0, "channelName": None, "channelColor": None}

    def _gis(self, a: dict, geom: BaseGeometry, image: dict) -> dict:
        ps = image["physical_size"]
        centroid = geom.centroid
        if ps:
            area, area_unit = geom.area * ps * ps, "micron²"
            perimeter, perimeter_unit = geom.length * ps / 1000.0, "mm"
        else:
            area, area_unit, perimeter, perimeter_unit = geom.area, "pixels²", geom.length, "pixels"
        return {"area": area, "areaUnit": area_unit, "perimeter": perimeter, "perimeterUnit": perimeter_unit,
                "centroid": {"x": centroid.x, "y": centroid.y} if not centroid.is_empty else None}

    def _annotation_urls(self, a: dict) -> dict:
        kind = "userannotation" if a["kind"] == "user" else "algoannotation"
        crop = f"{self.url}/api/{kind}/{a['id']}/crop.png"
        return {"cropURL": crop, "smallCropURL": f"{crop}?maxSize=256", "url": crop,
                "imageURL": f"{self.url}/#/project/{a['project']}/image/{a['image']}/annotation/{a['id']}"}

    def _terms_view(self, a: dict) -> dict:
        rows = self.store.all("SELECT term, user FROM annotation_terms WHERE annotation = ? ORDER BY id", (a["id"],))
        by_term: dict[int, list[int]] = {}
        for r in rows:
            by_term.setdefault(r["term"], []).append(r["user"])
        d = {"term": list(by_term), "userByTerm": [{"id": a["id"], "term": t, "user": u} for t, u in by_term.items()]}
        if a["kind"] == "algo":
            d["rate"] = 1.0 if by_term else None
        return d

    def annotation_json(self, a: dict) -> dict:
        """Full object (``GET /api/annotation/<id>.json``, add/edit responses)."""
        geom = shapely_wkt.loads(a["location"])
        image = self.store.get("images", a["image"])
        d = {"id": a["id"], "class": CLASS["userannotation" if a["kind"] == "user" else "algoannotation"],
             "created": _ts(a["created"]), "updated": _ts(a["updated"]), "deleted": None, "slice": a["slice"],
             "image": a["image"], "project": a["project"], "user": a["user"], "location": a["location"],
             "geometryCompression": a["geometry_compression"], "nbComments": 0, "reviewed": False,
             "track": [], "annotationTrack": [], "group": None}
        d.update(self._gis(a, geom, image))
        d.update(self._terms_view(a))
        d.update(self._annotation_urls(a))
        return d

    def annotation_row(self, a: dict, groups: list[str]) -> dict:
        """One row of ``GET /api/annotation.json`` with the requested property groups."""
        d: dict[str, Any] = {}
        geom = None
        if "basic" in groups:
            d.update(id=a["id"], **{"class": CLASS["userannotation" if a["kind"] == "user" else "algoannotation"]})
        if "meta" in groups:
            d.update(created=_ts(a["created"]), updated=_ts(a["updated"]), image=a["image"], slice=a["slice"],
                     project=a["project"], user=a["user"], nbComments=0, countReviewedAnnotations=0, reviewed=False,
                     **self._annotation_urls(a))
        if "wkt" in groups:
            d.update(location=a["location"], geometryCompression=a["geometry_compression"])
        if "gis" in groups:
            geom = shapely_wkt.loads(a["location"])
            gis = self._gis(a, geom, self.store.get("images", a["image"]))
            centroid = gis.pop("centroid") or {"x": None, "y": None}
            d.update(gis, x=centroid["x"], y=centroid["y"])
        if "term" in groups:
            d.update(self._terms_view(a))
        if "image" in groups:
            image = self.store.get("images", a["image"])
            d.update(originalFilename=image["original_filename"], instanceFilename=image["instance_filename"])
        if "user" in groups:
            user = self.store.get("users", a["user"])
            d.update(creator=user["username"] if user else None, algo=bool(user and user["algo"]))
        if "slice" in groups:
            d.update(channel=0, zStack=0, time=0)
        if "track" in groups:
            d.update(track=[], annotationTrack=[])
        return d

    def software_parameter_json(self, p: dict) -> dict:
        return {"id": p["id"], "class": CLASS["softwareparameter"], "created": _ts(p["created"]), "updated": None,
                "deleted": None, "name": p["name"], "humanName": p["name"], "type": p["type"],
                "defaultParamValue": p["default_value"], "required": bool(p["required"]), "index": p["idx"],
                "setByServer": bool(p["set_by_server"]), "serverParameter": False, "uri": p["uri"],
                "uriPrintAttribut": p["uri_print"], "uriSortAttribut": p["uri_sort"], "software": p["software"],
                "valueKey": f"[{p['name'].upper()}]", "commandLineFlag": f"--{p['name']}"}

    def software_json(self, s: dict) -> dict:
        params = self.store.all("SELECT * FROM software_parameters WHERE software = ? ORDER BY idx, id", (s["id"],))
        n_jobs = self.store.one("SELECT COUNT(*) n FROM jobs WHERE software = ?", (s["id"],))["n"]
        return {"id": s["id"], "class": CLASS["software"], "created": _ts(s["created"]), "updated": None,
                "deleted": None, "name": s["name"], "fullName": f"{s['name']} ({s['version']})",
                "softwareVersion": s["version"], "executable": True, "deprecated": False, "numberOfJob": n_jobs,
                "parameters": [self.software_parameter_json(p) for p in params]}

    def job_parameter_json(self, jp: dict) -> dict:
        sp = self.store.get("software_parameters", jp["software_parameter"])
        return {"id": jp["id"], "class": CLASS["jobparameter"], "created": _ts(jp["created"]), "updated": None,
                "deleted": None, "job": jp["job"], "softwareParameter": jp["software_parameter"],
                "value": jp["value"], "name": sp["name"] if sp else None, "humanName": sp["name"] if sp else None,
                "type": sp["type"] if sp else None, "index": sp["idx"] if sp else None,
                "uri": None, "uriPrintAttribut": None, "uriSortAttribut": None}

    def job_json(self, j: dict) -> dict:
        software = self.store.get("software", j["software"])
        creator = self.store.get("users", j["creator"])
        params = self.store.all("SELECT * FROM job_parameters WHERE job = ? ORDER BY id", (j["id"],))
        return {"id": j["id"], "class": CLASS["job"], "created": _ts(j["created"]), "updated": _ts(j["updated"]),
                "deleted": None, "software": j["software"], "softwareName": software["name"] if software else None,
                "softwareVersion": software["version"] if software else None, "project": j["project"],
                "status": j["status"], "number": j["number"], "statusComment": j["status_comment"],
                "progress": j["progress"], "userJob": j["user_job"],
                "username": creator["username"] if creator else None, "dataDeleted": False, "favorite": False,
                "rate": None, "processingServer": None,
                "jobParameters": [self.job_parameter_json(p) for p in params]}

    def attached_file_json(self, f: dict) -> dict:
        return {"id": f["id"], "class": CLASS["attachedfile"], "created": _ts(f["created"]), "updated": None,
                "deleted": None, "domainClassName": f["domain_class"], "domainIdent": f["domain_ident"],
                "filename": f["filename"], "key": f["key"], "url": f"{self.url}/api/attachedfile/{f['id']}/download"}

    def property_json(self, p: dict) -> dict:
        return {"id": p["id"], "class": CLASS["property"], "created": _ts(p["created"]), "updated": None,
                "deleted": None, "domainClassName": p["domain_class"], "domainIdent": p["domain_ident"],
                "key": p["key"], "value": p["value"]}

    # ------------------------------------------------------------------ server / users -----------
    def ping(self, req: Request) -> Response:
        return json_response({"alive": True, "authenticated": req.user is not None, "version": "test",
                              "serverURL": self.url, "serverID": "cytomine-test-server",
                              "user": req.user["id"] if req.user else None})

    @route("GET", r"/api/user/current\.json")
    def current_user(self, req: Request) -> Response:
        return json_response(self.user_json(req.user, req.user))

    @route("GET", r"/api/user/(?P<ident>\d+)\.json")
    def get_user(self, req: Request, ident: str) -> Response:
        return json_response(self.user_json(self._require("users", ident, "SecUser"), req.user))

    @route("GET", r"/api/user\.json")
    def list_users(self, req: Request) -> Response:
        rows = self.store.all("SELECT * FROM users WHERE algo = 0 ORDER BY id")
        return json_response(paginate([self.user_json(u, req.user) for u in rows], req))

    @route("GET", r"/api/userkey/(?P<public>[^/]+)/keys\.json")
    def user_keys_by_public(self, req: Request, public: str) -> Response:
        user = self.store.user_by_public_key(public)
        if user is None:
            raise not_found("SecUser", public)
        return self._keys(req, user)

    @route("GET", r"/api/user/(?P<ident>\d+)/keys\.json")
    def user_keys(self, req: Request, ident: str) -> Response:
        return self._keys(req, self._require("users", ident, "SecUser"))

    def _keys(self, req: Request, user: dict) -> Response:
        if not (req.user["id"] == user["id"] or req.user["admin"] or user["creator"] == req.user["id"]):
            raise HttpError(403, "You don't have the right to read or modify this resource!")
        return json_response({"publicKey": user["public_key"], "privateKey": user["private_key"]})

    # ------------------------------------------------------------------ projects / ontologies ----
    @route("GET", r"/api/project\.json")
    def list_projects(self, req: Request) -> Response:
        rows = self.store.all("SELECT * FROM projects ORDER BY id")
        return json_response(paginate([self.project_json(p) for p in rows], req))

    @route("GET", r"/api/project/(?P<ident>\d+)\.json")
    def get_project(self, req: Request, ident: str) -> Response:
        return json_response(self.project_json(self._require("projects", ident, "Project")))

    @route("GET", r"/api/ontology\.json")
    def list_ontologies(self, req: Request) -> Response:
        rows = self.store.all("SELECT * FROM ontologies ORDER BY id")
        return json_response(paginate([self.ontology_json(o) for o in rows], req))

    @route("GET", r"/api/ontology/(?P<ident>\d+)\.json")
    def get_ontology(self, req: Request, ident: str) -> Response:
        return json_response(self.ontology_json(self._require("ontologies", ident, "Ontology")))

    @route("GET", r"/api/term\.json")
    def list_terms(self, req: Request) -> Response:
        rows = self.store.all("SELECT * FROM terms ORDER BY id")
        return json_response(paginate([self.term_json(t) for t in rows], req))

    @route("GET", r"/api/term/(?P<ident>\d+)\.json")
    def get_term(self, req: Request, ident: str) -> Response:
        return json_response(self.term_json(self._require("terms", ident, "Term")))

    @route("GET", r"/api/project/(?P<ident>\d+)/term\.json")
    def project_terms(self, req: Request, ident: str) -> Response:
        project = self._require("projects", ident, "Project")
        rows = self.store.all("SELECT * FROM terms WHERE ontology = ? ORDER BY id", (project["ontology"],))
        return json_response(paginate([self.term_json(t) for t in rows], req))

    @route("GET", r"/api/ontology/(?P<ident>\d+)/term\.json")
    def ontology_terms(self, req: Request, ident: str) -> Response:
        self._require("ontologies", ident, "Ontology")
        rows = self.store.all("SELECT * FROM terms WHERE ontology = ? ORDER BY id", (int(ident),))
        return json_response(paginate([self.term_json(t) for t in rows], req))

    # ------------------------------------------------------------------ images -------------------
    @route("GET", r"/api/project/(?P<ident>\d+)/imageinstance\.json")
    def project_images(self, req: Request, ident: str) -> Response:
        self._require("projects", ident, "Project")
        rows = self.store.all("SELECT * FROM images WHERE project = ? ORDER BY id DESC", (int(ident),))
        return json_response(paginate([self.image_json(i) for i in rows], req))

    @route("GET", r"/api/imageinstance\.json")
    def list_images(self, req: Request) -> Response:
        rows = self.store.all("SELECT * FROM images ORDER BY id DESC")
        return json_response(paginate([self.image_json(i) for i in rows], req))

    @route("GET", r"/api/imageinstance/(?P<ident>\d+)\.json")
    def get_image(self, req: Request, ident: str) -> Response:
        return json_response(self.image_json(self._require("images", ident, "ImageInstance")))

    @route("GET", r"/api/imageinstance/(?P<ident>\d+)/sliceinstance/reference\.json")
    def reference_slice(self, req: Request, ident: str) -> Response:
        return json_response(self.slice_json(self._require("images", ident, "ImageInstance")))

    @route("GET", r"/api/imageinstance/(?P<ident>\d+)/sliceinstance\.json")
    def image_slices(self, req: Request, ident: str) -> Response:
        return json_response(paginate([self.slice_json(self._require("images", ident, "ImageInstance"))], req))

    @route("GET", r"/api/sliceinstance/(?P<ident>\d+)\.json")
    def get_slice(self, req: Request, ident: str) -> Response:
        return json_response(self.slice_json(self._image_by_slice(ident)))

    @route("GET", r"/api/(?P<kind>imageinstance|abstractimage)/(?P<ident>\d+)/download")
    def download_image(self, req: Request, kind: str, ident: str) -> Response:
        image = self._image_for(kind, ident)
        with open(image["path"], "rb") as fh:
            data = fh.read()
        name = image["original_filename"] or os.path.basename(image["path"])
        return Response(200, data, "application/octet-stream",
                        {"Content-Disposition": f"attachment; filename=\"{name}\""})

    def _format(self, fmt: str) -> str:
        fmt = fmt.lower()
        if fmt not in IMAGE_FORMATS:
            raise bad_request(f"Format {fmt} is not supported")
        return "jpg" if fmt == "jpeg" else fmt

    def _image_response(self, array: np.ndarray, fmt: str) -> Response:
        return Response(200, imaging.encode(array, fmt), imaging.CONTENT_TYPES[fmt])

    @route("GET", r"/api/(?P<kind>imageinstance|sliceinstance)/(?P<ident>\d+)/window-(?P<x>-?\d+)-(?P<y>-?\d+)"
                  r"-(?P<w>\d+)-(?P<h>\d+)\.(?P<fmt>\w+)")
    def window(self, req: Request, kind: str, ident: str, x: str, y: str, w: str, h: str, fmt: str) -> Response:
        image = self._image_for(kind, ident)
        fmt = self._format(fmt)
        mask = req.bool_param("mask")
        alpha = req.bool_param("alphaMask") or req.param("type") in ("alphaMask", "alphamask")
        mask = mask or req.param("type") == "mask"
        if alpha:
            fmt = "png" if fmt not in ("png", "webp") else fmt
        region = imaging.clip_region(int(x), int(y), int(w), int(h), image["width"], image["height"])
        if region is None:
            raise bad_request(f"Window {x},{y},{w},{h} does not intersect the image {image['width']}x{image['height']}")
        rx, ry, rw, rh = region
        out_w, out_h = imaging.scaled_size(rw, rh, req.int_param("zoom"), req.int_param("maxSize"))
        if mask and not alpha and self.window_masks:
            layer = self._window_mask(req, image, rx, ry, rw, rh, out_w, out_h)
            return self._image_response(layer, fmt)
        rgb = self.slide(image).read(rx, ry, rw, rh, out_w, out_h)
        if alpha and self.window_masks:
            layer = self._window_mask(req, image, rx, ry, rw, rh, out_w, out_h)
            rgb = np.dstack([rgb, layer])
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

    @route("GET", r"/api/(?P<kind>imageinstance|sliceinstance|abstractimage)/(?P<ident>\d+)/thumb\.(?P<fmt>\w+)")
    def thumb(self, req: Request, kind: str, ident: str, fmt: str) -> Response:
        image = self._image_for(kind, ident)
        fmt = self._format(fmt)
        max_size = req.int_param("maxSize", 512) or 512
        out_w, out_h = imaging.scaled_size(image["width"], image["height"], max_size=max_size)
        rgb = self.slide(image).read(0, 0, image["width"], image["height"], out_w, out_h)
        return self._image_response(rgb, fmt)

    @route("GET", r"/api/(?P<kind>sliceinstance|imageinstance)/(?P<ident>\d+)/normalized-tile/zoom/(?P<z>\d+)"
                  r"/tx/(?P<tx>\d+)/ty/(?P<ty>\d+)\.(?P<fmt>\w+)")
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

    # ------------------------------------------------------------------ annotations: read --------
    def _property_groups(self, req: Request) -> list[str]:
        """``ParamsService.getPropertyGroupToShow``."""
        names = {"basic": "showBasic", "meta": "showMeta", "gis": "showGIS", "term": "showTerm",
                 "image": "showImage", "slice": "showSlice", "track": "showTrack", "user": "showUser",
                 "wkt": "showWKT", "algo": "showAlgo", "imagegroup": "showImageGroup", "link": "showLink"}
        groups = [g for g, p in names.items() if req.bool_param(p)]
        if req.bool_param("showDefault") or not groups:
            groups += [g for g in ("basic", "meta", "term") if g not in groups]
        hide = {"basic": "hideBasic", "meta": "hideMeta", "wkt": "hideWKT", "gis": "hideGIS", "term": "hideTerm",
                "image": "hideImage", "user": "hideUser"}
        groups = [g for g in groups if not req.bool_param(hide.get(g, "-"))]
        if not groups:
            raise not_found("You must ask at least one properties group for request.", "-")
        return groups

    def _bbox(self, value: str) -> BaseGeometry:
        """``GeometryUtils.createBoundingBox``: WKT, or "minx,miny,maxx,maxy" in the Cytomine frame."""
        text = value.strip()
        try:
            if text[:1].isalpha():
                return shapely_wkt.loads(text)
            minx, miny, maxx, maxy = (float(v) for v in text.split(","))
            return Polygon([(minx, miny), (minx, maxy), (maxx, maxy), (maxx, miny)])
        except Exception as exc:
            raise bad_request(f"Geometry cannot be parsed for annotation search request:{exc}") from None

    def _filtered(self, req: Request, kind: str, use_term: bool = True) -> list[dict]:
        clauses, params = ["kind = ?"], [kind]
        for name, col in (("project", "project"), ("image", "image"), ("slice", "slice")):
            value = req.int_param(name)
            if value is not None:
                clauses.append(f"{col} = ?")
                params.append(value)
        for name, col in (("images", "image"), ("slices", "slice"), ("users", "user")):
            values = req.list_param(name)
            if values:
                clauses.append(f"{col} IN ({','.join('?' * len(values))})")
                params.extend(values)
        user = req.int_param("user")
        job = req.int_param("job")
        if job is not None:
            row = self.store.one("SELECT user_job FROM jobs WHERE id = ?", (job,))
            user = row["user_job"] if row else -1
        if user is not None:
            clauses.append("user = ?")
            params.append(user)
        rows = self.store.all(f"SELECT * FROM annotations WHERE {' AND '.join(clauses)} ORDER BY id DESC", params)
        term, terms = (req.int_param("term"), req.list_param("terms")) if use_term else (None, req.list_param("terms"))
        if term is not None or terms or req.bool_param("noTerm") or req.bool_param("multipleTerm"):
            kept = []
            for a in rows:
                ts = set(self.store.annotation_terms(a["id"]))
                if term is not None and term not in ts:
                    continue
                if terms and not ts & set(terms):
                    continue
                if req.bool_param("noTerm") and ts:
                    continue
                if req.bool_param("multipleTerm") and len(ts) < 2:
                    continue
                kept.append(a)
            rows = kept
        area = None
        if req.param("bbox") is not None:
            area = self._bbox(req.param("bbox"))
        if req.param("bboxAnnotation") is not None:
            area = shapely_wkt.loads(self._annotation(req.param("bboxAnnotation"))["location"])
        if area is not None:
            rows = [a for a in rows if shapely_wkt.loads(a["location"]).intersects(area)]
        return rows

    def _algo_asked(self, req: Request) -> bool:
        """``AnnotationListingBuilder.isAlgoAnnotationAsked``."""
        if req.bool_param("includeAlgo"):
            return True
        user = req.int_param("user")
        if user is not None:
            return bool(self._require("users", user, "User")["algo"])
        users = req.list_param("users") or []
        return any((self.store.get("users", u) or {"algo": 0})["algo"] for u in users)

    @route("GET", r"/api/annotation\.json")
    def list_annotations(self, req: Request) -> Response:
        groups = self._property_groups(req)
        if req.bool_param("reviewed") or req.bool_param("roi"):
            rows: list[dict] = []  # no reviewed / ROI annotations are modelled
        elif self._algo_asked(req):
            rows = self._filtered(req, "algo")
            if req.int_param("term") is None:  # the term moves to "suggestedTerm" (not modelled)
                rows += self._filtered(req, "user", use_term=False)
        else:
            rows = self._filtered(req, "user")
        return json_response(paginate([self.annotation_row(a, groups) for a in rows], req))

    @route("GET", r"/api/imageinstance/(?P<ident>\d+)/annotation/included\.json")
    def included_annotations(self, req: Request, ident: str) -> Response:
        image = self._require("images", ident, "ImageInstance")
        if req.param("geometry") is not None:
            area = self._bbox(req.param("geometry"))
        else:
            area = shapely_wkt.loads(self._annotation(req.param("annotation"))["location"])
        user = req.int_param("user")
        rows = self.store.all("SELECT * FROM annotations WHERE image = ? ORDER BY id DESC", (image["id"],))
        rows = [a for a in rows if (a["user"] == user if user else a["kind"] == "user")
                and shapely_wkt.loads(a["location"]).within(area)]
        terms = req.list_param("terms")
        if terms:
            rows = [a for a in rows if set(self.store.annotation_terms(a["id"])) & set(terms)]
        groups = self._property_groups(req)
        return json_response(paginate([self.annotation_row(a, groups) for a in rows], req))

    @route("GET", r"/api/(?P<kind>annotation|userannotation|algoannotation)/(?P<ident>\d+)\.json")
    def get_annotation(self, req: Request, kind: str, ident: str) -> Response:
        return json_response(self.annotation_json(self._annotation(ident, kind)))

    @route("GET", r"/api/(?P<kind>annotation|userannotation|algoannotation)/(?P<ident>\d+)"
                  r"/(?P<what>crop|mask|alphamask)\.(?P<fmt>\w+)")
    def annotation_image(self, req: Request, kind: str, ident: str, what: str, fmt: str) -> Response:
        a = self._annotation(ident, kind)
        image = self.store.get("images", a["image"])
        fmt = self._format(fmt)
        if what == "crop" and (req.bool_param("mask") or req.param("type") == "mask"):
            what = "mask"
        if what == "crop" and (req.bool_param("alphaMask") or req.param("type") in ("alphaMask", "alphamask")):
            what = "alphamask"
        if what == "alphamask":
            fmt = "png" if fmt not in ("png", "webp") else fmt
        geom = shapely_wkt.loads(a["location"])
        bounds = geometry_boundaries(geom)
        if bounds is None:
            raise bad_request("Annotation has no geometry")
        tlx, tly, w, h = bounds
        w, h = max(1, w), max(1, h)
        x, y = tlx, image["height"] - tly
        factor = req.float_param("increaseArea")
        if factor and factor > 0:
            nw, nh = round(w * factor), round(h * factor)
            x, y, w, h = x - (nw - w) // 2, y - (nh - h) // 2, nw, nh
        region = imaging.clip_region(x, y, w, h, image["width"], image["height"])
        if region is None:
            raise bad_request("Annotation is outside the image")
        rx, ry, rw, rh = region
        max_size = req.int_param("maxSize", self.crop_default_max_size)
        out_w, out_h = imaging.scaled_size(rw, rh, None if max_size else req.int_param("zoom"), max_size)
        sx, sy = out_w / rw, out_h / rh
        if what == "mask":
            layer = imaging.rasterize([geom], image["height"], rx, ry, sx, sy, out_w, out_h)
            return self._image_response(layer, fmt)
        rgb = self.slide(image).read(rx, ry, rw, rh, out_w, out_h)
        if what == "alphamask":
            layer = imaging.rasterize([geom], image["height"], rx, ry, sx, sy, out_w, out_h)
            rgb = np.dstack([rgb, layer])
        return self._image_response(rgb, fmt)

    # ------------------------------------------------------------------ annotations: write -------
    def _terms_of(self, item: dict) -> list[int]:
        ids: list[int] = []
        for key in ("term", "terms"):
            value = item.get(key)
            if value is None:
                continue
            values = value if isinstance(value, list) else [value]
            for v in values:
                try:
                    ids.append(int(v))
                except (TypeError, ValueError):
                    raise bad_request(f"Term id {v!r} is not valid") from None
        for t in ids:
            if self.store.get("terms", t) is None:
                raise not_found("Term", t)
        return ids

    @staticmethod
    def _parse_location(location: Any) -> BaseGeometry:
        try:
            geom = shapely_wkt.loads(str(location))
        except Exception:
            raise bad_request("Annotation location is not valid") from None
        if not geom.is_valid:
            raise bad_request("Annotation location is not valid")
        return geom

    @staticmethod
    def _clip_to_image(geom: BaseGeometry, image: dict) -> BaseGeometry:
        """Cut what lies outside the image, only when the envelope leaves it (as the core does)."""
        minx, miny, maxx, maxy = geom.bounds if not geom.is_empty else (0, 0, 0, 0)
        if minx < 0 or miny < 0 or maxx > image["width"] or maxy > image["height"]:
            mx, my = min(maxx, image["width"]), min(maxy, image["height"])
            geom = geom.intersection(Polygon([(0, 0), (0, my), (mx, my), (mx, 0)]))
        return geom

    def add_one_annotation(self, item: Any, user: dict) -> dict:
        """``UserAnnotationService.add`` / ``AlgoAnnotationService.add`` (validation, clipping,
        boundary check); returns the stored row."""
        if not isinstance(item, dict):
            raise bad_request("Json not valid")
        location = item.get("location")
        if location is None or (isinstance(location, str) and not location.strip()):
            raise bad_request(f"Annotation must have a valid geometry:{location}")
        if item.get("slice") is not None:
            image = self._image_by_slice(item["slice"])
        else:
            try:
                image = self.store.get("images", item.get("image"))
            except (TypeError, ValueError):
                image = None
            if image is None:
                raise not_found("ImageInstance", item.get("image"))
        geom = self._clip_to_image(self._parse_location(location), image)
        if geom.geom_type != "LineString":
            bounds = geometry_boundaries(geom)
            if bounds is None or bounds[2] == 0 or bounds[3] == 0:
                raise bad_request("Annotation dimension not valid")
        terms = self._terms_of(item)
        ident = self.store.add_annotation_row(image=image, user=user, location=geom.wkt, terms=terms,
                                              received=str(location), source="api")
        return self.store.get("annotations", ident)

    @route("POST", r"/api/(?:annotation|userannotation|algoannotation)\.json")
    def add_annotations(self, req: Request) -> Response:
        if req.bool_param("roi"):
            raise HttpError(501, "ROI annotation not yet implemented")
        data = req.json()
        cls = "algoannotation" if req.user["algo"] else "userannotation"
        if not isinstance(data, list):
            row = self.add_one_annotation(data, req.user)
            body = self.annotation_json(row)
            out = {"printMessage": True, "callback": {"annotationID": row["id"], "imageinstanceID": row["image"],
                                                      "method": "be.cytomine.AddAnnotationCommand"},
                   "message": f"Annotation {row['id']} added", "annotation": body}
            return json_response(out)
        added, errors = [], []
        for item in data:
            try:
                added.append(self.add_one_annotation(item, req.user)["id"])
            except HttpError as exc:
                errors.append({"data": item, "message": exc.message})
        ids = ",".join(str(i) for i in added)
        if not errors:
            status, payload = 200, {"message": f"{cls}s {ids} added"}
        elif not added:
            status, payload = 400, {"success": False, "message": "No entry saved", "errors": errors}
        else:
            status, payload = 206, {"success": False, "message": f"Only part of the entries ({cls}s {ids}",
                                    "errors": errors}
        if self.collection_status == "spring":
            return json_response({"data": payload, "status": status}, 200)
        return json_response(payload, status)

    def _check_owner(self, req: Request, a: dict) -> None:
        if not (req.user["admin"] or a["user"] == req.user["id"]):
            raise HttpError(403, "You don't have the right to read or modify this resource!")

    @route("PUT", r"/api/(?P<kind>annotation|userannotation|algoannotation)/(?P<ident>\d+)\.json")
    def update_annotation(self, req: Request, kind: str, ident: str) -> Response:
        a = self._annotation(ident, kind)
        self._check_owner(req, a)
        data = req.json()
        if not isinstance(data, dict):
            raise bad_request("Json not valid")
        if data.get("location") is not None:  # terms are AnnotationTerm objects: not changed by an edit
            image = self.store.get("images", a["image"])
            geom = self._clip_to_image(self._parse_location(data["location"]), image)
            self.store.execute("UPDATE annotations SET location = ?, received = ?, updated = ? WHERE id = ?",
                               (geom.wkt, str(data["location"]), now_ms(), a["id"]))
        row = self.store.get("annotations", a["id"])
        return respond_command("annotation", self.annotation_json(row), "Edit", "Annotation")

    @route("DELETE", r"/api/(?P<kind>annotation|userannotation|algoannotation)/(?P<ident>\d+)\.json")
    def delete_annotation(self, req: Request, kind: str, ident: str) -> Response:
        a = self._annotation(ident, kind)
        self._check_owner(req, a)
        body = self.annotation_json(a)
        self.store.execute("DELETE FROM annotation_terms WHERE annotation = ?", (a["id"],))
        self.store.execute("DELETE FROM annotations WHERE id = ?", (a["id"],))
        return respond_command("annotation", body, "Delete", "Annotation")

    def _annotation_term_json(self, a: dict, term: int, user: int | None, row_id: int | None = None) -> dict:
        return {"id": row_id, "class": CLASS["annotationterm" if a["kind"] == "user" else "algoannotationterm"],
                "userannotation": a["id"], "annotationIdent": a["id"], "term": term, "user": user,
                "userJob": user if a["kind"] == "algo" else None}

    @route("POST", r"/api/annotation/(?P<ident>\d+)/term/(?P<term>\d+)\.json")
    def add_annotation_term(self, req: Request, ident: str, term: str) -> Response:
        a = self._annotation(ident)
        self._require("terms", term, "Term")
        if int(term) in self.store.annotation_terms(a["id"]):
            raise HttpError(409, f"Term {term} already set on annotation {ident}")
        rid = self.store.insert("annotation_terms", annotation=a["id"], term=int(term), user=req.user["id"],
                                created=now_ms())
        return respond_command("annotationterm", self._annotation_term_json(a, int(term), req.user["id"], rid),
                               "Add", "AnnotationTerm")

    @route("GET", r"/api/annotation/(?P<ident>\d+)/term/(?P<term>\d+)\.json")
    def get_annotation_term(self, req: Request, ident: str, term: str) -> Response:
        a = self._annotation(ident)
        row = self.store.one("SELECT * FROM annotation_terms WHERE annotation = ? AND term = ?", (a["id"], int(term)))
        if row is None:
            raise not_found("AnnotationTerm", f"{ident}/{term}")
        return json_response(self._annotation_term_json(a, int(term), row["user"], row["id"]))

    @route("DELETE", r"/api/annotation/(?P<ident>\d+)/term/(?P<term>\d+)\.json")
    def delete_annotation_term(self, req: Request, ident: str, term: str) -> Response:
        a = self._annotation(ident)
        row = self.store.one("SELECT * FROM annotation_terms WHERE annotation = ? AND term = ?", (a["id"], int(term)))
        if row is None:
            raise not_found("AnnotationTerm", f"{ident}/{term}")
        self.store.execute("DELETE FROM annotation_terms WHERE id = ?", (row["id"],))
        return respond_command("annotationterm", self._annotation_term_json(a, int(term), row["user"], row["id"]),
                               "Delete", "AnnotationTerm")

    # ------------------------------------------------------------------ software / jobs ----------
    @route("GET", r"/api/software\.json")
    def list_software(self, req: Request) -> Response:
        rows = self.store.all("SELECT * FROM software ORDER BY id")
        return json_response(paginate([self.software_json(s) for s in rows], req))

    @route("GET", r"/api/software/(?P<ident>\d+)\.json")
    def get_software(self, req: Request, ident: str) -> Response:
        return json_response(self.software_json(self._require("software", ident, "Software")))

    @route("GET", r"/api/software/(?P<ident>\d+)/software_parameter\.json")
    def software_parameters(self, req: Request, ident: str) -> Response:
        self._require("software", ident, "Software")
        rows = self.store.all("SELECT * FROM software_parameters WHERE software = ? ORDER BY idx, id", (int(ident),))
        if not req.bool_param("withSetByServer"):
            rows = [p for p in rows if not p["set_by_server"]]
        return json_response(paginate([self.software_parameter_json(p) for p in rows], req))

    @route("GET", r"/api/softwareparameter/(?P<ident>\d+)\.json")
    def get_software_parameter(self, req: Request, ident: str) -> Response:
        return json_response(self.software_parameter_json(
            self._require("software_parameters", ident, "SoftwareParameter")))

    @route("POST", r"/api/job\.json")
    def post_job(self, req: Request) -> Response:
        data = req.json()
        if not isinstance(data, dict):
            raise bad_request("Json not valid")
        try:
            project = self._require("projects", data.get("project"), "Project")
            software = self._require("software", data.get("software"), "Software")
        except HttpError as exc:  # the add command wraps not-found errors as {"success", "errors"}
            raise HttpError(exc.status, exc.message) from None
        job_id, *_ = self.create_job(project["id"], software["id"], req.user["id"])
        return respond_command("job", self.job_json(self.store.get("jobs", job_id)), "Add", "Job")

    def create_job(self, project: int, software: int, creator: int) -> tuple[int, int, str, str]:
        """Create a job and its algo user ("user job") with its own key pair."""
        number = self.store.one("SELECT COUNT(*) n FROM jobs WHERE software = ?", (software,))["n"] + 1
        name = self.store.get("software", software)["name"]
        job_id = self.store.new_id()
        user_id, public, private = self.store.add_user(
            f"{name}{number}_{time.strftime('%Y%m%d%H%M%S')}", algo=True, job=job_id, creator=creator)
        ts = now_ms()
        self.store.insert("jobs", id=job_id, software=software, project=project, user_job=user_id, creator=creator,
                          number=number, status=0, progress=0, status_comment=None, created=ts, updated=ts)
        return job_id, user_id, public, private

    @route("GET", r"/api/job\.json")
    def list_jobs(self, req: Request) -> Response:
        clauses, params = [], []
        for name in ("project", "software"):
            value = req.int_param(name)
            if value is not None:
                clauses.append(f"{name} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.store.all(f"SELECT * FROM jobs {where} ORDER BY id DESC", params)
        return json_response(paginate([self.job_json(j) for j in rows], req))

    @route("GET", r"/api/job/(?P<ident>\d+)\.json")
    def get_job(self, req: Request, ident: str) -> Response:
        return json_response(self.job_json(self._require("jobs", ident, "Job")))

    @route("PUT", r"/api/job/(?P<ident>\d+)\.json")
    def update_job(self, req: Request, ident: str) -> Response:
        job = self._require("jobs", ident, "Job")
        if not (req.user["admin"] or req.user["id"] in (job["user_job"], job["creator"])):
            raise HttpError(403, "You don't have the right to read or modify this resource!")
        data = req.json()
        if not isinstance(data, dict):
            raise bad_request("Json not valid")
        status, progress, comment = job["status"], job["progress"], job["status_comment"]
        if "status" in data:
            try:
                status = int(data["status"])
            except (TypeError, ValueError):
                raise bad_request(f"Job status {data['status']!r} is not valid") from None
            if status not in JOB_STATUS:
                raise bad_request(f"Job status {status} is not valid")
        if "progress" in data and data["progress"] is not None:
            try:
                progress = int(data["progress"])
            except (TypeError, ValueError):
                raise bad_request(f"Job progress {data['progress']!r} is not valid") from None
            if not 0 <= progress <= 100:
                raise bad_request(f"Property progress of class Job with value [{progress}] "
                                  "does not fall within the valid range from [0] to [100]")
        if "statusComment" in data:
            comment = data["statusComment"]
            if comment is not None and len(str(comment)) > 255:
                raise bad_request("Property statusComment of class Job exceeds the maximum size of [255]")
        self.store.execute("UPDATE jobs SET status = ?, progress = ?, status_comment = ?, updated = ? WHERE id = ?",
                           (status, progress, comment, now_ms(), job["id"]))
        self.store.record_job_update(job["id"], status, progress, comment, req.user["id"], data)
        return respond_command("job", self.job_json(self.store.get("jobs", job["id"])), "Edit", "Job")

    @route("POST", r"/api/jobparameter\.json")
    def add_job_parameter(self, req: Request) -> Response:
        data = req.json()
        if not isinstance(data, dict):
            raise bad_request("Json not valid")
        try:
            job = self._require("jobs", data.get("job"), "Job")
            param = self._require("software_parameters", data.get("softwareParameter"), "SoftwareParameter")
        except HttpError as exc:
            raise HttpError(exc.status, exc.message) from None
        value = data.get("value")
        if value is not None and not isinstance(value, str):
            value = json.dumps(value)
        ident = self.store.insert("job_parameters", job=job["id"], software_parameter=param["id"], value=value,
                                  created=now_ms())
        return respond_command("jobparameter", self.job_parameter_json(self.store.get("job_parameters", ident)),
                               "Add", "JobParameter")

    @route("GET", r"/api/job/(?P<ident>\d+)/(?:jobparameter|parameter)\.json")
    def list_job_parameters(self, req: Request, ident: str) -> Response:
        self._require("jobs", ident, "Job")
        rows = self.store.all("SELECT * FROM job_parameters WHERE job = ? ORDER BY id", (int(ident),))
        return json_response(paginate([self.job_parameter_json(p) for p in rows], req))

    @route("GET", r"/api/jobparameter/(?P<ident>\d+)\.json")
    def get_job_parameter(self, req: Request, ident: str) -> Response:
        return json_response(self.job_parameter_json(self._require("job_parameters", ident, "JobParameter")))

    # ------------------------------------------------------------------ domains: files, properties
    _DOMAIN_TABLES: ClassVar[dict[str, str]] = {"project": "projects", "imageinstance": "images",
                                                "userannotation": "annotations",
                      "algoannotation": "annotations", "annotation": "annotations", "annotationdomain": "annotations",
                      "job": "jobs", "software": "software", "user": "users", "userjob": "users", "secuser": "users",
                      "term": "terms", "ontology": "ontologies", "attachedfile": "attached_files"}

    def resolve_domain(self, class_name: str, ident: Any) -> tuple[str, int]:
        """(normalised kind, id) of an existing domain object, for both Spring (``be.cytomine.domain.
        processing.Job``) and Grails (``be.cytomine.processing.Job``) class names, or 404."""
        simple = str(class_name).rsplit(".", 1)[-1].lower()
        table = self._DOMAIN_TABLES.get(simple)
        try:
            ident = int(ident)
        except (TypeError, ValueError):
            raise not_found(class_name, ident) from None
        if table is None or self.store.get(table, ident) is None:
            raise not_found(class_name, ident)
        kind = "annotation" if table == "annotations" else "user" if table == "users" else simple
        return kind, ident

    @route("POST", r"/api/attachedfile\.json")
    def upload_attached_file(self, req: Request) -> Response:
        cls, ident = req.param("domainClassName"), req.param("domainIdent")
        if cls is None or ident is None:
            raise bad_request("domainClassName and domainIdent are required")
        kind, ident = self.resolve_domain(cls, ident)
        files = [p for p in parse_multipart(req.body, req.headers.get("content-type", "")) if p["name"] == "files[]"]
        if not files:
            raise bad_request("Required request part 'files[]' is not present")
        part = files[0]
        filename = req.param("filename") or part["filename"] or "file"
        if self.attached_filename == "basename":
            filename = os.path.basename(filename.replace("\\", "/"))
        fid = self.store.insert("attached_files", domain_class=cls, domain_kind=kind, domain_ident=ident,
                                filename=filename, key=req.param("key"), data=part["data"], user=req.user["id"],
                                created=now_ms())
        return json_response(self.attached_file_json(self.store.get("attached_files", fid)))

    def _attached_files(self, req: Request, cls: str, ident: Any) -> Response:
        kind, ident = self.resolve_domain(cls, ident)
        rows = self.store.all("SELECT * FROM attached_files WHERE domain_kind = ? AND domain_ident = ? ORDER BY id",
                              (kind, ident))
        return json_response(paginate([self.attached_file_json(f) for f in rows], req))

    @route("GET", r"/api/attachedfile\.json")
    def list_attached_files(self, req: Request) -> Response:
        if req.param("domainClassName") is not None:
            return self._attached_files(req, req.param("domainClassName"), req.param("domainIdent"))
        rows = self.store.all("SELECT * FROM attached_files ORDER BY id")
        return json_response(paginate([self.attached_file_json(f) for f in rows], req))

    @route("GET", r"/api/domain/(?P<cls>[\w.]+)/(?P<ident>\d+)/attachedfile\.json")
    def domain_attached_files(self, req: Request, cls: str, ident: str) -> Response:
        return self._attached_files(req, cls, ident)

    @route("GET", r"/api/attachedfile/(?P<ident>\d+)\.json")
    def get_attached_file(self, req: Request, ident: str) -> Response:
        return json_response(self.attached_file_json(self._require("attached_files", ident, "AttachedFile")))

    @route("GET", r"/api/attachedfile/(?P<ident>\d+)/download")
    def download_attached_file(self, req: Request, ident: str) -> Response:
        f = self._require("attached_files", ident, "AttachedFile")
        name = os.path.basename(f["filename"].replace("\\", "/"))
        return Response(200, bytes(f["data"]), "application/octet-stream",
                        {"Content-Disposition": f"attachment; filename=\"{name}\""})

    @route("DELETE", r"/api/attachedfile/(?P<ident>\d+)\.json")
    def delete_attached_file(self, req: Request, ident: str) -> Response:
        f = self._require("attached_files", ident, "AttachedFile")
        self.store.execute("DELETE FROM attached_files WHERE id = ?", (f["id"],))
        return respond_command("attachedfile", self.attached_file_json(f), "Delete", "AttachedFile")

    def _domain_class_for(self, cls: str, kind: str, ident: int) -> str:
        if kind == "annotation":
            a = self.store.get("annotations", ident)
            return CLASS["userannotation" if a["kind"] == "user" else "algoannotation"]
        return cls

    def _properties(self, req: Request, cls: str, ident: Any) -> Response:
        kind, ident = self.resolve_domain(cls, ident)
        rows = self.store.all("SELECT * FROM properties WHERE domain_kind = ? AND domain_ident = ? ORDER BY id",
                              (kind, ident))
        return json_response(paginate([self.property_json(p) for p in rows], req))

    def _add_property(self, req: Request, cls: str, ident: Any) -> Response:
        kind, ident = self.resolve_domain(cls, ident)
        data = req.json()
        if not isinstance(data, dict) or not data.get("key"):
            raise bad_request("Property must have a key")
        key = str(data["key"])
        if self.store.one("SELECT id FROM properties WHERE domain_kind = ? AND domain_ident = ? AND key = ?",
                          (kind, ident, key)):
            raise HttpError(409, f"Property {key} already exists for {cls} {ident}")
        value = data.get("value")
        pid = self.store.insert("properties", domain_class=self._domain_class_for(cls, kind, ident), domain_kind=kind,
                                domain_ident=ident, key=key, value=None if value is None else str(value),
                                user=req.user["id"], created=now_ms())
        return respond_command("property", self.property_json(self.store.get("properties", pid)), "Add", "Property")

    def _property(self, cls: str, ident: Any, pid: Any = None, key: str | None = None) -> dict:
        kind, ident = self.resolve_domain(cls, ident)
        if key is not None:
            row = self.store.one("SELECT * FROM properties WHERE domain_kind = ? AND domain_ident = ? AND key = ?",
                                 (kind, ident, key))
        else:
            row = self.store.one("SELECT * FROM properties WHERE domain_kind = ? AND domain_ident = ? AND id = ?",
                                 (kind, ident, int(pid)))
        if row is None:
            raise not_found("Property", key if key is not None else pid)
        return row

    @route("GET", r"/api/domain/(?P<cls>[\w.]+)/(?P<ident>\d+)/property\.json")
    def domain_properties(self, req: Request, cls: str, ident: str) -> Response:
        return self._properties(req, cls, ident)

    @route("GET", r"/api/annotation/(?P<ident>\d+)/property\.json")
    def annotation_properties(self, req: Request, ident: str) -> Response:
        return self._properties(req, "annotation", ident)

    @route("POST", r"/api/domain/(?P<cls>[\w.]+)/(?P<ident>\d+)/property\.json")
    def add_domain_property(self, req: Request, cls: str, ident: str) -> Response:
        return self._add_property(req, cls, ident)

    @route("POST", r"/api/annotation/(?P<ident>\d+)/property\.json")
    def add_annotation_property(self, req: Request, ident: str) -> Response:
        return self._add_property(req, "annotation", ident)

    @route("GET", r"/api/domain/(?P<cls>[\w.]+)/(?P<ident>\d+)/key/(?P<key>[^/]+)/property\.json")
    def domain_property_by_key(self, req: Request, cls: str, ident: str, key: str) -> Response:
        return json_response(self.property_json(self._property(cls, ident, key=key)))

    @route("GET", r"/api/annotation/(?P<ident>\d+)/key/(?P<key>[^/]+)/property\.json")
    def annotation_property_by_key(self, req: Request, ident: str, key: str) -> Response:
        return json_response(self.property_json(self._property("annotation", ident, key=key)))

    @route("GET", r"/api/(?:domain/(?P<cls>[\w.]+)|annotation)/(?P<ident>\d+)/property/(?P<pid>\d+)\.json")
    def get_property(self, req: Request, ident: str, pid: str, cls: str | None = None) -> Response:
        return json_response(self.property_json(self._property(cls or "annotation", ident, pid)))

    @route("PUT", r"/api/(?:domain/(?P<cls>[\w.]+)|annotation)/(?P<ident>\d+)/property/(?P<pid>\d+)\.json")
    def update_property(self, req: Request, ident: str, pid: str, cls: str | None = None) -> Response:
        row = self._property(cls or "annotation", ident, pid)
        data = req.json()
        if not isinstance(data, dict):
            raise bad_request("Json not valid")
        key = str(data.get("key", row["key"]))
        value = data.get("value", row["value"])
        self.store.execute("UPDATE properties SET key = ?, value = ? WHERE id = ?",
                           (key, None if value is None else str(value), row["id"]))
        return respond_command("property", self.property_json(self.store.get("properties", row["id"])), "Edit",
                               "Property")

    @route("DELETE", r"/api/(?:domain/(?P<cls>[\w.]+)|annotation)/(?P<ident>\d+)/property/(?P<pid>\d+)\.json")
    def delete_property(self, req: Request, ident: str, pid: str, cls: str | None = None) -> Response:
        row = self._property(cls or "annotation", ident, pid)
        self.store.execute("DELETE FROM properties WHERE id = ?", (row["id"],))
        return respond_command("property", self.property_json(row), "Delete", "Property")
