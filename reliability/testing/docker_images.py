"""Images for the docker stand-in: references, the shared registry, pulls.

The registry is ``registry.json`` in the state directory (``{"reachable": bool, "images":
{"repo:tag": "sha256:..."}}``); a node's pulled images are ``docker.images`` in its
document. Output and errors are the daemon's (``manifest for X not found``, the registry
timeout). Standard library only.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from reliability.testing import state
from reliability.testing.state import Document as Doc


class DockerError(Exception):
    """A failed command: ``text`` goes to stderr and the CLI exits with ``code``."""

    def __init__(self, text: str, code: int = 1) -> None:
        super().__init__(text)
        self.text, self.code = text, code


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``repo[:tag][@digest]`` -> (repo, tag, digest); the tag defaults to latest."""
    name, _, digest = ref.partition("@")
    repo, tag = name, None
    if ":" in name.rsplit("/", 1)[-1]:
        repo, tag = name.rsplit(":", 1)
    return repo, tag or (None if digest else "latest"), digest or None


def qualified(repo: str) -> str:
    first = repo.split("/", 1)[0]
    if "/" in repo and ("." in first or ":" in first or first == "localhost"):
        return repo
    return "docker.io/" + (repo if "/" in repo else f"library/{repo}")


def image_id(digest: str) -> str:
    return "sha256:" + hashlib.sha256(f"image:{digest}".encode()).hexdigest()


def _registry_digest(root: Path, ref: str) -> str:
    registry = state.read_json(root / "registry.json")
    repo, tag, digest = parse_ref(ref)
    if not registry.get("reachable", True):
        host = qualified(repo).split("/", 1)[0].replace("docker.io", "registry-1.docker.io")
        raise DockerError(
            f'Error response from daemon: Get "https://{host}/v2/": net/http: request canceled '
            "while waiting for connection (Client.Timeout exceeded while awaiting headers)"
        )
    for known, known_digest in registry.get("images", {}).items():
        known_repo, known_tag, _ = parse_ref(known)
        if known_repo == repo and (known_digest == digest or (not digest and known_tag == tag)):
            return str(known_digest)
    wanted = f"{repo}@{digest}" if digest else f"{repo}:{tag}"
    raise DockerError(
        f"Error response from daemon: manifest for {wanted} not found: "
        "manifest unknown: manifest unknown"
    )


def find_image(doc: Doc, ref: str) -> Doc | None:
    repo, tag, digest = parse_ref(ref)
    for image in doc["docker"]["images"]:
        if ref in (image["id"], image["id"].removeprefix("sha256:")):
            return image
        if image["repo"] == repo and (image["digest"] == digest or tag in image["tags"]):
            return image
    return None


def add_local_image(doc: Doc, ref: str, digest: str) -> Doc:
    """Record ``ref`` as pulled on this node (merging tags of the same digest)."""
    repo, tag, _ = parse_ref(ref)
    for image in doc["docker"]["images"]:
        if tag:
            # A tag names one image: pulling it again moves it to the new digest.
            image["tags"] = [t for t in image["tags"] if image["repo"] != repo or t != tag]
    images = doc["docker"]["images"]
    image = next((i for i in images if i["repo"] == repo and i["digest"] == digest), None)
    if image is None:
        image = {"repo": repo, "tags": [], "digest": digest, "id": image_id(digest)}
        images.append(image)
    if tag and tag not in image["tags"]:
        image["tags"].append(tag)
    return image


def pull(root: Path, node: str, ref: str) -> str:
    digest = _registry_digest(root, ref)
    repo, tag, wanted = parse_ref(ref)
    fresh = state.update_node(root, node, lambda doc: _pull_into(doc, ref, digest))
    shown = f"{repo}@{wanted}" if wanted else f"{repo}:{tag}"
    status = f"Downloaded newer image for {shown}" if fresh else f"Image is up to date for {shown}"
    head = wanted or tag
    return f"{head}: Pulling from {repo}\nDigest: {digest}\nStatus: {status}\n{qualified(shown)}\n"


def _pull_into(doc: Doc, ref: str, digest: str) -> bool:
    known = find_image(doc, ref)
    fresh = known is None or known["digest"] != digest
    add_local_image(doc, ref, digest)
    return fresh
