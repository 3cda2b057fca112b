"""Run tests/benchmarks/cpu_scaling.py against the bnb8 installed under $BOUND_SITE (a
`pip install --target` of another build) instead of the editable install.

    BOUND_SITE=/tmp/noenc_site python run_with_build.py --params 67108864 --threads 1,2 --rounds 9 --out DIR
"""

import os
import runpy
import sys
from pathlib import Path

site = os.environ["BOUND_SITE"]
# The editable install's import hook would find the working tree's bnb8 before sys.path is searched.
sys.meta_path[:] = [finder for finder in sys.meta_path if "Redirecting" not in type(finder).__name__]
sys.path.insert(0, site)
import bnb8._C  # noqa: E402

if not bnb8._C.__file__.startswith(site):
    sys.exit(f"loaded {bnb8._C.__file__}, not the build under {site}")
print("bnb8 from", bnb8._C.__file__, bnb8._C.cpu_isa(), file=sys.stderr)
sys.argv = ["cpu_scaling.py", *sys.argv[1:]]
runpy.run_path(
    str(Path(__file__).resolve().parents[4] / "tests/benchmarks/cpu_scaling.py"), run_name="__main__"
)
