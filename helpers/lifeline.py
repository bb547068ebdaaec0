"""python -m helpers.lifeline PROGRAM [ARG...]: run PROGRAM, and stop it with everything it
started as soon as our standard input reaches end-of-file, that is, as soon as the
process that started us is gone (helpers.process.on_lifeline says how).

Exits with PROGRAM's exit status (128 + N when signal N ended it).
"""
from __future__ import annotations

import sys

from helpers.process import run_on_lifeline

if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m helpers.lifeline PROGRAM [ARG...]")
    sys.exit(run_on_lifeline(sys.argv[1:]))
