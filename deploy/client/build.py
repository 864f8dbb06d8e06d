"""``make client``: the client as a versioned wheel and as one verified file.

- ``dist/secret_zero_broker-VERSION-py3-none-any.whl``: the ``broker`` package alone
  (standard library only; botocore is the AWS path's one dependency, see docs/client.md);
- ``dist/broker.pyz``: a zipapp (``python3 broker.pyz login ...``) carrying the client and
  what the AWS path needs (botocore, jmespath, python-dateutil, six, urllib3 1.26, pinned
  with hashes in requirements-pyz.txt), trimmed to what it uses: botocore's data files
  are cut to the STS model (web identity and assume-role providers) and the shared
  endpoint files. Runs on Python 3.9 to 3.14, needs no pip. It carries bytecode for
  each Python 3.9-3.14 found on the build machine (PATH, pyenv), which its
  ``__main__`` imports from (zipimport would compile botocore at every start).
  It also carries the broker's own rules engine, copied from the server's code
  (``ENGINE``: ``chalicelib/policy`` and the pure parts of ``chalicelib/methods``), and
  ``tomli`` to read TOML where ``tomllib`` is missing (3.9, 3.10), so ``broker.pyz
  policy check|explain`` need no checkout.

Each file gets ``FILE.sha256`` beside it (``sha256sum -c`` format), and the sums are
printed. The pyz is reproducible: the same inputs and the same interpreters give the
same bytes (fixed file times and order, hash-based bytecode), so anyone can rebuild it
and compare the sum.

    python deploy/client/build.py [--out dist] [--wheels DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipapp
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = Path(__file__).with_name("requirements-pyz.txt")
FIXED_TIME = 1577836800  # 2020-01-01T00:00:00Z: every file in the pyz carries this time
# botocore/data: what the credential chain and SigV4 use; everything else is cut.
BOTOCORE_DATA_KEEP = ("_retry.json", "endpoints.json", "partitions.json", "sdk-default-configuration.json", "sts/")
# The rules engine the pyz carries: the server's own modules, copied as they are (one source).
# Pure: they import each other and the standard library only (tomli where tomllib is
# missing); build_pyz imports them alone under every interpreter and stops if one doesn't.
ENGINE = (
    "chalicelib/__init__.py", "chalicelib/errors.py", "chalicelib/policy/",
    "chalicelib/methods/__init__.py", "chalicelib/methods/base.py",
    "chalicelib/methods/aws/__init__.py", "chalicelib/methods/aws/arn.py", "chalicelib/methods/aws/match.py",
    "chalicelib/methods/aws/model.py",
    "chalicelib/methods/gcp/__init__.py", "chalicelib/methods/gcp/match.py", "chalicelib/methods/gcp/model.py",
)
# Run by each interpreter on the staged tree alone (-I, no site-packages): the engine loads the
# shipped rules and decides with them.
ENGINE_CHECK = """
import sys
sys.path[:0] = [sys.argv[1]]
import chalicelib.methods, chalicelib.policy
rules = chalicelib.policy.load_rules(sys.argv[2])
facts = chalicelib.methods.facts_from_dict({"principal_arn": "arn:aws:sts::123456789012:assumed-role/x/y"})
rules.explain(facts)
stray = sorted(m for m in sys.modules if m.startswith("chalicelib.") and not m.startswith(
    ("chalicelib.policy", "chalicelib.methods", "chalicelib.errors")))
