"""The REST endpoints: JSON views of stored objects and the handlers behind each route, as the
server's profile (legacy, spring, current) writes them; pixels are in `pixels`, the job API in
`jobs`. docs/cytomine-test-server.md lists, per endpoint and profile, the core source followed.
"""
from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np
import shapely
from shapely import wkt as shapely_wkt
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from . import imaging
from .http import (
    HttpError,
    Request,
    Response,
    bad_request,
    json_response,
    needs,
    not_found,
    paginate,
    parse_multipart,
    respond_command,
    route,
    ts,
)
from .jobs import JobApi
from .pixels import PixelApi
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


class Api(PixelApi, JobApi):
    """Route handlers; mixed into :class:`CytomineTestServer` (needs ``store``, ``url``, ``slide()``)."""

    # ------------------------------------------------------------------ helpers --------------------
    def _require(self, table: str, ident: Any, domain: str) -> dict:
        row = self.store.get(table, ident)
        if row is None:
            raise not_found(domain, ident)
        return row

    def _annotation(self, ident: Any, kind: str = "annotation") -> dict:
        row = self.store.get("annotations", ident)
        if row is None or (kind == "userannotation" and row["kind"] != "user") or \
                (kind == "algoannotation" and row["kind"] != "algo"):
            name = {"userannotation": "UserAnnotation", "algoannotation": "AlgoAnnotation"}.get(kind, "Annotation")
            raise not_found(name, ident)
        return row

    def _class(self, key: str) -> str:
        """The domain class name of `key` as this core writes it."""
        return self.profile.class_name(CLASS[key])

    def _annotation_class(self, a: dict) -> str:
        return self._class("userannotation" if a["kind"] == "user" else "algoannotation")

    def _is_admin(self, user: dict) -> bool:
        return bool(user and user["admin"])

    # ------------------------------------------------------------------ views ----------------------
    def user_json(self, u: dict, requester: dict | None = None) -> dict:
        d = {"id": u["id"], "class": self._class("userjob" if u["algo"] else "user"), "created": ts(u["created"]),
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
        return {"id": o["id"], "class": self._class("ontology"), "created": ts(o["created"]), "updated": None,
                "deleted": None, "name": o["name"], "title": o["name"], "data": o["name"], "user": None,
                "attr": {"id": o["id"], "type": self._class("ontology")}, "isFolder": True, "key": o["id"],
                "hidden": False, "state": "open", "projects": projects,
                "children": [{"id": t["id"], "name": t["name"], "title": t["name"], "data": t["name"],
                              "color": t["color"], "class": self._class("term"), "parent": t["parent"],
                              "attr": {"id": t["id"], "type": self._class("term")}, "checked": False,
                              "key": t["id"], "isFolder": False, "hidden": False, "children": []}
                             for t in terms]}

    def term_json(self, t: dict) -> dict:
        if self.profile.repository:  # the monorepo's repository TermResponse
            return {"id": t["id"], "name": t["name"], "color": t["color"], "ontologyId": t["ontology"],
                    "created": ts(t["created"]), "updated": None, "deleted": None, "comment": None, "children": []}
        return {"id": t["id"], "class": self._class("term"), "created": ts(t["created"]), "updated": None,
                "deleted": None, "name": t["name"], "comment": None, "ontology": t["ontology"],
                "color": t["color"], "parent": t["parent"]}

    def project_json(self, p: dict) -> dict:
        ontology = self.store.get("ontologies", p["ontology"]) if p["ontology"] else None
        count = lambda sql: self.store.one(sql, (p["id"],))["n"]  # noqa: E731
        return {"id": p["id"], "class": self._class("project"), "created": ts(p["created"]), "updated": None,
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
        ext = os.path.splitext(i["original_filename"] or "")[1].lstrip(".").lower() or None
        d = {"id": i["id"], "class": self._class("imageinstance"), "created": ts(i["created"]), "updated": None,
             "deleted": None, "baseImage": i["base_image"], "project": i["project"], "user": i["user"],
             "instanceFilename": i["instance_filename"], "originalFilename": i["original_filename"],
             "filename": i["path"], "path": i["path"], "width": i["width"], "height": i["height"],
             "magnification": i["magnification"], "reviewed": False, "reviewStart": None, "reviewStop": None,
             "reviewUser": None, "numberOfAnnotations": count("user"), "numberOfJobAnnotations": count("algo"),
             "numberOfReviewedAnnotations": 0}
        if self.profile.legacy:  # Grails ImageInstance.getDataFromDomain: IMS era, no slices
            thumb = f"{self.url}/api/abstractimage/{i['base_image']}/thumb.png"
            d.update(mime=ext, resolution=i["physical_size"], depth=i["max_zoom"], thumb=f"{thumb}?maxSize=512",
                     preview=f"{thumb}?maxSize=1024")
            return d
        thumb = f"{self.url}/api/imageinstance/{i['id']}/thumb.png"
        d.update(uploadedFile=None, sample=None, blindedName=None, extension=ext, contentType=i["mime"], depth=1,
                 duration=1, channels=1, extrinsicChannels=3, physicalSizeX=i["physical_size"],
                 physicalSizeY=i["physical_size"], physicalSizeZ=None, fps=None, zoom=i["max_zoom"],
                 tileSize=imaging.TILE_SIZE, bitPerSample=8, samplePerPixel=3, colorspace=None, inReview=False,
                 thumb=f"{thumb}?maxSize=512", preview=f"{thumb}?maxSize=1024", macroURL=None)
        return d

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
        d = {"id": a["id"], "class": self._annotation_class(a),
             "created": ts(a["created"]), "updated": ts(a["updated"]), "deleted": None, "slice": a["slice"],
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
            d.update(id=a["id"], **{"class": self._annotation_class(a)})
        if "meta" in groups:
            d.update(created=ts(a["created"]), updated=ts(a["updated"]), image=a["image"], slice=a["slice"],
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

    def attached_file_json(self, f: dict) -> dict:
        return {"id": f["id"], "class": self._class("attachedfile"), "created": ts(f["created"]), "updated": None,
                "deleted": None, "domainClassName": f["domain_class"], "domainIdent": f["domain_ident"],
                "filename": f["filename"], "key": f["key"], "url": f"{self.url}/api/attachedfile/{f['id']}/download"}

    def property_json(self, p: dict) -> dict:
        return {"id": p["id"], "class": self._class("property"), "created": ts(p["created"]), "updated": None,
                "deleted": None, "domainClassName": p["domain_class"], "domainIdent": p["domain_ident"],
                "key": p["key"], "value": p["value"]}

    # ------------------------------------------------------------------ server / users -----------
    def ping(self, req: Request) -> Response:
        """Grails: alive, authenticated, version, serverURL, serverID (+ user); Spring and monorepo:
        no ``authenticated`` and no user."""
        body = {"alive": True, "version": self.profile.version, "serverURL": self.url,
                "serverID": "cytomine-test-server"}
        if self.profile.legacy:
            body.update(authenticated=req.user is not None, user=req.user["id"] if req.user else None)
        return json_response(body)

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
        if self.profile.repository and self.store.get("projects", ident) is None:
            raise HttpError(404, f"Unable to find project with id: {ident}", html=True)
        return json_response(self.project_json(self._require("projects", ident, "Project")))

    @route("GET", r"/api/ontology\.json")
    def list_ontologies(self, req: Request) -> Response:
        rows = self.store.all("SELECT * FROM ontologies ORDER BY id")
        return json_response(paginate([self.ontology_json(o) for o in rows], req))

    @route("GET", r"/api/ontology/(?P<ident>\d+)\.json")
    def get_ontology(self, req: Request, ident: str) -> Response:
        return json_response(self.ontology_json(self._require("ontologies", ident, "Ontology")))

    def _terms(self, req: Request, rows: list[dict]) -> Response:
        """Old cores: ``max``/``offset`` (0 = all). The monorepo's repository endpoints: Spring
        ``page``/``size`` paging, 20 per page by default, ``max``/``offset`` ignored."""
        items = [self.term_json(t) for t in rows]
        if not self.profile.repository:
            return json_response(paginate(items, req))
        size = req.int_param("size", 20) or 20
        page = req.int_param("page", 0) or 0
        return json_response({"collection": items[page * size:(page + 1) * size], "offset": page * size,
                              "perPage": size, "size": len(items), "totalPages": -(-len(items) // size)})

    def _term(self, ident: str) -> dict:
        row = self.store.get("terms", ident)
        if row is None and self.profile.repository:  # ResponseStatusException -> the error page
            raise HttpError(404, f"Unable to find term with id: {ident}", html=True)
        return self._require("terms", ident, "Term")

    @route("GET", r"/api/term\.json")
    def list_terms(self, req: Request) -> Response:
        return self._terms(req, self.store.all("SELECT * FROM terms ORDER BY id"))

    @route("GET", r"/api/term/(?P<ident>\d+)\.json")
    def get_term(self, req: Request, ident: str) -> Response:
        return json_response(self.term_json(self._term(ident)))

    @route("GET", r"/api/project/(?P<ident>\d+)/term\.json")
    def project_terms(self, req: Request, ident: str) -> Response:
        project = self._require("projects", ident, "Project")
        return self._terms(req, self.store.all("SELECT * FROM terms WHERE ontology = ? ORDER BY id",
                                               (project["ontology"],)))

    @route("GET", r"/api/ontology/(?P<ident>\d+)/term\.json")
    def ontology_terms(self, req: Request, ident: str) -> Response:
        self._require("ontologies", ident, "Ontology")
        return self._terms(req, self.store.all("SELECT * FROM terms WHERE ontology = ? ORDER BY id", (int(ident),)))

    # ------------------------------------------------------------------ App Engine ---------------
    @route("GET", r"/api/app-engine/tasks")
    @needs("app_engine")
    def app_engine_tasks(self, req: Request) -> Response:
        """The core's App Engine proxy (Spring 5.1+, monorepo): the task list (no task is modelled)."""
        return json_response([])

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
        max_size = req.int_param("maxSize")  # every core: maxSize wins, else zoom, else full resolution
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
                                              algo=bool(user["algo"]) and self.profile.legacy,
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
        if self.profile.status_in_body:
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
        return {"id": row_id, "class": self._class("annotationterm" if a["kind"] == "user" else "algoannotationterm"),
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

    # ------------------------------------------------------------------ domains: files, properties
    _DOMAIN_TABLES: ClassVar[dict[str, str]] = {"project": "projects", "imageinstance": "images",
                                                "userannotation": "annotations",
                      "algoannotation": "annotations", "annotation": "annotations", "annotationdomain": "annotations",
                      "job": "jobs", "software": "software", "user": "users", "userjob": "users", "secuser": "users",
                      "term": "terms", "ontology": "ontologies", "attachedfile": "attached_files"}

    def resolve_domain(self, class_name: str, ident: Any) -> tuple[str, int]:
        """(normalised kind, id) of an existing domain object named by this core's class names
        (Grails ``be.cytomine.processing.Job``, Spring ``be.cytomine.domain.processing.Job``), or 404."""
        simple = str(class_name).rsplit(".", 1)[-1].lower()
        foreign = "." in str(class_name) and class_name not in {self._class(key) for key in CLASS}
        table = None if foreign and simple != "annotationdomain" else self._DOMAIN_TABLES.get(simple)
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
        # every core keeps the file name only (commons-fileupload / Spring strip the directories)
        filename = os.path.basename((req.param("filename") or part["filename"] or "file").replace("\\", "/"))
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
            return self._annotation_class(a)
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
