#!/usr/bin/env bash
# What this machine can prove of the Android code without a phone, an emulator or an Android SDK:
#
#   bash android_demo/test-host.sh
#
# 1. ONNX Runtime Android: fetches the onnxruntime-android AAR that the npm package com.github.asus4.onnxruntime
#    ships (Plugins/Android/onnxruntime.aar) and requires its native library to be the version phiedge pins.
# 2. Compiles with kotlinc (npm kotlin-compiler) the engine, the phiedge library's sources that need no Android
#    SDK class (OrtBackend, PhiModel, NativeMemory, PackageInstaller) against that AAR's classes.jar, and the tests.
#    Sources that import android.* or androidx.* are listed as not compiled: no registry here has Android's API jar.
# 3. Runs the JUnit 4 tests (Debian's junit4) on the JDK: engine against the golden vectors, library host tests.
# 4. ICU: replays every regex the engine compiles under ICU4C (Debian's python3-icu), Android's regex engine,
#    requiring the JVM's matches (android_demo/icu_check.py).
# Also links the app's manifest and resources with aapt2 against Android's framework resources (Debian).
# Not possible here: dexing (no d8 or dx in any registry reached) and so no APK with code.
#
# Installs what it needs once into android_demo/.host/ (ignored by git); compiles once per source hash.
# Needs a JDK 17+ (java, javac), npm, and root for apt-get when junit4 or python3-icu is missing.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
HOST=${PHIEDGE_HOST_DIR:-$HERE/.host}
KOTLIN_VERSION=2.4.20  # the npm package's version is the Kotlin version it ships
KOTLIN_HOME=$HOST/npm/node_modules/kotlin-compiler
ORT_NPM=com.github.asus4.onnxruntime@0.4.9  # ships onnxruntime-android's AAR (Unity package, 150 MB)
ORT_PIN=$(sed -n 's/^val onnxruntimeVersion = "\(.*\)"/\1/p' "$HERE/phiedge/build.gradle.kts")
AAR_DIR=$HOST/onnxruntime-android
JUNIT=/usr/share/java/junit4.jar
HAMCREST=/usr/share/java/hamcrest-core.jar
start=$(date +%s)

command -v java >/dev/null || { echo "error: no java on PATH; install a JDK 17+ (apt-get install -y openjdk-17-jdk-headless)" >&2; exit 2; }

apt_install() {  # apt_install PACKAGE WHY
    echo "installing $1 from Debian ($2)"
    if [ "$(id -u)" -ne 0 ]; then echo "error: $1 is missing; run apt-get install -y $1 as root" >&2; exit 2; fi
    apt-get install -y "$1" >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y "$1" >/dev/null; }
}

if [ "$(cat "$KOTLIN_HOME/build.txt" 2>/dev/null | cut -d- -f1)" != "$KOTLIN_VERSION" ]; then
    command -v npm >/dev/null || { echo "error: npm is needed to install kotlin-compiler (apt-get install -y npm)" >&2; exit 2; }
    echo "installing kotlin-compiler@$KOTLIN_VERSION from npm into $HOST/npm"
    mkdir -p "$HOST/npm"
    npm install --prefix "$HOST/npm" --no-audit --no-fund --loglevel=error "kotlin-compiler@$KOTLIN_VERSION" >/dev/null
fi
{ [ -f "$JUNIT" ] && [ -f "$HAMCREST" ]; } || apt_install junit4 "JUnit 4 for the host tests"
/usr/bin/python3 -c "import icu" 2>/dev/null || apt_install python3-icu "ICU4C's regex engine, as on Android"
FRAMEWORK_RES=/usr/share/android-framework-res/framework-res.apk
command -v aapt2 >/dev/null || apt_install aapt "aapt2, Android's resource compiler"
[ -f "$FRAMEWORK_RES" ] || apt_install android-framework-res "Android's framework resources for aapt2 link"

