// phiedge: the embeddable Android library (AAR). ONNX Runtime backend, native-memory KV cache, context sized to
// the device, crash-safe install of a bundled package, and PhiModel, the small API an app calls. It exposes the
// plain-Kotlin :engine (tokenizer, sampling, generation loop, chat, stats) as part of its API.
//
// The version test-host.sh compiles these sources against (the classes.jar of this exact onnxruntime-android
// AAR, taken from the npm registry) and tests/test_android_host.py checks against the packages' needs.
val onnxruntimeVersion = "1.29.0"

plugins {
    id("com.android.library")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "dev.phiedge.android"
    compileSdk = 35

    defaultConfig {
        minSdk = 27  // android.os.SharedMemory (native memory for the KV cache) is API 27
        consumerProguardFiles("consumer-rules.pro")
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions {
        jvmTarget = "17"
    }
}

dependencies {
    api(project(":engine"))
    api("com.microsoft.onnxruntime:onnxruntime-android:$onnxruntimeVersion")
}
