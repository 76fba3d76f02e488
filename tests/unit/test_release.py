"""What `sam publish` (Serverless Application Repository) and the organization release need."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent.parent


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_multi_constructor("!", lambda loader, suffix, node: None)


def template() -> dict:
    return yaml.load((ROOT / "template.yaml").read_text(), Loader=_Loader)  # noqa: S506


def test_serverless_repo_metadata_is_complete():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    app = template()["Metadata"]["AWS::ServerlessRepo::Application"]
    for field in (
        "Name",
        "Description",
        "Author",
        "SpdxLicenseId",
        "LicenseUrl",
        "ReadmeUrl",
        "SemanticVersion",
    ):
        assert app.get(field), field
    assert app["SemanticVersion"] == project["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", app["SemanticVersion"])
    assert app["SpdxLicenseId"] == project["license"] == "Apache-2.0"
    assert (ROOT / app["LicenseUrl"]).is_file()
    assert (ROOT / app["ReadmeUrl"]).is_file()
    assert "Apache License" in (ROOT / app["LicenseUrl"]).read_text()[:200]
    assert "Version 2.0" in (ROOT / app["LicenseUrl"]).read_text()[:200]


def test_readme_refers_to_nothing_outside_the_repository():
    readme = (ROOT / "README.md").read_text()
    assert "shared/" not in readme
    for target in re.findall(r"\]\(([^)#]+)\)", readme):
        if target.startswith(("http://", "https://")):
            continue
        assert (ROOT / target).exists(), target


def test_every_event_file_is_described():
    described = (ROOT / "events" / "README.md").read_text()
    for path in (ROOT / "events").glob("*.json"):
        assert f"`{path.name}`" in described, path.name
