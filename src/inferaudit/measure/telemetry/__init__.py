"""Accelerator telemetry: what the operator's vendor tools report, parsed into typed samples.

Contract. Everything here is **operator-reported**: a tool on the operator's host printed it,
the operator controls that host, and no figure derived from it is a measurement. It is recorded
beside the measured figures and never raises one.

- ``model``: ``DeviceSample`` (one device at one moment; fixed units) and ``Vendor``.
- ``nvidia``: ``parse_nvidia_smi_csv`` (``nvidia-smi --query-gpu`` CSV, the exact command in
  ``NVIDIA_SMI_COMMAND``) and ``parse_dcgm_exporter`` (dcgm-exporter ``/metrics`` text).
- ``ascend``: ``parse_npu_smi_info`` (the device table of ``npu-smi info``).
- ``sampler``: one round of the agent — the tools found on ``PATH``, run with a timeout.
- ``agent_wire``: the JSON the agent serves at ``/samples`` and ``parse_agent``.
- ``serve``: the agent's HTTP server.
- ``figures``: ``reported_figures`` — energy per output token, tokens/s per device and
  utilisation over a measurement window, all operator-reported.

Parsers are strict: a line that does not have the documented shape is a ``DataError`` naming
the tool and the line, never skipped. Fixtures and their sources: ``tests/data/telemetry/``.

Tools without a parser. For Cambricon (``cnmon``), MetaX (``mx-smi``), Moore Threads
(``mthreads-gmi``), Enflame (``efsmi``), Biren (``brsmi``), Kunlunxin (``xpu-smi``), Iluvatar
(``ixsmi``) and Hygon (``hy-smi``) no vendor documentation of the tool's output format could be
found in the sources searched (vendor documentation sites and public repositories; only
third-party scripts that scrape these tools' output, which document nothing). Rather than guess
a format, the agent does not run them; a host with only these tools serves empty samples with
that reason. A parser is added here once a documented format (or a vendor-stated machine
format, e.g. a JSON mode) is at hand.

May import: ``inferaudit.errors`` and ``inferaudit.measure.telemetry`` (plus aiohttp,
prometheus_client, pydantic).
"""
