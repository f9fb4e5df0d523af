package dev.phiedge.android

import dev.phiedge.engine.Manifest
import org.junit.After
import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertThrows
import org.junit.Assert.assertTrue
import org.junit.Test
import java.io.ByteArrayInputStream
import java.io.File
import java.io.IOException
import java.io.InputStream
import java.nio.file.Files

/** The crash-safe install of a bundled package (what PhiEdge.installBundled does with the APK's assets). */
class PackageInstallerTest {
    private val demo = File(System.getProperty("phiedge.repo") ?: "..", "runtime/demo").absoluteFile
    private val root = Files.createTempDirectory("packages").toFile()

    @After
    fun cleanUp() {
        root.deleteRecursively()
    }

    /** The demo package's files, optionally failing (a crash) or corrupting one of them. */
    private class Source(private val dir: File, val crashOn: String? = null, val corrupt: String? = null) : PackageSource {
        override fun list() = dir.listFiles()!!.filter { it.isFile }.map { it.name }.sorted()
        override fun open(name: String): InputStream {
            val bytes = File(dir, name).readBytes()
            if (name == corrupt) bytes[bytes.size / 2] = (bytes[bytes.size / 2] + 1).toByte()
            if (name != crashOn) return ByteArrayInputStream(bytes)
            return object : InputStream() {  // half the file, then the "process dies"
                var at = 0
                override fun read(): Int = if (at < bytes.size / 2) bytes[at++].toInt() and 0xff else throw IOException("killed")
            }
        }
    }

    @Test
    fun installsAVerifiedCopy() {
        var last = 0L to 0L
        val dir = PackageInstaller.install(Source(demo), root, "demo") { done, total -> last = done to total }
        assertEquals(File(root, "demo"), dir)
        for (f in listOf("manifest.json", "model.onnx", "model.onnx.data", "tokenizer.json")) {
            assertArrayEquals(f, File(demo, f).readBytes(), File(dir, f).readBytes())
        }
        assertEquals(last.second, last.first)  // progress reached the total
        assertEquals(listOf("demo"), root.list()!!.toList())  // no temporary folder left
        val stamp = File(dir, "model.onnx.data").lastModified()
        Thread.sleep(20)
        PackageInstaller.install(Source(demo), root, "demo")  // current: not copied again
        assertEquals(stamp, File(dir, "model.onnx.data").lastModified())
    }

    @Test
    fun aCrashMidCopyNeverLeavesAPackageThatLoads() {
        assertThrows(IOException::class.java) {
            PackageInstaller.install(Source(demo, crashOn = "model.onnx.data"), root, "demo")
        }
        assertFalse("a half-copied package is visible", File(root, "demo").exists())
        assertTrue(File(root, ".demo.partial").isDirectory)  // what the next start deletes and redoes
        val dir = PackageInstaller.install(Source(demo), root, "demo")
        Manifest.load(dir, verify = true)
        assertEquals(listOf("demo"), root.list()!!.toList())
    }

    @Test
    fun aCorruptCopyIsRefusedAndTheOldPackageKept() {
        val good = PackageInstaller.install(Source(demo), root, "demo")
        File(good, "manifest.json").appendText(" ")  // an older install: the bundled manifest differs
        val e = assertThrows(IllegalStateException::class.java) {
            PackageInstaller.install(Source(demo, corrupt = "model.onnx.data"), root, "demo")
        }
        assertTrue(e.message!!, e.message!!.contains("failed verification"))
        assertTrue(File(good, "model.onnx.data").isFile)  // the previous package is still there, untouched
        assertEquals(listOf("demo"), root.list()!!.toList())
    }

    @Test
    fun aTruncatedInstalledFileIsReinstalled() {
        val dir = PackageInstaller.install(Source(demo), root, "demo")
        java.io.RandomAccessFile(File(dir, "model.onnx.data"), "rw").use { it.setLength(100) }
        PackageInstaller.install(Source(demo), root, "demo")
        Manifest.load(dir, verify = true)
    }

    @Test
    fun aCrashBetweenTheRenamesIsRecovered() {
        val dir = PackageInstaller.install(Source(demo), root, "demo")
        assertTrue(dir.renameTo(File(root, ".demo.old")))  // died after moving the old one aside
        val again = PackageInstaller.install(Source(demo), root, "demo")
        Manifest.load(again, verify = true)
        assertEquals(listOf("demo"), root.list()!!.toList())
    }
}
