"""Load generation against any OpenAI-compatible server: ``llmserve bench`` and the repo's bench/ scripts.

``client`` times one streamed chat request, ``runner`` sweeps concurrency levels over one or
more servers, ``report`` prints a table or JSON and draws the comparison plot.
"""

from llmserve.bench.client import RequestResult, stream_chat
from llmserve.bench.runner import BenchParams, LevelResult, Target, parse_target, run_sweep

__all__ = ["BenchParams", "LevelResult", "RequestResult", "Target", "parse_target", "run_sweep", "stream_chat"]
