"""``python -m streamer.server [flags]``: the same as ``streamer serve [flags]``."""
from __future__ import annotations

import argparse

from streamer.server.cli import add_arguments, main

parser = argparse.ArgumentParser(prog="python -m streamer.server",
                                 description="Real-time speaker diarization server.")
add_arguments(parser)
raise SystemExit(main(parser.parse_args()))
