package dev.phiedge.android

import android.app.ActivityManager
import android.content.Context
import java.io.File
import java.io.InputStream

/**
 * The library's Android entry points: load a package with a context sized to the device's free memory, its KV
 * cache and logits in native memory (SharedMemoryPool), and install a package bundled in the app's assets.
 *
 *     val folder = PhiEdge.installBundled(context, "demo")          // assets/demo -> files/packages/demo, once
 *     val plan = PhiEdge.plan(context, folder)                       // show plan.describe() before loading
 *     val model = PhiEdge.load(context, folder, EngineOptions(threads = 2))
 */
object PhiEdge {
    /** Memory the system reports available now (ActivityManager.MemoryInfo.availMem). */
    fun availableBytes(context: Context): Long {
        val info = ActivityManager.MemoryInfo()
        (context.getSystemService(Context.ACTIVITY_SERVICE) as ActivityManager).getMemoryInfo(info)
        return info.availMem
    }

    fun plan(context: Context, folder: File, options: EngineOptions = EngineOptions()) =
        PhiModel.plan(folder, options, availableBytes(context))

    /** Loads [folder]; blocks (seconds for large packages): call it off the main thread. */
    fun load(context: Context, folder: File, options: EngineOptions = EngineOptions()): PhiModel =
        PhiModel.load(folder, options, availableBytes(context), SharedMemoryPool())

    /**
     * The folder of the package bundled as assets/[assetDir], copied to files/packages/[assetDir] on first use or
     * when the app's bundled package changed (PackageInstaller: temporary folder, verified, renamed last).
     */
    fun installBundled(context: Context, assetDir: String, onProgress: ((Long, Long) -> Unit)? = null): File {
        val assets = context.assets
        val source = object : PackageSource {
            override fun list(): List<String> = assets.list(assetDir).orEmpty().toList()
            override fun open(name: String): InputStream = assets.open("$assetDir/$name")
        }
        return PackageInstaller.install(source, File(context.filesDir, "packages"), assetDir, onProgress)
    }
}
