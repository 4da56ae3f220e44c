"""``runtime.v1.ImageService`` over pypod's image store.

Identity, as the CRI wants it: an image's id is its config digest (``sha256:...``, pypod's image
ID), ``repo_tags`` are its names, ``repo_digests`` the ``repo@manifest-digest`` it was pulled as,
and ``PullImage`` returns the id. Registry mirrors and rewrites (``[[registry]]`` in pypod.toml)
apply to pulls, so ``registry.k8s.io/pause:3.9`` can come from a local registry and still be
called that.
"""

from __future__ import annotations

import base64
import os
import threading
import time

import grpc

from pypod.errors import NotFound, UsageError
from pypod.images import reference
from pypod.images.auth import Credentials

from .proto import cri_pb2 as pb
from .proto import cri_pb2_grpc as pb_grpc
from .service import EngineOwner, Fail, need, rpc


class ImageService(EngineOwner, pb_grpc.ImageServiceServicer):
    def __init__(self, config):
        super().__init__(config)
        self._snapshot_usage: dict[str, tuple[int, int]] = {}  # snapshots never change: measured once
        self._users: dict[str, str] = {}  # image id -> the user part of its config's User
        self._usage_lock = threading.Lock()

    def _image(self, img) -> pb.Image:
        out = pb.Image(id=img.id, repo_tags=list(img.names), repo_digests=list(img.repo_digests),
                       size=img.size, spec=pb.ImageSpec(image=img.id))
        user = self._users.get(img.id)  # an image's config never changes: read it once
        if user is None:
            try:
                user = (self.engine.images.image_config(img).config.get("User") or "").split(":", 1)[0]
            except (OSError, ValueError, UsageError):
                user = ""
            self._users[img.id] = user
        if user.isdigit():
            out.uid.value = int(user)
        elif user:
            out.username = user
        return out

    def _find(self, name: str):
        """The stored image ``name`` means (id, id prefix, tag, name@digest), or None."""
        if not name:
            return None
        try:
            return self.engine.images.resolve(name)
        except (NotFound, UsageError):
            return None

    @rpc
    def ListImages(self, request, context):
        want = request.filter.image.image
        if want:
            img = self._find(want)
            return pb.ListImagesResponse(images=[self._image(img)] if img else [])
        return pb.ListImagesResponse(images=[self._image(i) for i in self.engine.images.list()])

    @rpc
    def ImageStatus(self, request, context):
        name = need(request.image.image, "image.image")
        img = self._find(name)
        if img is None:
            return pb.ImageStatusResponse()  # unknown: no image, and no error
        resp = pb.ImageStatusResponse(image=self._image(img))
        if request.verbose:
            import json

            resp.info["info"] = json.dumps(img.to_json())
        return resp

    @rpc
    def PullImage(self, request, context):
        name = need(request.image.image, "image.image")
        try:
            ref = reference.parse(name)
        except UsageError as e:
            raise Fail(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        auths = _auths(request.auth, self._hosts(ref)) if request.HasField("auth") else None
        img = self.engine.images.pull(name, auths=auths)
        return pb.PullImageResponse(image_ref=img.id)

    def _hosts(self, ref: reference.Reference) -> list[str]:
        """Every host a pull of ``ref`` may contact: the credentials given for the pull go to
        its registry's mirrors and rewritten location too."""
        hosts = [ref.host]
        reg = self.config.registry_for(ref.repository)
        if reg is not None:
            for loc in [reg.location, *(m.location for m in reg.mirrors)]:
                if loc:
                    hosts.append(loc.split("/", 1)[0])
        return hosts

    @rpc
    def RemoveImage(self, request, context):
        name = need(request.image.image, "image.image")
        img = self._find(name)
        if img is None:
            return pb.RemoveImageResponse()  # idempotent
        try:
            # by id: every tag goes; a running container keeps its layers (they are held)
            self.engine.images.remove(img.id, force=True)
        except NotFound:
            pass  # removed by a concurrent call
        return pb.RemoveImageResponse()

    @rpc
    def ImageFsInfo(self, request, context):
        store = self.engine.images
        root = store.config.data_dir
        used = inodes = 0
        blobs = store.content.blobs
        if blobs.is_dir():
            for entry in os.scandir(blobs):
                try:
                    used += entry.stat(follow_symlinks=False).st_blocks * 512
                    inodes += 1
                except FileNotFoundError:
                    pass
        snaps = store.snapshots.root
        if snaps.is_dir():
            for entry in os.scandir(snaps):
                if entry.name.startswith("."):
                    continue
                b, n = self._usage(entry.path)
                used += b
                inodes += n
        usage = pb.FilesystemUsage(timestamp=time.time_ns(), fs_id=pb.FilesystemIdentifier(mountpoint=str(root)))
        usage.used_bytes.value, usage.inodes_used.value = used, inodes
        return pb.ImageFsInfoResponse(image_filesystems=[usage], container_filesystems=[usage])

    def _usage(self, path: str) -> tuple[int, int]:
        with self._usage_lock:
            got = self._snapshot_usage.get(path)
        if got is None:
            got = _du(path)
            with self._usage_lock:
                self._snapshot_usage[path] = got
        return got


def _du(top: str) -> tuple[int, int]:
    used = inodes = 0
    stack = [top]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                used += st.st_blocks * 512
                inodes += 1
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
    return used, inodes


def _auths(auth: pb.AuthConfig, hosts: list[str]) -> dict[str, Credentials] | None:
    """Credentials for one pull from the CRI's AuthConfig (user and password, or ``auth``: base64
    of ``user:password``), for every host the pull may contact. Identity and registry tokens are
    not supported by pypod's registry client: such a pull goes anonymous."""
    user, password = auth.username, auth.password
    if auth.auth and not user:
        try:
            user, _, password = base64.b64decode(auth.auth, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise Fail(grpc.StatusCode.INVALID_ARGUMENT, "auth.auth is not base64 of user:password") from None
    if not user:
        return None
    if auth.server_address:
        server = auth.server_address.removeprefix("https://").removeprefix("http://").split("/", 1)[0]
        hosts = [*hosts, server]
    return {h: (user, password) for h in hosts if h}
