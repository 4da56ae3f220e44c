"""Test support for pypod: images built from busybox, and real local registries.

Independent of pypod itself (stdlib + cryptography + bcrypt only). The tests
import it as ``support`` (tests/conftest.py puts tests/ on sys.path).
"""