# 1. The onnxruntime-android AAR, its version read from the native library's symbol versions (VERS_1.29.0).
if [ ! -f "$AAR_DIR/$ORT_NPM.ok" ]; then
    command -v npm >/dev/null || { echo "error: npm is needed to fetch onnxruntime-android's AAR" >&2; exit 2; }
    echo "fetching onnxruntime-android's AAR from the npm package $ORT_NPM (150 MB, once)"
    rm -rf "$AAR_DIR" && mkdir -p "$AAR_DIR/tmp"
    (cd "$AAR_DIR/tmp" && npm pack --silent "$ORT_NPM" >/dev/null && tar xzf ./*.tgz package/Plugins/Android/onnxruntime.aar)
    mv "$AAR_DIR/tmp/package/Plugins/Android/onnxruntime.aar" "$AAR_DIR/onnxruntime.aar"
    rm -rf "$AAR_DIR/tmp"
    (cd "$AAR_DIR" && python3 -m zipfile -e onnxruntime.aar aar >/dev/null)
    touch "$AAR_DIR/$ORT_NPM.ok"
fi
ORT_JAR=$AAR_DIR/aar/classes.jar
ORT_AAR_VERSION=$(grep -aoE 'VERS_1\.[0-9]+\.[0-9]+' "$AAR_DIR/aar/jni/arm64-v8a/libonnxruntime.so" | head -1 | cut -c6-)
ABIS=$(ls "$AAR_DIR/aar/jni" | tr '\n' ' ')
echo "onnxruntime-android AAR: version $ORT_AAR_VERSION (ABIs: $ABIS); phiedge pins $ORT_PIN"
if [ "$ORT_AAR_VERSION" != "$ORT_PIN" ]; then
    echo "error: the AAR is onnxruntime-android $ORT_AAR_VERSION but phiedge/build.gradle.kts pins $ORT_PIN; pin the" \
        "version the library is compiled against here, or change ORT_NPM" >&2
    exit 1
fi

# 2. Compile. Android-only sources are named, not compiled.
ANDROID_ONLY=$(grep -rlE '^import androidx?\.' "$HERE/app/src" "$HERE/phiedge/src" | sort)
LIB_SOURCES=$(find "$HERE/phiedge/src/main/java" -name '*.kt' | sort | grep -vxF "$ANDROID_ONLY" || true)
SOURCES=$(find "$HERE/engine/src/main/kotlin" "$HERE/engine/src/test/kotlin" "$HERE/phiedge/src/test/kotlin" -name '*.kt' | sort)
HASH=$( (echo "$KOTLIN_VERSION $ORT_AAR_VERSION"; cat $SOURCES $LIB_SOURCES) | sha256sum | cut -c1-16)
OUT=$HOST/build/$HASH
STDLIB=$KOTLIN_HOME/lib/kotlin-stdlib.jar
CP=$STDLIB:$JUNIT:$HAMCREST:$ORT_JAR
if [ ! -f "$OUT/ok" ]; then
    echo "compiling $(echo $SOURCES $LIB_SOURCES | wc -w) Kotlin files with kotlinc $KOTLIN_VERSION"
    rm -rf "$OUT" && mkdir -p "$OUT"
    JAVA_OPTS="-Xmx1g -XX:+UseSerialGC -XX:TieredStopAtLevel=1" "$KOTLIN_HOME/bin/kotlinc" -nowarn -jvm-target 17 \
        -cp "$CP" -d "$OUT/classes" $SOURCES $LIB_SOURCES
    touch "$OUT/ok"
    find "$HOST/build" -mindepth 1 -maxdepth 1 ! -name "$HASH" -exec rm -rf {} +  # keep only this build
else
    echo "sources unchanged since the last compile ($HASH): reusing it"
fi
for f in $LIB_SOURCES; do echo "compiled against onnxruntime-android $ORT_AAR_VERSION classes.jar: ${f#$HERE/}"; done
for f in $ANDROID_ONLY; do echo "not compiled (imports the Android SDK, whose API jar no registry here has): ${f#$HERE/}"; done

# The app's manifest and resources, compiled and linked by aapt2 against Android's own framework resources
# (Debian's android-framework-res: Android 10, API 29) as the Gradle plugin would, with the package name taken
# from the namespace; then every R.id/R.string/R.layout the Kotlin sources use must exist in the generated R.
RES=$HOST/resources
rm -rf "$RES" && mkdir -p "$RES"
sed 's|<manifest xmlns:android="http://schemas.android.com/apk/res/android">|<manifest xmlns:android="http://schemas.android.com/apk/res/android" package="dev.phiedge.demo">|' \
    "$HERE/app/src/main/AndroidManifest.xml" > "$RES/AndroidManifest.xml"
aapt2 compile --dir "$HERE/app/src/main/res" -o "$RES/res.zip"
aapt2 link -I "$FRAMEWORK_RES" --manifest "$RES/AndroidManifest.xml" --java "$RES/gen" --min-sdk-version 27 \
    --target-sdk-version 35 -o "$RES/resources.ap_" "$RES/res.zip"
javac -d "$RES/classes" "$RES/gen/dev/phiedge/demo/R.java"
python3 - "$RES/gen/dev/phiedge/demo/R.java" $(find "$HERE/app/src/main/java" -name '*.kt') <<'EOF'
import re, sys
r = open(sys.argv[1]).read()
have = {(k, n) for k, body in re.findall(r"static final class (\w+) \{(.*?)\n  \}", r, re.S)
        for n in re.findall(r"int (\w+)=", body)}
used = {(k, n) for f in sys.argv[2:] for k, n in re.findall(r"(?<![\w.])R\.(\w+)\.(\w+)", open(f).read())}
missing = sorted(used - have)
if missing:
    sys.exit(f"error: the app uses resources that aapt2 did not generate: {missing}")
print(f"aapt2: manifest and {len(have)} resources linked against framework-res (API 29); the {len(used)} R "
      f"references in the app's Kotlin all exist")
EOF

# 3. JUnit; 4. ICU.
set +e
java -Xss4m -cp "$OUT/classes:$CP" -Dphiedge.repo="$REPO" -Dphiedge.golden="$HERE/golden" \
    -Dphiedge.icuCases="$HOST/icu-cases.json" org.junit.runner.JUnitCore dev.phiedge.engine.GoldenTest \
    dev.phiedge.engine.EngineTest dev.phiedge.engine.DeviceTest dev.phiedge.engine.IcuCasesTest \
    dev.phiedge.android.PackageInstallerTest \
    | tee "$HOST/last-run.txt"
status=${PIPESTATUS[0]}
/usr/bin/python3 "$HERE/icu_check.py" "$HOST/icu-cases.json"
icu=$?
set -e
tests=$(grep -oE '^OK \(([0-9]+) tests?\)' "$HOST/last-run.txt" | grep -oE '[0-9]+' || true)
if [ "$status" -eq 0 ] && [ -n "$tests" ] && [ "$icu" -eq 0 ]; then
    echo "host tests: $((tests + 1)) passed, 0 failed ($(( $(date +%s) - start )) s)"
else
    run=$(grep -oE 'Tests run: [0-9]+' "$HOST/last-run.txt" | grep -oE '[0-9]+' || echo "${tests:-0}")
    failed=$(grep -oE 'Failures: [0-9]+' "$HOST/last-run.txt" | grep -oE '[0-9]+' || echo 0)
    [ "$status" -ne 0 ] && [ "$failed" -eq 0 ] && failed=1
    [ "$icu" -ne 0 ] && failed=$((failed + 1))
    echo "host tests: $(( run + 1 - failed )) passed, $failed failed ($(( $(date +%s) - start )) s)"
    exit 1
fi
