"""Fetch the JVM packages botwatch puts on ``spark.jars`` (run by ``make jars``).

Maven resolves ``jvm/pom.xml`` into a scratch folder; only the jars whose artifact
Spark does not already ship in ``pyspark/jars`` are kept in ``jvm/jars/``, so no
second (older) Hadoop, Jackson or Scala library lands on the classpath.
GraphFrames is tried separately: when Maven Central refuses it, setup goes on
and ``botwatch doctor`` reports it as failed with the reason.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
JARS = HERE / "jars"
GRAPHFRAMES = "io.graphframes:graphframes-spark4_2.13:0.12.1"
_VERSION = re.compile(r"-\d[\w.\-]*\.jar$")


def artifact_name(jar: str) -> str:
    """``jackson-core-2.13.5.jar`` -> ``jackson-core``."""
    return _VERSION.sub("", jar)


def spark_shipped() -> set[str]:
    import pyspark

    return {artifact_name(p.name) for p in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}


def mvn(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["mvn", "-B", "-q", *args], cwd=HERE, capture_output=True, text=True)


def main() -> int:
    shipped = spark_shipped()
    with tempfile.TemporaryDirectory() as tmp:
        got = mvn(["dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={tmp}"])
        if got.returncode != 0:
            print(got.stdout[-3000:], got.stderr[-3000:], sep="\n", file=sys.stderr)
            print("botwatch: Maven could not resolve jvm/pom.xml (see above)", file=sys.stderr)
            return 1
        gf = mvn(["dependency:copy", f"-Dartifact={GRAPHFRAMES}", f"-DoutputDirectory={tmp}"])
        JARS.mkdir(exist_ok=True)
        for old in JARS.glob("*.jar"):
            old.unlink()
        kept = []
        for jar in sorted(Path(tmp).glob("*.jar")):
            if artifact_name(jar.name) not in shipped:
                shutil.copy2(jar, JARS / jar.name)
                kept.append(jar.name)
    print("botwatch: jars in jvm/jars:", ", ".join(kept))
    if gf.returncode != 0:
        print(
            f"botwatch: WARNING Maven Central refused {GRAPHFRAMES}; GraphFrames calls will fail "
            "(botwatch doctor reports it). Command: mvn dependency:copy "
            f"-Dartifact={GRAPHFRAMES}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
