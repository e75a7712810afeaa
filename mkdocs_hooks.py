"""mkdocs hooks: repository links, and Sphinx roles in docstrings.

Pages under ``docs/`` link to files elsewhere in the repository (``../tests/test_wal.py``
names the test that checks a promise). Those links work where the Markdown is read in the
repository, but the files are outside mkdocs' ``docs_dir``, so the built site would have
broken links and ``mkdocs build --strict`` would fail. These hooks copy each such file
into the site under ``_repo/`` and point the link there, so that every link still gets
checked and still works.

The docstrings use Sphinx roles (``:class:`~litepool.PoolTimeout```), which Markdown
renders literally; ``on_page_content`` turns each into inline code, linked to the
symbol's entry when it is on the same page (the API reference).

Defaults written as module constants (``readers: int = DEFAULT_READERS``,
``pool_size: int = _DEFAULT_POOL_SIZE``) would show the constant's name in the API
reference, a private one at that; :class:`ConstantDefaults`, a griffe extension that
``mkdocs.yml`` loads into mkdocstrings, shows the constant's value instead.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

import griffe
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

PREFIX = "_repo"
_LINK = re.compile(r"\]\(([^)\s#]+)(#[^)\s]*)?\)")
_ROLE = re.compile(r":(?:class|meth|func|data|attr|exc|mod|obj):<code>(~?)([\w.]+)</code>")
_ID = re.compile(r'id="([\w.]+)"')


def _repository_file(config: MkDocsConfig, page_src_uri: str, target: str) -> str | None:
    """The repository-relative path of ``target`` if it is a file outside docs_dir."""
    if "://" in target or target.startswith(("/", "mailto:")):
        return None
    docs_dir = Path(config.docs_dir).resolve()
    root = Path(config.config_file_path).resolve().parent
    resolved = (docs_dir / page_src_uri).parent.joinpath(target).resolve()
    if resolved.is_relative_to(docs_dir) or not resolved.is_relative_to(root):
        return None
    if not resolved.is_file():
        return None
    return resolved.relative_to(root).as_posix()


def on_files(files: Files, config: MkDocsConfig, **kwargs: Any) -> Files:
    root = Path(config.config_file_path).resolve().parent
    for page_file in list(files.documentation_pages()):
        assert page_file.abs_src_path is not None
        text = Path(page_file.abs_src_path).read_text(encoding="utf-8")
        for target, _anchor in _LINK.findall(text):
            path = _repository_file(config, page_file.src_uri, target)
            if path is not None and files.get_file_from_path(f"{PREFIX}/{path}") is None:
                files.append(
                    File.generated(config, f"{PREFIX}/{path}", abs_src_path=str(root / path))
                )
    return files


def on_page_markdown(
    markdown: str, page: Page, config: MkDocsConfig, files: Files, **kwargs: Any
) -> str:
    src_uri = page.file.src_uri

    def retarget(match: re.Match[str]) -> str:
        path = _repository_file(config, src_uri, match[1])
        if path is None:
            return match[0]
        link = posixpath.relpath(f"{PREFIX}/{path}", posixpath.dirname(src_uri) or ".")
        return f"]({link}{match[2] or ''})"

    return _LINK.sub(retarget, markdown)


def on_page_content(
    html: str, page: Page, config: MkDocsConfig, files: Files, **kwargs: Any
) -> str:
    ids = set(_ID.findall(html))

    def render(match: re.Match[str]) -> str:
        name = match[2]
        text = name.rsplit(".", 1)[-1] if match[1] else name
        for anchor in (name, f"litepool.{name}"):
            if anchor in ids:
                return f'<a href="#{anchor}"><code>{text}</code></a>'
        return f"<code>{text}</code>"

    return _ROLE.sub(render, html)


class ConstantDefaults(griffe.Extension):
    """Show a parameter's default as the value of the constant it names.

    Only names of attributes of the package whose value is known from the source are
    replaced (``4``, ``30.0``, ``64 * 1024 * 1024``); anything else is left as written.
    """

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        for function in _functions(pkg):
            for parameter in function.parameters:
                default = parameter.default
                if not isinstance(default, griffe.ExprName):
                    continue
                try:
                    constant = loader.modules_collection[default.canonical_path]
                except (KeyError, ValueError):
                    continue
                if constant.is_attribute and constant.value is not None:
                    parameter.default = constant.value


def _functions(obj: griffe.Object) -> list[griffe.Function]:
    """Every function and method defined in ``obj`` and below it (no aliases)."""
    found: list[griffe.Function] = []
    for member in obj.members.values():
        if member.is_alias:
            continue
        if isinstance(member, griffe.Function):
            found.append(member)
        elif isinstance(member, griffe.Module | griffe.Class):
            found.extend(_functions(member))
    return found
