"""Run a command and write its own CPU seconds and peak RSS to a JSON file.

    python -m tests.benchmarks.peak OUT.json COMMAND ...

Linux starts an exec'd process's peak RSS (``ru_maxrss``) at the RSS of the process it was
forked from: a command started by a benchmark runner that holds a generated database's worth
of memory reports at least that much. Started from this small process instead, it reports
its own peak (or this process's, ~10 MB, whichever is larger).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

if __name__ == "__main__":
    out, *command = sys.argv[1:]
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    with open(out, "w") as file:
        json.dump({"cpu": usage.ru_utime + usage.ru_stime, "max_rss_mb": usage.ru_maxrss / 1024},
                  file)
    sys.exit(os.waitstatus_to_exitcode(status))
