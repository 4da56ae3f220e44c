"""pypod's Mesos executor: Mesos tasks and task groups as pypod pods (issue 8).

``pypod-mesos-executor`` speaks the v1 executor HTTP API through pymesos (its ``Executor``
interface and a corrected ``MesosExecutorDriver``, :mod:`.driver`), turns ``LAUNCH`` and
``LAUNCH_GROUP`` into pods (:mod:`.mapping`) and drives them through the engine API, reporting
Mesos task states (:mod:`.executor`).

Importing this package makes ``import pymesos`` work without the unbuildable ``http-parser``
distribution: :mod:`.http_parser` stands in for it (see there why). Frameworks written with
pymesos' scheduler driver import ``pypod.mesos`` first for the same reason.
"""

from . import http_parser as _http_parser

_http_parser.install()
