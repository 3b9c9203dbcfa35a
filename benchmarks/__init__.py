"""Side-by-side benchmarks of ``apimw_async`` against what users would pick instead.

Run ``python -m benchmarks`` (``--quick`` for a run of about a minute, ``--json PATH`` to save
the results); ``benchmarks/RESULTS.md`` records a full run on the reference machine and explains
how every peer was adapted. Peers (authlib, httpx, azure-core, matplotlib) come from the
``bench`` extra and are never runtime dependencies of the SDK.
"""

from __future__ import annotations

__all__: list[str] = []
