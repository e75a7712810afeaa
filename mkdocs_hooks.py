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
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

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
