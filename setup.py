"""Packaging for qualiclip, driven by settings.ini (nbdev 2), without pkg_resources.

Requirements are lower bounds; the exact versions of the reproducible environment are in constraints.txt
(`make install` runs `pip install -c constraints.txt -e .[dev]`)."""
from configparser import ConfigParser
from pathlib import Path

import setuptools

here = Path(__file__).parent
if not (here / "settings.ini").is_file():
    raise SystemExit(f"{here / 'settings.ini'} is missing: build from the repository (or an sdist made with MANIFEST.in including settings.ini).")
cfg = ConfigParser(delimiters=["="])
cfg.read(here / "settings.ini")
cfg = cfg["DEFAULT"]


def reqs(key):
    "The requirements a settings.ini key lists, refusing exact pins (they belong in constraints.txt)."
    out = cfg.get(key, "").split()
    pinned = [r for r in out if "==" in r]
    if pinned: raise ValueError(f"settings.ini {key}: exact pins {pinned}; give lower bounds and pin in constraints.txt.")
    return out


def merged(*lists):
    "Requirements of several lists, first occurrence kept, order kept."
    return list(dict.fromkeys(r for l in lists for r in l))


train, explore, shards, onnx = reqs("train_requirements"), reqs("explore_requirements"), reqs("shards_requirements"), reqs("onnx_requirements")
docs = merged(reqs("docs_requirements"), train, explore, shards, onnx)   # the API pages import every module
extras = {"train": train, "explore": explore, "shards": shards, "onnx": onnx, "docs": docs,
          "dev": merged(docs, reqs("dev_requirements"))}
scripts = [s.strip() for s in cfg.get("console_scripts", "").split("\n") if s.strip()]
readme = here / "README.md"
git_url = cfg["git_url"]
py_min = tuple(map(int, cfg["min_python"].split(".")))
statuses = {"1": "Planning", "2": "Pre-Alpha", "3": "Alpha", "4": "Beta", "5": "Production/Stable", "6": "Mature"}

setuptools.setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=readme.read_text(encoding="utf-8") if readme.exists() else cfg["description"],
    long_description_content_type="text/markdown",
    author=cfg["author"],
    author_email=cfg["author_email"],
    license_expression=cfg["license_expression"],   # the code's licence; the authors' released checkpoint is CC BY-NC 4.0
    license_files=["LICENSE"],
    url=git_url,
    project_urls={
        "Homepage": git_url,
        "Documentation": cfg["doc_host"] + cfg["doc_baseurl"],
        "Source": git_url,
        "Issues": git_url + "/issues",
        "Paper": cfg["paper_url"],
        "Original implementation": cfg["upstream_url"],
    },
    keywords=cfg["keywords"].split(),
    classifiers=[
        f"Development Status :: {cfg['status']} - {statuses[cfg['status']]}",
        f"Intended Audience :: {cfg['audience']}",
        "Intended Audience :: Science/Research",
        f"Natural Language :: {cfg['language']}",
        "Operating System :: OS Independent",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        *[f"Programming Language :: Python :: 3.{m}" for m in range(py_min[1], 14)],
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Scientific/Engineering :: Image Recognition",
        "Topic :: Multimedia :: Graphics",
        "Environment :: Console",
        "Environment :: GPU :: NVIDIA CUDA",
        "Framework :: Jupyter",
    ],
    packages=["qualiclip", "qualiclip.configs"],   # configs/ is a data folder (open_clip config JSON), listed so setuptools ships it without warnings
    package_data={"qualiclip.configs": ["*.json"]},
    include_package_data=False,
    install_requires=reqs("requirements"),
    extras_require=extras,
    python_requires=">=" + cfg["min_python"],
    entry_points={"console_scripts": scripts, "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
    zip_safe=False,
)
