# setuptools needs a setup.py to run cffi_modules; all metadata is in pyproject.toml.
#
# build_ext also ships the C core for C and C++ programs, from the objects it just
# compiled for the extension (the same compiler, flags and build id): xenevtchn/lib/
# libxenevtchn.a, the headers in xenevtchn/include/ and xenevtchn/lib/pkgconfig/
# xenevtchn.pc. xenevtchn.get_include(), get_library() and get_pkgconfig_dir() find them.
import re
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
PUBLIC_HEADERS = ("xenevtchn.h", "xen_abi.h")
PC = """prefix=${pcfiledir}/../..
includedir=${prefix}/include
libdir=${prefix}/lib

Name: xenevtchn
Description: Xen event channels simulator: the C core (C11 atomics over a shared_info page)
Version: %s
Cflags: -I${includedir}
Libs: ${libdir}/libxenevtchn.a
"""


def _version() -> str:
    m = re.search(r'^version\s*=\s*"([^"]+)"', (HERE / "pyproject.toml").read_text(), re.M)
    return m.group(1) if m else "0"


# Inside the package folder: what C and C++ programs use (see xenevtchn/c_library.py).
C_FILES = ("lib/libxenevtchn.a", "lib/pkgconfig/xenevtchn.pc",
           *(f"include/{name}" for name in PUBLIC_HEADERS))


class build_ext_with_c_library(build_ext):
    """The extension, then the static library made of the same core objects."""

    def _c_outputs(self):
        """(file in the build folder, file in the package of an editable install) pairs."""
        pkg_dir = self.get_finalized_command("build_py").get_package_dir("xenevtchn")
        return [(str(Path(self.build_lib, "xenevtchn", f)), str(Path(pkg_dir, f))) for f in C_FILES]

    def build_extension(self, ext):
        super().build_extension(ext)
        if ext.name != "xenevtchn._core":
            return
        # The core: csrc/*.c (csrc/python/ is written against CPython's API: not for C users).
        core = [s for s in ext.sources if Path(s).parent.as_posix() == "csrc"]
        objects = self.compiler.object_filenames(core, output_dir=self.build_temp)
        if not all(Path(o).exists() for o in objects):  # the extension was up to date
            objects = self.compiler.compile(
                core, output_dir=self.build_temp, include_dirs=ext.include_dirs,
                extra_postargs=ext.extra_compile_args, depends=ext.depends)
        pkg = Path(self.build_lib, "xenevtchn")
        lib, include, pcdir = pkg / "lib", pkg / "include", pkg / "lib" / "pkgconfig"
        for d in (lib, include, pcdir):
            d.mkdir(parents=True, exist_ok=True)
        self.compiler.create_static_lib(objects, "xenevtchn", output_dir=str(lib))
        for name in PUBLIC_HEADERS:
            shutil.copyfile(HERE / "csrc" / name, include / name)
        (pcdir / "xenevtchn.pc").write_text(PC % _version())

    def copy_extensions_to_source(self):
        super().copy_extensions_to_source()
        for built, inplace in self._c_outputs():
            Path(inplace).parent.mkdir(parents=True, exist_ok=True)
            self.copy_file(built, inplace, level=self.verbose)

    def _get_output_mapping(self):
        yield from super()._get_output_mapping()
        if self.inplace:
            yield from self._c_outputs()

    def get_outputs(self):
        outputs = super().get_outputs()
        if not self.inplace:
            outputs += [built for built, _ in self._c_outputs()]
        return outputs


setup(cffi_modules=["build.py:ffibuilder"], cmdclass={"build_ext": build_ext_with_c_library})