assert not stray, stray
"""
MAIN = '''# The single-file secret-zero broker client: python3 broker.pyz login ...
import importlib.machinery
import importlib.util
import marshal
import os
import sys
import zipfile

if sys.version_info < (3, 9):
    sys.exit("broker.pyz needs Python 3.9 or later")


class ArchiveBytecode:
    """Imports this archive's modules from the bytecode compiled at build time for the
    running Python (__pycache__/NAME.TAG.pyc inside the archive), as the file system's
    importer does: zipimport alone would compile every module from source at each start
    (seconds for botocore). No bytecode for this Python: zipimport compiles the source."""

    def __init__(self, archive):
        self.archive = archive  # botocore reads its data files from here (broker/clouds/botocore_session.py)
        self._zip = zipfile.ZipFile(archive)
        self._names = set(self._zip.namelist())
        self._tag = sys.implementation.cache_tag

    def find_spec(self, fullname, path=None, target=None):
        base = fullname.replace(".", "/")
        for stem, package in ((base + "/__init__", True), (base, False)):
            folder, _, name = stem.rpartition("/")
            pyc = (folder + "/" if folder else "") + "__pycache__/" + name + "." + str(self._tag) + ".pyc"
            if pyc not in self._names or stem + ".py" not in self._names:
                continue
            data = self._zip.read(pyc)
            if data[:4] != importlib.util.MAGIC_NUMBER:
                return None
            spec = importlib.machinery.ModuleSpec(fullname, self, origin=os.path.join(self.archive, stem + ".py"),
                                                  is_package=package, loader_state=data[16:])
            if package:
                spec.submodule_search_locations = [os.path.join(self.archive, base)]
            spec.has_location = True
            return spec
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        exec(marshal.loads(module.__spec__.loader_state), module.__dict__)


sys.meta_path.insert(0, ArchiveBytecode(os.path.dirname(os.path.abspath(__file__))))

from broker.cli import main  # noqa: E402

sys.exit(main())
'''
# Compiles every .py of the staged tree to __pycache__/NAME.TAG.pyc for the interpreter that
# runs it: unchecked hash-based bytecode (PEP 552), so it does not depend on file times.
COMPILE = """
import os, py_compile, sys, warnings
warnings.simplefilter("ignore")
root = sys.argv[1]
for folder, dirs, files in os.walk(root):
    dirs.sort()
    for name in sorted(files):
        if name.endswith(".py") and not (folder == root and name == "__main__.py"):
            source = os.path.join(folder, name)
            target = os.path.join(folder, "__pycache__", name[:-3] + "." + sys.implementation.cache_tag + ".pyc")
            py_compile.compile(source, cfile=target, dfile=os.path.relpath(source, root), doraise=True,
                               invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
"""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_sum(path: Path) -> str:
    value = sha256(path)
    path.with_name(path.name + ".sha256").write_text(f"{value}  {path.name}\n")
    print(f"{value}  {path}", flush=True)
    return value


def build_wheel(out: Path) -> Path:
    for old in out.glob("secret_zero_broker-*.whl"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        # A copy without build leftovers, so the wheel holds exactly the broker package.
        src = Path(tmp) / "src"
        shutil.copytree(ROOT / "broker", src / "broker", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(ROOT / name, src / name)
        (src / "docs").mkdir()
        shutil.copy2(ROOT / "docs" / "client.md", src / "docs" / "client.md")
        env = dict(os.environ, SOURCE_DATE_EPOCH=str(FIXED_TIME))
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                        "--wheel-dir", str(out), str(src)], check=True, env=env)
    (wheel,) = out.glob("secret_zero_broker-*.whl")
    return wheel


def fetch_wheels(wheels: Path) -> list:
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--require-hashes", "-r", str(REQUIREMENTS), "--dest", str(wheels)], check=True)
    return sorted(wheels.glob("*.whl"))


def _keep(name: str) -> bool:
    """Whether a file of a dependency's wheel goes into the pyz."""
    if "__pycache__/" in name or name.endswith(".pyc"):
        return False
    if name.startswith("botocore/data/"):
        rest = name[len("botocore/data/"):]
        return any(rest == keep or (keep.endswith("/") and rest.startswith(keep)) for keep in BOTOCORE_DATA_KEEP)
    if ".dist-info/" in name:  # keep the licences and the metadata (what is inside, which version)
        return name.rsplit("/", 1)[-1] in ("METADATA", "LICENSE", "LICENSE.txt", "NOTICE", "LICENSE.rst")
    return True


def interpreters() -> list:
    """The Pythons 3.9 to 3.14 on this machine (PATH, pyenv): one bytecode set each."""
    found = {}
    roots = [os.environ.get("PYENV_ROOT"), os.path.expanduser("~/.pyenv")]
    for minor in range(9, 15):
        candidates = [shutil.which(f"python3.{minor}")]
        for root in filter(None, roots):
            candidates += sorted(Path(root).glob(f"versions/3.{minor}.*/bin/python"))
        for candidate in filter(None, candidates):
            tag = subprocess.run([str(candidate), "-c", "import sys; print(sys.implementation.cache_tag)"],
                                 capture_output=True, text=True).stdout.strip()
            if tag and tag not in found:
                found[tag] = str(candidate)
    return sorted(found.items())


def copy_engine(stage: Path) -> None:
    """The server's rules engine (ENGINE) into the staged tree, as it is in the checkout."""
    for entry in ENGINE:
        source = ROOT / entry
        if entry.endswith("/"):
            for path in sorted(source.glob("*.py")):
                (stage / entry).mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, stage / entry / path.name)
        else:
            (stage / entry).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, stage / entry)


def build_pyz(out: Path, wheels: Path) -> Path:
    target = out / "broker.pyz"
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / "pyz"
        stage.mkdir()
        for wheel in fetch_wheels(wheels):
            with zipfile.ZipFile(wheel) as zf:
                for name in zf.namelist():
                    if not name.endswith("/") and _keep(name):
                        zf.extract(name, stage)
        shutil.copytree(ROOT / "broker", stage / "broker", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        copy_engine(stage)
        (stage / "__main__.py").write_text(MAIN)
        for tag, python in interpreters():
            check = subprocess.run([python, "-I", "-c", ENGINE_CHECK, str(stage), str(ROOT / "policies" / "rules.toml")],
                                   capture_output=True, text=True)
            if check.returncode != 0:
                raise SystemExit(f"the rules engine does not stand alone on {tag} ({python}):\n{check.stderr}")
            subprocess.run([python, "-c", COMPILE, str(stage)], check=True, env=dict(os.environ, PYTHONHASHSEED="0"))
            print(f"bytecode for {tag} ({python})", flush=True)
        for path in stage.rglob("*"):
            os.utime(path, (FIXED_TIME, FIXED_TIME))
        if target.exists():
            target.unlink()
        zipapp.create_archive(stage, target, interpreter="/usr/bin/env python3", compressed=True)
    _make_reproducible(target)
    return target


def _make_reproducible(target: Path) -> None:
    """Rewrite the archive with sorted names and fixed times and permissions."""
    with open(target, "rb") as f:
        shebang = f.readline()
    with zipfile.ZipFile(target) as src:
        entries = sorted((info.filename, src.read(info.filename)) for info in src.infolist())
    tmp = target.with_suffix(".tmp")
    with open(tmp, "wb") as raw:
        raw.write(shebang)
        with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_DEFLATED) as dst:
            for name, data in entries:
                info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                dst.writestr(info, data)
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "dist"), help="output directory (default dist/)")
    parser.add_argument("--wheels", default=str(ROOT / "build" / "pyz-wheels"),
                        help="where the pinned dependency wheels are downloaded (a cache)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wheel = build_wheel(out)
    pyz = build_pyz(out, Path(args.wheels))
    print("SHA-256 (also in FILE.sha256 beside each file):", flush=True)
    for path in (wheel, pyz):
        write_sum(path)
    print(f"{pyz}: {pyz.stat().st_size / 1024:.0f} KiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
