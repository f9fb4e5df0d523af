plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

// The demo package (runtime/demo: manifest.json, model.onnx, model.onnx.data, tokenizer.json) is bundled as the
// asset folder "demo"; it is copied from the repository at build time, not duplicated in git.
val demoAssets = layout.buildDirectory.dir("generated/demoAssets")
val copyDemoPackage by tasks.registering(Copy::class) {
    from(rootProject.file("../runtime/demo"))
    into(demoAssets.map { it.dir("demo") })
}

android {
    namespace = "dev.phiedge.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "dev.phiedge.demo"
        minSdk = 27  // the phiedge library's (android.os.SharedMemory)
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
        ndk { abiFilters += listOf("arm64-v8a", "armeabi-v7a", "x86_64") }
    }

    buildTypes {
        release {
            isMinifyEnabled = false
            signingConfig = signingConfigs.getByName("debug")  // a demo: sideload the release build too
        }
    }

    sourceSets["main"].assets.srcDir(demoAssets)
    androidResources {
        noCompress += listOf("onnx", "data", "json")  // copied to files/ at first start; stored, it copies faster
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions {
        jvmTarget = "17"
    }
}

tasks.named("preBuild") { dependsOn(copyDemoPackage) }

dependencies {
    implementation(project(":phiedge"))  // brings :engine and onnxruntime-android
    implementation("androidx.activity:activity-ktx:1.9.3")  // ComponentActivity, by viewModels()
    implementation("androidx.lifecycle:lifecycle-viewmodel-ktx:2.8.7")
    implementation("androidx.lifecycle:lifecycle-livedata-ktx:2.8.7")
}
