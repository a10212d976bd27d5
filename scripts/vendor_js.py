"""Copy the chat page's browser libraries from node_modules/ into web/static/vendor/.

The libraries come from the npm registry at install time, pinned by `package-lock.json`
(`npm ci` checks each tarball's integrity hash); nothing is fetched at run time and the page
loads no CDN. `web/static/vendor/` is generated (git-ignored): run this before serving.

    python -m scripts.vendor_js            # copy (node_modules/ must exist)
    python -m scripts.vendor_js --install  # `npm ci` first, then copy
    python -m scripts.vendor_js --check    # exit 1 unless vendor/ is complete and current
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / "node_modules"
VENDOR_DIR = ROOT / "web" / "static" / "vendor"
MANIFEST = "MANIFEST.json"


@dataclass(frozen=True)
class VendoredFile:
    package: str  # npm package name (its folder under node_modules/)
    source: str  # path inside the package
    target: str  # file name under web/static/vendor/


FILES: tuple[VendoredFile, ...] = (
    VendoredFile("marked", "lib/marked.esm.js", "marked.esm.js"),
    VendoredFile("marked", "LICENSE", "LICENSE.marked.txt"),
    VendoredFile("dompurify", "dist/purify.es.mjs", "purify.es.js"),
    VendoredFile("dompurify", "LICENSE", "LICENSE.dompurify.txt"),
    VendoredFile("@highlightjs/cdn-assets", "es/highlight.min.js", "highlight.min.js"),
    VendoredFile("@highlightjs/cdn-assets", "styles/github.min.css", "hljs-github.min.css"),
    VendoredFile(
        "@highlightjs/cdn-assets", "styles/github-dark.min.css", "hljs-github-dark.min.css"
    ),
    VendoredFile("@highlightjs/cdn-assets", "LICENSE", "LICENSE.highlightjs.txt"),
)


def npm_install() -> None:
    """`npm ci`: install exactly what package-lock.json pins (integrity-checked)."""
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit(
            "vendor_js: npm is not installed (Node 20 + npm are needed at install time)"
        )
    cmd = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
    subprocess.run(cmd, cwd=ROOT, check=True)


def _package_version(package: str) -> str:
    meta = json.loads((NODE_MODULES / package / "package.json").read_text(encoding="utf-8"))
    return str(meta["version"])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def expected_manifest() -> dict[str, dict[str, str]]:
    """What vendor/MANIFEST.json should say for the installed node_modules/."""
    missing = [f for f in FILES if not (NODE_MODULES / f.package / f.source).is_file()]
    if missing:
        names = ", ".join(f"{f.package}/{f.source}" for f in missing)
        raise SystemExit(f"vendor_js: missing in node_modules: {names} (run with --install)")
    return {
        f.target: {
            "package": f.package,
            "version": _package_version(f.package),
            "sha256": _sha256(NODE_MODULES / f.package / f.source),
        }
        for f in FILES
    }


def copy_files() -> dict[str, dict[str, str]]:
    manifest = expected_manifest()
    VENDOR_DIR.mkdir(parents=True, exist_ok=True)
    for f in FILES:
        shutil.copyfile(NODE_MODULES / f.package / f.source, VENDOR_DIR / f.target)
    (VENDOR_DIR / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def check() -> list[str]:
    """Problems with web/static/vendor/ as it is on disk (empty list: ready to serve)."""
    problems: list[str] = []
    manifest_path = VENDOR_DIR / MANIFEST
    if not manifest_path.is_file():
        return [f"{manifest_path} is missing: run `python -m scripts.vendor_js --install`"]
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    for f in FILES:
        path = VENDOR_DIR / f.target
        entry = manifest.get(f.target)
        if not path.is_file() or entry is None:
            problems.append(f"{path} is missing")
        elif _sha256(path) != entry["sha256"]:
            problems.append(f"{path} differs from the copied {f.package}@{entry['version']}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true", help="run `npm ci` before copying")
    parser.add_argument("--check", action="store_true", help="only verify web/static/vendor/")
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        for problem in problems:
            print(f"vendor_js: {problem}", file=sys.stderr)
        return 1 if problems else 0
    if args.install:
        npm_install()
    manifest = copy_files()
    versions = sorted({f"{e['package']}@{e['version']}" for e in manifest.values()})
    print(
        f"vendor_js: {len(manifest)} files -> {VENDOR_DIR.relative_to(ROOT)} ({', '.join(versions)})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
