"""The built wheel carries its templates: an installed snpvirt renders without the checkout."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, GOLDEN, ROOT, without_example_launch_files


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (path,) = out.glob("snpvirt-*.whl")
    return path


def test_wheel_contains_the_templates(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "snpvirt/templates/domain.xml.j2" in names
    assert any(n.endswith("entry_points.txt") for n in names)


def test_installed_wheel_renders_an_example_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    # Dependencies (libvirt-python is compiled) come from the project's venv through a .pth line;
    # .pth files inside that directory are not processed, so the checkout's editable snpvirt stays out.
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "zz_project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    where = subprocess.run([str(python), "-c", "import snpvirt.domain.render as r; print(r.__file__); print(r.template_dir())"],
                           capture_output=True, text=True, cwd=tmp_path)
    module_file, templates = where.stdout.split()
    assert module_file.startswith(str(venv)) and templates.startswith(str(venv)), where.stdout + where.stderr

    spec = tmp_path / "web-01.toml"
    spec.write_text((EXAMPLES / "web-01.toml").read_text())
    # As on a machine without the example's launch files, which is what the golden records.
    rendered = subprocess.run(without_example_launch_files([str(venv / "bin" / "snpvirt"), "render", str(spec)]),
                              capture_output=True, text=True, cwd=tmp_path)
    assert rendered.returncode == 0, rendered.stderr
    assert rendered.stdout == (GOLDEN / "web-01.xml").read_text()
