# setuptools needs a setup.py to run cffi_modules; all metadata is in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["build.py:ffibuilder"])
