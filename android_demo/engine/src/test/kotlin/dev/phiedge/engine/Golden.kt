package dev.phiedge.engine

import java.io.DataInputStream
import java.io.File
import java.util.zip.GZIPInputStream

/** Where the host tests find the repository and android_demo/golden (system properties set by test-host.sh). */
object Golden {
    val repo = File(System.getProperty("phiedge.repo") ?: "..").absoluteFile
    val dir = File(System.getProperty("phiedge.golden") ?: File(repo, "android_demo/golden").path)
    val demo = File(repo, "runtime/demo")

    @Suppress("UNCHECKED_CAST")
    fun json(name: String): Map<String, Any?> = Json.parse(File(dir, name).readText()) as Map<String, Any?>

    fun gunzipText(name: String): String = GZIPInputStream(File(dir, name).inputStream()).use { it.readBytes() }
        .toString(Charsets.UTF_8)

    /** logits.f16.gz: (rows, vocab) float16 little-endian, widened to float32 exactly as numpy's astype does. */
    fun logits(rows: Int, vocab: Int): Array<FloatArray> {
        val bytes = GZIPInputStream(File(dir, "logits.f16.gz").inputStream()).use { it.readBytes() }
        check(bytes.size == rows * vocab * 2) { "logits.f16.gz has ${bytes.size} bytes, want ${rows * vocab * 2}" }
        return Array(rows) { r ->
            FloatArray(vocab) { v ->
                val at = (r * vocab + v) * 2
                halfToFloat((bytes[at].toInt() and 0xff) or ((bytes[at + 1].toInt() and 0xff) shl 8))
            }
        }
    }

    fun halfToFloat(h: Int): Float {
        val sign = (h ushr 15) and 1
        val exp = (h ushr 10) and 0x1f
        val mant = h and 0x3ff
        val bits = when {
            exp == 0 && mant == 0 -> sign shl 31
            exp == 0 -> {  // subnormal: normalise
                var e = -1
                var m = mant
                while (m and 0x400 == 0) { m = m shl 1; e++ }
                (sign shl 31) or ((127 - 15 - e) shl 23) or ((m and 0x3ff) shl 13)
            }
            exp == 31 -> (sign shl 31) or (0xff shl 23) or (mant shl 13)
            else -> (sign shl 31) or ((exp - 15 + 127) shl 23) or (mant shl 13)
        }
        return java.lang.Float.intBitsToFloat(bits)
    }
}

fun Any?.ints(): IntArray = (this as List<*>).map { (it as Number).toInt() }.toIntArray()

/**
 * Returns recorded logits rows in order; fails if the loop feeds other ids, or at another cache length. [padRows]
 * rows are appended to each, 8 above its largest logit, as make_golden.py's pad() (a padded vocabulary).
 */
class ReplayBackend(private val steps: List<Map<String, Any?>>, private val rows: List<FloatArray>,
                    vocab: Int, override val capacity: Int, private val padRows: Int = 0) : Backend {
    override val vocabSize = vocab + padRows
    var used = 0; private set
    var rowsUsed = 0; private set
    override var length = 0; private set
    override val canStepAll get() = true

    override fun step(ids: IntArray): FloatArray = replay(ids, null).last()

    override fun stepAll(ids: IntArray, keep: Int): Array<FloatArray> = replay(ids, keep)

    private fun padded(row: FloatArray): FloatArray {
        if (padRows == 0) return row.copyOf()
        val top = row.max() + 8f
        return FloatArray(row.size + padRows) { if (it < row.size) row[it] else top }
    }

    private fun replay(ids: IntArray, keep: Int?): Array<FloatArray> {
        val all = keep != null
        check(used < steps.size) { "step ${used + 1} asked for, but only ${steps.size} were recorded" }
        val want = steps[used]
        val wantIds = want["ids"].ints()
        val wantPast = (want["past"] as Number).toInt()
        val wantRows = (want["rows"] as Number?)?.toInt()
        check(ids.contentEquals(wantIds) && length == wantPast && (wantRows != null) == all &&
            (keep == null || keep == wantRows)) {
            "step $used: fed ${ids.toList()} at length $length (rows: $keep), Python fed ${wantIds.toList()} " +
                "at length $wantPast (rows: $wantRows)"
        }
        length += ids.size
        used++
        val n = wantRows ?: 1
        rowsUsed += n
        return Array(n) { padded(rows[rowsUsed - n + it]) }
    }

    override fun truncate(length: Int) {
        require(length in 0..this.length) { "cannot truncate a cache of ${this.length} positions to $length" }
        this.length = length
    }
}
