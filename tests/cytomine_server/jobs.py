"""The Grails core's software and job API (legacy profile only; the Spring and monorepo cores have
none), plus what the software router and the core do around a job run:

* ``register_software(descriptor, version)``: the router's ``SoftwareManager.installSoftware`` --
  execute command ``<type> run <image name>-<version>.simg <command-line>``, one parameter per
  input (index 100, 200, ...) with ``@ID``/``@id`` expanded in its value key and flag;
* ``launch_job(project, software, values)``: the web UI creating the job with its parameters, then
  ``JobRuntimeService.execute``: ``initJob`` fills the server-set parameters (host, the job user's
  keys, software and project ids) and ``getCommandJobWithArgs`` replaces each value key by
  ``<flag> <value>`` and splits the command on spaces.

Job updates follow ``Job.insertDataIntoDomain``: a PUT replaces the job, so a missing ``status``
or ``progress`` becomes 0, and ``project`` and ``software`` are mandatory.
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

from .http import HttpError, Request, Response, bad_request, json_response, needs, paginate, respond_command, route, ts
from .store import now_ms

#: The five connection parameters every Cytomine app descriptor declares (set by the server).
CONNECTION_PARAMETERS = (("cytomine_host", "String"), ("cytomine_public_key", "String"),
                         ("cytomine_private_key", "String"), ("cytomine_id_project", "Number"),
                         ("cytomine_id_software", "Number"))
#: Job status codes (``Job``): 0 NOTLAUNCH ... 8 KILLED.
JOB_STATUS = {0: "NOTLAUNCH", 1: "INQUEUE", 2: "RUNNING", 3: "SUCCESS", 4: "FAILED", 5: "INDETERMINATE",
              6: "WAIT", 7: "PREVIEWED", 8: "KILLED"}
KEY_NAMES = ("PUBLICKEY", "CYTOMINEPUBLICKEY", "PRIVATEKEY", "CYTOMINEPRIVATEKEY")
#: initJob: server-set parameter names (upper-cased, "_" removed) -> what fills them
SERVER_SET = {("HOST", "CYTOMINEHOST"): "host", ("PUBLICKEY", "CYTOMINEPUBLICKEY"): "public",
              ("PRIVATEKEY", "CYTOMINEPRIVATEKEY"): "private", ("IDSOFTWARE", "CYTOMINEIDSOFTWARE"): "software",
              ("IDPROJECT", "CYTOMINEIDPROJECT"): "project"}


def _expand(value: Any, ident: str) -> str | None:
    return None if value is None else str(value).replace("@ID", ident.upper()).replace("@id", ident)


class JobApi:
    """Mixed into the server (needs ``store``, ``url``, ``profile``, ``_require``, ``_class``)."""

    # ------------------------------------------------------------------ seeding --------------------
    def add_software(self, name: str, parameters: Iterable[Any] = (), *, version: str = "1.0.0",
                     connection_parameters: bool = True) -> int:
        """A software. ``parameters``: dicts with ``name``, ``type`` (String, Number, Boolean, Domain,
        ListDomain, Date), optional ``default``, ``required``, ``set_by_server``, ``uri``,
        ``uri_print``, ``uri_sort`` -- or ``(name, type[, default])`` tuples. The five ``cytomine_*``
        connection parameters (set by server) come first unless disabled."""
        self._require_jobs()
        specs: list[dict] = []
        if connection_parameters:
            specs += [{"name": n, "type": t, "required": True, "set_by_server": True} for n, t in CONNECTION_PARAMETERS]
        for p in parameters:
            if isinstance(p, dict):
                specs.append(dict(p))
            else:
                name_, type_, *rest = p
                specs.append({"name": name_, "type": type_, "default": rest[0] if rest else None})
        command = " ".join(f"[{p['name'].upper()}]" for p in specs)
        return self._insert_software(name, version, command, None, specs)

    def register_software(self, descriptor: Mapping[str, Any], version: str) -> int:
        """The software the router registers from ``descriptor`` (descriptor.json) at ``version``."""
        self._require_jobs()
        image = descriptor["container-image"]
        simg = f"{image['image'].split('/', 1)[-1]}-{version}.simg"
        command = f"{image['type']} run {simg} {descriptor['command-line']}"
        pulling = f"singularity pull --name {simg} docker://{image['image']}:{version}"
        specs = [{"name": item["id"], "type": item["type"],
                  "human_name": _expand(item.get("name") or "@id", item["id"]), "default": item.get("default-value"),
                  "required": not item.get("optional", False),
                  "set_by_server": item.get("set-by-server", False),
                  "server_parameter": item.get("server-parameter", False),
                  "value_key": _expand(item.get("value-key") or "[@ID]", item["id"]),
                  "command_line_flag": _expand(item.get("command-line-flag") or "", item["id"]),
                  "uri": item.get("uri"), "uri_print": item.get("uri-print-attribute"),
                  "uri_sort": item.get("uri-sort-attribute")} for item in descriptor["inputs"]]
        return self._insert_software(descriptor["name"], version, command, pulling, specs)

    def _insert_software(self, name: str, version: str, command: str, pulling: str | None, specs: list[dict]) -> int:
        sid = self.store.insert("software", name=name, version=version, execute_command=command,
                                pulling_command=pulling, created=now_ms())
        for index, p in enumerate(specs):
            default = p.get("default")
            if isinstance(default, bool):
                default = str(default).lower()
            self.store.insert(
                "software_parameters", software=sid, name=p["name"], type=p.get("type", "String"),
                default_value=None if default is None else str(default), required=int(bool(p.get("required"))),
                set_by_server=int(bool(p.get("set_by_server"))), server_parameter=int(bool(p.get("server_parameter"))),
                idx=(index + 1) * 100, human_name=p.get("human_name") or p["name"],
                value_key=p.get("value_key") or f"[{p['name'].upper()}]",
                command_line_flag=p.get("command_line_flag", f"--{p['name']}"), uri=p.get("uri"),
                uri_print=p.get("uri_print"), uri_sort=p.get("uri_sort"), created=now_ms())
        return sid

    def add_job(self, project: int, software: int, user: int | None = None) -> tuple[int, int, str, str]:
        """A job as ``POST /api/job.json`` makes it: (job id, algo user id, public key, private key)."""
        self._require_jobs()
        return self.create_job(project, software, user if user is not None else self.user_id)

    def launch_job(self, project: int, software: int, values: Mapping[str, Any],
                   user: int | None = None) -> tuple[int, int, list[str]]:
        """The UI's run of ``software``: the job and its parameters (``values`` by name), then the
        core's execute: server-set parameters filled, the command words the router runs. Returns
        (job id, job user id, command words)."""
        job, user_job, public, private = self.add_job(project, software, user)
        params = {p["name"]: p for p in self.store.all("SELECT * FROM software_parameters WHERE software = ?",
                                                        (software,))}
        for name, value in values.items():
            self.store.insert("job_parameters", job=job, software_parameter=params[name]["id"], value=str(value),
                              created=now_ms())
        filled = {"host": self.url, "public": public, "private": private, "software": software, "project": project}
        for p in params.values():
            key = p["name"].upper().replace("_", "")
            for names, what in SERVER_SET.items():
                if p["set_by_server"] and key in names:
                    self.store.insert("job_parameters", job=job, software_parameter=p["id"], value=str(filled[what]),
                                      created=now_ms())
        self.store.execute("UPDATE jobs SET status = 1 WHERE id = ?", (job,))  # the router queues it
        return job, user_job, self._command(job, software)

    def _command(self, job: int, software: int) -> list[str]:
        """``getCommandJobWithArgs``: every non-server parameter with a value replaces its value key."""
        command = self.store.get("software", software)["execute_command"]
        rows = self.store.all("SELECT * FROM software_parameters WHERE software = ? AND server_parameter = 0 "
                              "ORDER BY idx", (software,))
        for p in rows:
            given = self.store.one("SELECT value FROM job_parameters WHERE job = ? AND software_parameter = ?",
                                   (job, p["id"]))
            value = given["value"] if given else p["default_value"]
            if not value:
                if p["required"] and given is None:
                    raise ValueError(f"Argument {p['name']} is required !")
                continue
            flag = p["command_line_flag"] or ""
            command = re.sub(re.escape(p["value_key"]), (flag + " " if flag else "") + value.replace("\\", "\\\\"),
                             command)
        return command.split(" ")

    def _require_jobs(self) -> None:
        if not self.profile.jobs:
            raise ValueError(f"the {self.profile.name} core has no software/job API")

    def create_job(self, project: int, software: int, creator: int) -> tuple[int, int, str, str]:
        """Create a job and its algo user ("user job") with its own key pair."""
        number = self.store.one("SELECT COUNT(*) n FROM jobs WHERE software = ? AND project = ?",
                                (software, project))["n"] + 1
        name = self.store.get("software", software)["name"]
        job_id = self.store.new_id()
        user_id, public, private = self.store.add_user(
            f"{name}{number}_{time.strftime('%Y%m%d%H%M%S')}", algo=True, job=job_id, creator=creator)
        stamp = now_ms()
        self.store.insert("jobs", id=job_id, software=software, project=project, user_job=user_id, creator=creator,
                          number=number, status=0, progress=0, status_comment=None, created=stamp, updated=stamp)
        return job_id, user_id, public, private

    # ------------------------------------------------------------------ views ----------------------
    def software_parameter_json(self, p: dict) -> dict:
        return {"id": p["id"], "class": self._class("softwareparameter"), "created": ts(p["created"]),
                "updated": None, "deleted": None, "name": p["name"], "humanName": p["human_name"], "type": p["type"],
                "defaultParamValue": p["default_value"], "required": bool(p["required"]), "index": p["idx"],
                "setByServer": bool(p["set_by_server"]), "serverParameter": bool(p["server_parameter"]),
                "uri": p["uri"], "uriPrintAttribut": p["uri_print"], "uriSortAttribut": p["uri_sort"],
                "software": p["software"], "valueKey": p["value_key"], "commandLineFlag": p["command_line_flag"]}

    def software_json(self, s: dict) -> dict:
        params = self.store.all("SELECT * FROM software_parameters WHERE software = ? ORDER BY idx, id", (s["id"],))
        n_jobs = self.store.one("SELECT COUNT(*) n FROM jobs WHERE software = ?", (s["id"],))["n"]
        return {"id": s["id"], "class": self._class("software"), "created": ts(s["created"]), "updated": None,
                "deleted": None, "name": s["name"], "fullName": f"{s['name']} ({s['version']})",
                "softwareVersion": s["version"], "executeCommand": s["execute_command"],
                "pullingCommand": s["pulling_command"], "executable": bool(s["execute_command"]),
                "deprecated": False, "numberOfJob": n_jobs,
                "parameters": [self.software_parameter_json(p) for p in params]}

    def job_parameter_json(self, jp: dict) -> dict:
        sp = self.store.get("software_parameters", jp["software_parameter"]) or {}
        value = jp["value"]
        if str(sp.get("name", "")).upper().replace("_", "") in KEY_NAMES:  # Job.parameters() hides the keys
            value = "*********************"
        return {"id": jp["id"], "class": self._class("jobparameter"), "created": ts(jp["created"]), "updated": None,
                "deleted": None, "job": jp["job"], "softwareParameter": jp["software_parameter"], "value": value,
                "name": sp.get("name"), "humanName": sp.get("human_name"), "type": sp.get("type"),
                "index": sp.get("idx"), "uri": sp.get("uri"), "uriPrintAttribut": sp.get("uri_print"),
                "uriSortAttribut": sp.get("uri_sort")}

    def job_json(self, j: dict) -> dict:
        """``Job.getDataFromDomain``."""
        software = self.store.get("software", j["software"])
        creator = self.store.get("users", j["creator"])
        params = self.store.all("SELECT * FROM job_parameters WHERE job = ? ORDER BY id", (j["id"],))
        return {"id": j["id"], "class": self._class("job"), "created": ts(j["created"]), "updated": ts(j["updated"]),
                "deleted": None, "algoType": "job", "progress": j["progress"], "status": j["status"],
                "number": j["number"], "statusComment": j["status_comment"], "project": j["project"],
                "processingServer": None, "software": j["software"],
                "softwareName": software["name"] if software else None, "rate": None, "dataDeleted": False,
                "username": creator["username"] if creator else None, "userJob": j["user_job"],
                "jobParameters": [self.job_parameter_json(p) for p in params]}

    # ------------------------------------------------------------------ routes ---------------------
    @route("GET", r"/api/software\.json")
    @needs("jobs")
    def list_software(self, req: Request) -> Response:
        rows = self.store.all("SELECT * FROM software ORDER BY id")
        return json_response(paginate([self.software_json(s) for s in rows], req))

    @route("GET", r"/api/software/(?P<ident>\d+)\.json")
    @needs("jobs")
    def get_software(self, req: Request, ident: str) -> Response:
        return json_response(self.software_json(self._require("software", ident, "Software")))

    @route("GET", r"/api/software/(?P<ident>\d+)/(?:software_parameter|parameter)\.json")
    @needs("jobs")
    def software_parameters(self, req: Request, ident: str) -> Response:
        self._require("software", ident, "Software")
        rows = self.store.all("SELECT * FROM software_parameters WHERE software = ? ORDER BY idx, id", (int(ident),))
        if not req.bool_param("withSetByServer"):
            rows = [p for p in rows if not p["set_by_server"]]
        return json_response(paginate([self.software_parameter_json(p) for p in rows], req))

    @route("GET", r"/api/softwareparameter/(?P<ident>\d+)\.json")
    @needs("jobs")
    def get_software_parameter(self, req: Request, ident: str) -> Response:
        return json_response(self.software_parameter_json(
            self._require("software_parameters", ident, "SoftwareParameter")))

    @route("POST", r"/api/job\.json")
    @needs("jobs")
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

    @route("GET", r"/api/job\.json")
    @needs("jobs")
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
    @needs("jobs")
    def get_job(self, req: Request, ident: str) -> Response:
        return json_response(self.job_json(self._require("jobs", ident, "Job")))

    @route("PUT", r"/api/job/(?P<ident>\d+)\.json")
    @needs("jobs")
    def update_job(self, req: Request, ident: str) -> Response:
        job = self._require("jobs", ident, "Job")
        if not (req.user["admin"] or req.user["id"] in (job["user_job"], job["creator"])):
            raise HttpError(403, "You don't have the right to read or modify this resource!")
        data = req.json()
        if not isinstance(data, dict):
            raise bad_request("Json not valid")
        status, progress, comment = self._job_fields(data)
        self.store.execute("UPDATE jobs SET status = ?, progress = ?, status_comment = ?, updated = ? WHERE id = ?",
                           (status, progress, comment, now_ms(), job["id"]))
        self.store.record_job_update(job["id"], status, progress, comment, req.user["id"], data)
        return respond_command("job", self.job_json(self.store.get("jobs", job["id"])), "Edit", "Job")

    def _job_fields(self, data: dict) -> tuple[int, int, str | None]:
        """``Job.insertDataIntoDomain`` + constraints: the whole object, absent numbers are 0."""
        for name, domain, table in (("project", "Project", "projects"), ("software", "Software", "software")):
            if data.get(name) is None or self.store.get(table, data.get(name)) is None:
                raise bad_request(f"{domain} {data.get(name)} not found: the job's {name} is mandatory")
        try:
            status, progress = int(data.get("status") or 0), int(data.get("progress") or 0)
        except (TypeError, ValueError):
            raise bad_request("Job status and progress must be numbers") from None
        if status not in JOB_STATUS:
            raise bad_request(f"Property status of class Job with value [{status}] does not fall within the valid "
                              "range from [0] to [8]")
        if not 0 <= progress <= 100:
            raise bad_request(f"Property progress of class Job with value [{progress}] "
                              "does not fall within the valid range from [0] to [100]")
        comment = data.get("statusComment")
        if comment is not None and len(str(comment)) > 255:
            raise bad_request("Property statusComment of class Job exceeds the maximum size of [255]")
        return status, progress, comment

    @route("POST", r"/api/jobparameter\.json")
    @needs("jobs")
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
    @needs("jobs")
    def list_job_parameters(self, req: Request, ident: str) -> Response:
        self._require("jobs", ident, "Job")
        rows = self.store.all("SELECT * FROM job_parameters WHERE job = ? ORDER BY id", (int(ident),))
        return json_response(paginate([self.job_parameter_json(p) for p in rows], req))

    @route("GET", r"/api/jobparameter/(?P<ident>\d+)\.json")
    @needs("jobs")
    def get_job_parameter(self, req: Request, ident: str) -> Response:
        return json_response(self.job_parameter_json(self._require("job_parameters", ident, "JobParameter")))
