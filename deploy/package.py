"""`make package`: the Chalice app as a SAM (CloudFormation) template and as Terraform.

    python deploy/package.py [--stage prod] [--out dist] [--skip-lint]

writes OUT/sam (sam.yaml + deployment.zip) and OUT/terraform (chalice.tf.json +
deployment.zip), merges deploy/sam-merge-STAGE.yaml into the SAM template and copies
deploy/terraform/STAGE/*.tf.json beside chalice.tf.json when they exist, runs
cfn-lint on the SAM template and on deploy/resources.yaml, and prints the size of
the Lambda zip. `chalice package` needs a region (AWS_DEFAULT_REGION, default
us-east-1 here) but no AWS credentials or network, except that it downloads the
manylinux wheels of the runtime dependencies from the package index the first
time (then they are cached in .chalice/deployments/).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESOURCES_TEMPLATE = PROJECT / "deploy" / "resources.yaml"


@dataclass
class Package:
    stage: str
    sam_dir: Path
    terraform_dir: Path

    @property
    def sam_template(self) -> Path:
        return self.sam_dir / "sam.yaml"

    @property
    def terraform_file(self) -> Path:
        return self.terraform_dir / "chalice.tf.json"

    @property
    def zip_path(self) -> Path:
        return self.sam_dir / "deployment.zip"

    def zip_size(self) -> int:
        return self.zip_path.stat().st_size

    def unzipped_size(self) -> int:
        with zipfile.ZipFile(self.zip_path) as z:
            return sum(i.file_size for i in z.infolist())


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("AWS_DEFAULT_REGION", env.get("AWS_REGION") or "us-east-1")
    return env


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, cwd=PROJECT, env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])}... failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")


def build(stage: str = "prod", out: Path | str = PROJECT / "dist") -> Package:
    out = Path(out)
    pkg = Package(stage, out / "sam", out / "terraform")
    for d in (pkg.sam_dir, pkg.terraform_dir):
        if d.exists():
            shutil.rmtree(d)
    chalice = str(BIN / "chalice")
    sam = [chalice, "package", "--stage", stage, "--template-format", "yaml"]
    merge = PROJECT / "deploy" / f"sam-merge-{stage}.yaml"
    if merge.exists():
        sam += ["--merge-template", str(merge)]
    _run(sam + [str(pkg.sam_dir)])
    _run([chalice, "package", "--pkg-format", "terraform", "--stage", stage, str(pkg.terraform_dir)])
    extras = PROJECT / "deploy" / "terraform" / stage
    if extras.is_dir():
        for extra in sorted(extras.glob("*.tf.json")):
            shutil.copy2(extra, pkg.terraform_dir / extra.name)
    return pkg


def cfn_lint(*templates: Path) -> subprocess.CompletedProcess:
    """cfn-lint on the templates (its exit code is 0 when nothing is found)."""
    return subprocess.run([str(BIN / "cfn-lint"), *map(str, templates)], cwd=PROJECT, env=_env(),
                          capture_output=True, text=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="prod")
    parser.add_argument("--out", default=str(PROJECT / "dist"))
    parser.add_argument("--skip-lint", action="store_true")
    args = parser.parse_args(argv)
    pkg = build(args.stage, args.out)
    print(f"SAM:       {pkg.sam_dir}/ (sam.yaml, deployment.zip)")
    print(f"Terraform: {pkg.terraform_dir}/ ({', '.join(sorted(p.name for p in pkg.terraform_dir.glob('*.tf.json')))},"
          " deployment.zip)")
    print(f"Lambda zip: {pkg.zip_size() / 1e6:.1f} MB ({pkg.unzipped_size() / 1e6:.1f} MB unzipped)")
    if not args.skip_lint:
        lint = cfn_lint(pkg.sam_template, RESOURCES_TEMPLATE)
        if lint.returncode != 0:
            print(lint.stdout + lint.stderr, file=sys.stderr)
            return 1
        print("cfn-lint: sam.yaml and deploy/resources.yaml pass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
