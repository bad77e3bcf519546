"""Helpers the tests share: what more than one test module uses, in modules named for what
they drive (a daemon, the AWS CLI, IAM, events, the console ...).

Test modules import from here, never from one another or from ``conftest``; ``conftest.py``
holds only fixtures and hooks, built from these helpers. ``tests/`` is on ``sys.path``
(``pythonpath`` in pyproject's pytest section), so ``from support.daemon import Daemon``
works from ``tests/``, ``tests/unit/`` and ``tests/security/`` alike.
"""
