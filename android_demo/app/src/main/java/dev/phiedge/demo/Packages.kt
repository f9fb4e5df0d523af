package dev.phiedge.demo

import android.content.Context
import dev.phiedge.android.PhiEdge
import dev.phiedge.engine.Manifest
import java.io.File

/**
 * Where model packages live on the phone: the bundled "demo" (assets/demo, installed by the library on first
 * use: PhiEdge.installBundled) and packages pushed with adb to
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

    /** The folder of package [name]; the bundled one is installed (copied and verified) when missing or changed. */
    fun folder(context: Context, name: String, onProgress: ((Long, Long) -> Unit)? = null): File {
        if (name == BUNDLED) return PhiEdge.installBundled(context, BUNDLED, onProgress)
        val dir = File(pushedDir(context), name)
        require(File(dir, Manifest.MANIFEST).isFile) { "no package '$name' in ${pushedDir(context)}; push one with adb" }
        return dir
    }
}
