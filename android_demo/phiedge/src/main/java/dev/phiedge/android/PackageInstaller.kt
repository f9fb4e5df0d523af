package dev.phiedge.android

import dev.phiedge.engine.Manifest
import java.io.File
import java.io.InputStream

/** Files of a package to install: the APK's asset folder on a phone, a folder in the host tests. */
interface PackageSource {
    /** File names in the package (manifest.json, model.onnx, ...). */
    fun list(): List<String>

    fun open(name: String): InputStream
}

/**
 * Installs a bundled package where ONNX Runtime can open it by path, crash-safe:
 *
 *     packages/.NAME.partial/   every file copied here first (left over from a crash: deleted and redone)
 *          |  sizes and sha256 checked against its manifest.json
 *          v  rename (one directory operation)
 *     packages/NAME/            only ever a complete, verified package; the old one is renamed to .NAME.old
 *                               and deleted after the swap
 *
 * A crash at any point leaves either the old package or the new one in NAME, never a truncated mix. The folders
 * it deletes are its own (NAME and its two dot-prefixed siblings inside the app's private packages folder).
 */
object PackageInstaller {
    /** The package folder for [source] under [root]/[name], installing it when missing or changed. */
    fun install(source: PackageSource, root: File, name: String, onProgress: ((Long, Long) -> Unit)? = null): File {
        val target = File(root, name)
        val partial = File(root, ".$name.partial")
        val old = File(root, ".$name.old")
        val bundled = source.open(Manifest.MANIFEST).use { it.readBytes() }
        if (old.exists() && !target.exists()) old.renameTo(target)  // a crash between the two renames below
        old.deleteRecursively()
        if (isCurrent(target, bundled)) return target
        partial.deleteRecursively()
        check(partial.mkdirs()) { "cannot create $partial; is the storage full or read-only?" }
        val names = source.list()
        require(Manifest.MANIFEST in names) { "the bundled package has no ${Manifest.MANIFEST}; rebuild the app" }
        File(partial, Manifest.MANIFEST).writeBytes(bundled)
        val total = Manifest.load(partial, checkFiles = false).sizes.values.sum()  // for progress
        var done = 0L
        for (file in names.filter { it != Manifest.MANIFEST }) {
            source.open(file).use { input ->
                File(partial, file).outputStream().use { output ->
                    val buffer = ByteArray(1 shl 20)
                    while (true) {
                        val n = input.read(buffer)
                        if (n < 0) break
                        output.write(buffer, 0, n)
                        done += n
                        onProgress?.invoke(done, total)
                    }
                    output.fd.sync()  // on flash before the rename makes it visible
                }
            }
        }
        try {
            Manifest.load(partial, verify = true)  // every file present, sizes and sha256 as recorded
        } catch (e: Exception) {
            partial.deleteRecursively()
            throw IllegalStateException("the bundled package failed verification after copying (${e.message}); " +
                "free some storage and start the app again, or reinstall it", e)
        }
        if (target.exists()) check(target.renameTo(old)) { "cannot move the old $target aside" }
        check(partial.renameTo(target)) { "cannot rename $partial to $target" }
        old.deleteRecursively()
        return target
    }

    /** Whether [target] holds the package whose manifest is [bundled], complete (sizes as recorded). */
    private fun isCurrent(target: File, bundled: ByteArray): Boolean {
        val installed = File(target, Manifest.MANIFEST)
        if (!installed.isFile || !installed.readBytes().contentEquals(bundled)) return false
        return try {
            Manifest.load(target).verifySizes()
            true
        } catch (e: Exception) {
            false  // a file missing or cut short (changed by hand): install again
        }
    }
}
