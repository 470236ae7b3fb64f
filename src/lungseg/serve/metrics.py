"""``GET /metrics``: the service's counters in Prometheus' text exposition format (version 0.0.4).

Written by hand, not with ``prometheus-client``: a dozen series do not need a dependency, and
one process (or each worker, which Prometheus scrapes as it finds them) holds its own numbers.
Routes are the access log's (:func:`lungseg.serve.security.logged_path`), so a client cannot
create series by inventing paths.
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Callable, Iterable

#: Upper bounds (seconds) of the latency histogram's buckets.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Upper bounds of the batch-size histogram's buckets.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Histogram:
    """Counts of observations at or below each bound, their sum and their count."""

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out, total = [], 0
        for bound, count in zip((*self.bounds, "+Inf"), self.counts, strict=True):
            total += count
            out.append(f'{name}_bucket{{{labels}{sep}le="{bound}"}} {total}')
        braces = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{braces} {self.sum:.6f}", f"{name}_count{braces} {total}"]
        return out


class Metrics:
    """The service's numbers; updated on the event loop (the batchers' counts via
    :meth:`batch`, from their own thread, are plain integer updates under the GIL)."""

    def __init__(self) -> None:
        self.requests: collections.Counter[tuple[str, str, int]] = collections.Counter()
        self.latency: dict[str, Histogram] = {}
        self.batches = Histogram(BATCH_BUCKETS)
        self.images = 0
        self.reviews = 0
        self.clients_left = 0
        self.wrong_keys = 0

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests[method, route, status] += 1
        self.latency.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch(self, size: int) -> None:
        """A forward pass over ``size`` images."""
        self.batches.observe(size)
        self.images += size

    def left(self) -> None:
        """A client disconnected before its answer; its work was dropped."""
        self.clients_left += 1

    def render(self, gauges: Callable[[], dict[str, list[tuple[str, float]]]]) -> str:
        """The exposition text; ``gauges()`` gives ``{name: [(labels, value)]}`` read now."""
        lines = [
            "# HELP lungseg_http_requests_total Requests answered, by method, route and status.",
            "# TYPE lungseg_http_requests_total counter",
        ]
        for (method, route, status), count in sorted(self.requests.items()):
            labels = f'method="{method}",route="{route}",status="{status}"'
            lines.append(f"lungseg_http_requests_total{{{labels}}} {count}")
        lines += [
            "# HELP lungseg_http_request_duration_seconds Time from request to answer, by route.",
            "# TYPE lungseg_http_request_duration_seconds histogram",
        ]
        for route, histogram in sorted(self.latency.items()):
            lines += histogram.lines("lungseg_http_request_duration_seconds", f'route="{route}"')
        lines += [
            "# HELP lungseg_batch_size Images per forward pass.",
            "# TYPE lungseg_batch_size histogram",
            *self.batches.lines("lungseg_batch_size"),
        ]
        counters = {
            "lungseg_images_segmented_total": ("Images through a forward pass.", self.images),
            "lungseg_review_flags_total": ("Answers flagged for review.", self.reviews),
            "lungseg_clients_left_total": (
                "Requests dropped because their client disconnected first.",
                self.clients_left,
            ),
            "lungseg_wrong_api_keys_total": ("Missing or wrong API keys.", self.wrong_keys),
        }
        for name, (what, value) in counters.items():
            lines += [f"# HELP {name} {what}", f"# TYPE {name} counter", f"{name} {value}"]
        for name, series in gauges().items():
            lines.append(f"# TYPE {name} gauge")
            lines += [f"{name}{{{labels}}} {value:g}" if labels else f"{name} {value:g}"
                      for labels, value in series]  # fmt: skip
        return "\n".join(lines) + "\n"
