package dev.phiedge.demo

import android.content.Context
import dev.phiedge.engine.Manifest
import java.io.File

/**
 * Where model packages live on the phone. ONNX Runtime opens model.onnx by path (model.onnx.data must sit beside
 * it), so the bundled asset package is copied to files/packages/demo once; packages pushed with adb go to
 *
 *     /sdcard/Android/data/dev.phiedge.demo/files/packages/NAME/   (manifest.json, model.onnx, ...)
 */
object Packages {
    const val BUNDLED = "demo"

    fun pushedDir(context: Context): File? = context.getExternalFilesDir(null)?.let { File(it, "packages") }

    /** Bundled "demo" first, then every pushed package folder that has a manifest.json. */
    fun list(context: Context): List<String> {
        val pushed = pushedDir(context)?.listFiles()?.filter { File(it, Manifest.MANIFEST).isFile }?.map { it.name }
        return listOf(BUNDLED) + (pushed ?: emptyList()).sorted().filter { it != BUNDLED }
    }

    /** The folder of package [name], copying the bundled one out of the APK when it is missing or changed. */
    fun folder(context: Context, name: String): File {
        if (name != BUNDLED) {
            val dir = File(pushedDir(context), name)
            require(File(dir, Manifest.MANIFEST).isFile) { "no package '$name' in ${pushedDir(context)}; push one with adb" }
            return dir
        }
        val dir = File(context.filesDir, "packages/$BUNDLED")
        val assets = context.assets
        val bundledManifest = assets.open("$BUNDLED/${Manifest.MANIFEST}").use { it.readBytes() }
        val installed = File(dir, Manifest.MANIFEST)
        if (!installed.isFile || !installed.readBytes().contentEquals(bundledManifest)) {
            dir.deleteRecursively()
            dir.mkdirs()
            for (file in assets.list(BUNDLED).orEmpty()) {
                assets.open("$BUNDLED/$file").use { input -> File(dir, file).outputStream().use { input.copyTo(it) } }
            }
        }
        return dir
    }
}
