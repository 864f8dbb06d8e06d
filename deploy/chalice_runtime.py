"""Chalice's CLI with the Lambda runtime fixed: `python deploy/chalice_runtime.py package ...`.

Chalice takes the function's runtime from the Python that runs it (chalice/config.py,
`lambda_python_version`: "We may open this up to configuration later"), and downloads the
manylinux wheels of that version for the zip. The packages need python3.12 or later for
SnapStart (docs/operations.md) while the project's virtualenv may be older. This runs
Chalice with two things set for RUNTIME:

- `lambda_python_version`: the template's Runtime, and the ABI (cp312) Chalice's packager
  picks wheels for (it knows every runtime's ABI and glibc);
- `--python-version` on its `pip download` of manylinux wheels: without it pip judges a
  wheel by the interpreter that runs it and refuses cp312 wheels (cffi) under 3.11, and
  Chalice then leaves the package out ("Could not install dependencies").

tests/packaging/test_package.py checks that every compiled file in the zip is for RUNTIME.
"""

import sys

RUNTIME = "python3.12"


def _pin_pip_downloads(pip_runner_class, version):
    """PipRunner.download_manylinux_wheels with `--python-version` added to each download."""
    original = pip_runner_class.download_manylinux_wheels

    def download_manylinux_wheels(self, abi, packages, directory, platforms=None):
        execute = self._execute

        def with_version(command, args, *rest, **kwargs):
            if command == "download":
                args = [*args[:-1], "--python-version", version, args[-1]]  # the package stays last
            return execute(command, args, *rest, **kwargs)

        self._execute = with_version
        try:
            return original(self, abi, packages, directory, platforms)
        finally:
            del self._execute

    pip_runner_class.download_manylinux_wheels = download_manylinux_wheels


def main(argv=None):
    from chalice import config
    from chalice.cli import main as chalice_main
    from chalice.deploy import packager

    config.Config.lambda_python_version = property(lambda self: RUNTIME)
    _pin_pip_downloads(packager.PipRunner, RUNTIME.removeprefix("python"))
    sys.argv = ["chalice", *(sys.argv[1:] if argv is None else argv)]
    return chalice_main()


if __name__ == "__main__":
    sys.exit(main())
