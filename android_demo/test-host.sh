#!/usr/bin/env bash
# Host tests of the Kotlin engine (android_demo/engine) on the JVM, against golden vectors from the Python runtime.
#
#   bash android_demo/test-host.sh
#
# Installs what it needs once, into android_demo/.host/ (ignored by git): the npm package kotlin-compiler (a
# full Kotlin distribution: kotlinc, stdlib) and Debian's junit4. Compiles engine + tests once per source hash
# (kotlinc is slow) and runs them with JUnit 4. Needs a JDK 17+ (java, javac) on PATH.
# ORT_JAR=/path/onnxruntime-X.jar also compiles the app's OrtBackend against ONNX Runtime's Java API.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
HOST=${PHIEDGE_HOST_DIR:-$HERE/.host}
KOTLIN_VERSION=2.4.20  # the npm package's version is the Kotlin version it ships
KOTLIN_HOME=$HOST/npm/node_modules/kotlin-compiler
JUNIT=/usr/share/java/junit4.jar
HAMCREST=/usr/share/java/hamcrest-core.jar
start=$(date +%s)

command -v java >/dev/null || { echo "error: no java on PATH; install a JDK 17+ (apt-get install -y openjdk-17-jdk-headless)" >&2; exit 2; }

if [ "$(cat "$KOTLIN_HOME/build.txt" 2>/dev/null | cut -d- -f1)" != "$KOTLIN_VERSION" ]; then
    command -v npm >/dev/null || { echo "error: npm is needed to install kotlin-compiler (apt-get install -y npm)" >&2; exit 2; }
    echo "installing kotlin-compiler@$KOTLIN_VERSION from npm into $HOST/npm"
    mkdir -p "$HOST/npm"
    npm install --prefix "$HOST/npm" --no-audit --no-fund --loglevel=error "kotlin-compiler@$KOTLIN_VERSION" >/dev/null
fi
if [ ! -f "$JUNIT" ] || [ ! -f "$HAMCREST" ]; then
    echo "installing junit4 from Debian"
    if [ "$(id -u)" -ne 0 ]; then echo "error: junit4 is missing; run apt-get install -y junit4 as root" >&2; exit 2; fi
    apt-get install -y junit4 >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y junit4 >/dev/null; }
fi

SOURCES=$(find "$HERE/engine/src/main/kotlin" "$HERE/engine/src/test/kotlin" -name '*.kt' | sort)
ORT_SOURCES=""
if [ -n "${ORT_JAR:-}" ]; then
    ORT_SOURCES=$(find "$HERE/app/src/main/java" -name 'Ort*.kt' | sort)
fi
HASH=$( (echo "$KOTLIN_VERSION ${ORT_JAR:-}"; cat $SOURCES $ORT_SOURCES) | sha256sum | cut -c1-16)
OUT=$HOST/build/$HASH
STDLIB=$KOTLIN_HOME/lib/kotlin-stdlib.jar
CP=$STDLIB:$JUNIT:$HAMCREST${ORT_JAR:+:$ORT_JAR}
if [ ! -f "$OUT/ok" ]; then
    echo "compiling $(echo "$SOURCES" $ORT_SOURCES | wc -w) Kotlin files with kotlinc $KOTLIN_VERSION"
    rm -rf "$OUT" && mkdir -p "$OUT"
    JAVA_OPTS="-Xmx1g -XX:+UseSerialGC -XX:TieredStopAtLevel=1" "$KOTLIN_HOME/bin/kotlinc" -nowarn -jvm-target 17 \
        -cp "$CP" -d "$OUT/classes" $SOURCES $ORT_SOURCES
    touch "$OUT/ok"
    find "$HOST/build" -mindepth 1 -maxdepth 1 ! -name "$HASH" -exec rm -rf {} +  # keep only this build
else
    echo "engine unchanged since the last compile ($HASH): reusing it"
fi
[ -n "${ORT_JAR:-}" ] && echo "compiled the ONNX Runtime backend against $ORT_JAR" \
    || echo "ONNX Runtime backend not compiled: no onnxruntime Java jar (set ORT_JAR; Maven Central is not reachable here)"

set +e
java -Xss4m -cp "$OUT/classes:$CP" -Dphiedge.repo="$REPO" -Dphiedge.golden="$HERE/golden" \
    org.junit.runner.JUnitCore dev.phiedge.engine.GoldenTest dev.phiedge.engine.EngineTest | tee "$HOST/last-run.txt"
status=${PIPESTATUS[0]}
set -e
tests=$(grep -oE '^OK \(([0-9]+) tests?\)' "$HOST/last-run.txt" | grep -oE '[0-9]+' || true)
if [ "$status" -eq 0 ] && [ -n "$tests" ]; then
    echo "host tests: $tests passed, 0 failed ($(( $(date +%s) - start )) s)"
else
    run=$(grep -oE 'Tests run: [0-9]+' "$HOST/last-run.txt" | grep -oE '[0-9]+' || echo 0)
    failed=$(grep -oE 'Failures: [0-9]+' "$HOST/last-run.txt" | grep -oE '[0-9]+' || echo 1)
    echo "host tests: $(( run - failed )) passed, $failed failed ($(( $(date +%s) - start )) s)"
    exit 1
fi
