// The engine: plain Kotlin on the JVM, no Android imports, so it builds and tests on any machine.
// `gradle :engine:test` runs the same JUnit tests as android_demo/test-host.sh (which needs no Gradle).
plugins {
    id("org.jetbrains.kotlin.jvm")
}

java {
    sourceCompatibility = JavaVersion.VERSION_17
    targetCompatibility = JavaVersion.VERSION_17
}

kotlin {
    compilerOptions {
        jvmTarget.set(org.jetbrains.kotlin.gradle.dsl.JvmTarget.JVM_17)
    }
}

dependencies {
    testImplementation("junit:junit:4.13.2")
}

tasks.test {
    systemProperty("phiedge.repo", rootDir.parentFile.absolutePath)
    systemProperty("phiedge.golden", file("../golden").absolutePath)
}
