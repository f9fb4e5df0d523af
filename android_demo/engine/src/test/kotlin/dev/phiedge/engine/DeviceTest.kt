package dev.phiedge.engine

import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Assert.assertThrows
import org.junit.Assert.assertTrue
import org.junit.Test
import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit
import kotlin.concurrent.thread

/** What differs on a phone, in the engine: the context sized from free memory, and Stop inside a step. */
class DeviceTest {
    private val demo = Manifest.load(Golden.demo)
    private val mib = 1L shl 20

    @Test
    fun contextPlanFitsTheFreeMemory() {
        // demo: 6 layers x 2 x 8 kv heads x 32 x float32 = 12 KiB per position, 5.4 MiB of weights, 512 positions
        val per = 6L * 2 * 8 * 32 * 4
        assertEquals(per, ContextPlan.choose(demo, null).kvBytesPerPosition)
        val files = listOf("model.onnx", "model.onnx.data").sumOf { java.io.File(Golden.demo, it).length() }
        assertEquals(files, demo.weightBytes)  // model.onnx + model.onnx.data, from the manifest
        val plenty = ContextPlan.choose(demo, 4096 * mib)
        assertEquals(512, plenty.context)
        assertTrue(plenty.describe(), plenty.describe().startsWith("context 512 of 512 positions (fits in 4096 MiB free"))
        // free memory for the weights, the logits, the overhead and 300 positions: 256 (a multiple of 64)
        val logits = 4L * demo.contract.vocabSize
        val tightBytes = ((demo.weightBytes + logits + ContextPlan.OVERHEAD + 300 * per) / ContextPlan.SHARE).toLong() + 1
        val tight = ContextPlan.choose(demo, tightBytes)
        assertEquals(256, tight.context)
        assertTrue(tight.describe(), tight.describe().contains("limited by ${"%.0f".format(tightBytes / 1048576.0)} MiB free memory"))
        assertEquals(128, ContextPlan.choose(demo, 4096 * mib, requested = 128).context)
        val none = assertThrows(IllegalArgumentException::class.java) { ContextPlan.choose(demo, 100 * mib) }
        assertTrue(none.message!!, none.message!!.contains("close other apps or export a smaller package"))
        assertThrows(IllegalArgumentException::class.java) { ContextPlan.choose(demo, null, requested = 513) }
        // A sliding window of 100 (as tests/test_window.py): the buffer of 356 positions is what counts, and never
        // fewer than the window's 100, whatever context is asked for (GroupQueryAttention touches it whole)
        val windowed = Manifest(demo.folder, demo.contract.copy(window = 100), demo.maxLength, demo.tokenizerFile,
            demo.bosTokenId, demo.eosTokenId, demo.templates, demo.files, demo.raw, demo.minOnnxruntime,
            demo.stopTokenIds, null, demo.sizes)
        val room = { positions: Long -> ((demo.weightBytes + logits + ContextPlan.OVERHEAD + positions * per) /
            ContextPlan.SHARE).toLong() + 1 }
        val whole = ContextPlan.choose(windowed, room(360))
        assertEquals(512, whole.context)
        assertEquals(356, whole.positions)
        assertEquals(100, ContextPlan.choose(windowed, room(360), requested = 64).positions)
        val short = assertThrows(IllegalArgumentException::class.java) { ContextPlan.choose(windowed, room(80)) }
        assertTrue(short.message!!, short.message!!.contains("100 positions of KV cache"))
    }

    @Test
    fun sizesCatchATruncatedCopy() {
        val dir = java.nio.file.Files.createTempDirectory("pkg").toFile()
        try {
            Golden.demo.listFiles()!!.filter { it.isFile }.forEach { it.copyTo(java.io.File(dir, it.name)) }
            Manifest.load(dir).verifySizes()
            java.io.RandomAccessFile(java.io.File(dir, "model.onnx.data"), "rw").use { it.setLength(4096) }
            val e = assertThrows(IllegalArgumentException::class.java) { Manifest.load(dir).verifySizes() }
            assertTrue(e.message!!, e.message!!.contains("has 4096 bytes but manifest.json records 5652480"))
        } finally {
            dir.deleteRecursively()
        }
    }

    /** A backend whose steps block until interrupted, as ONNX Runtime's run does until its terminate flag is set. */
    private class Blocking(override val vocabSize: Int = 8, override val capacity: Int = 256) : Backend {
        override var length = 0
        val started = CountDownLatch(1)
        private val interrupted = CountDownLatch(1)
        val fed = ArrayList<Int>()
        override fun step(ids: IntArray): FloatArray {
            fed.add(ids.size)
            if (fed.size == 2) {  // the second prefill chunk runs "for ever" until Stop
                started.countDown()
                if (!interrupted.await(10, TimeUnit.SECONDS)) throw AssertionError("never interrupted")
                throw StepInterrupted()
            }
            length += ids.size
            return FloatArray(vocabSize)
        }
        override fun truncate(length: Int) { this.length = length }
        override fun interrupt() = interrupted.countDown()
    }

    @Test
    fun stopEndsAPrefillChunkInProgress() {
        val backend = Blocking()
        val cancel = CancelFlag()
        val stopper = thread {
            backend.started.await(10, TimeUnit.SECONDS)
            cancel.set()
            backend.interrupt()  // what PhiModel.cancel does
        }
        val out = generateIds(backend, IntArray(200) { it % 8 }, GenerationConfig(maxNewTokens = 8, prefillChunk = 64),
            cancel = cancel)
        stopper.join()
        assertEquals(FinishReason.CANCELLED, out.finishReason)
        assertTrue(out.tokens.isEmpty())
        assertNull(out.stats.ttftS)
        assertEquals(listOf(64, 64), backend.fed)  // chunk 2 was interrupted; chunks 3 and 4 never ran
        assertEquals(64, backend.length)  // the cache keeps what finished before the interrupted step
    }

    /** Prefers token (7 x length) mod vocab: logits that depend on the cache length only; counts what it is fed. */
    private class ByLength(override val vocabSize: Int = 4096, override val capacity: Int = 512) : Backend {
        override var length = 0
        val fed = ArrayList<Int>()
        override fun step(ids: IntArray): FloatArray {
            fed.add(ids.size)
            length += ids.size
            return FloatArray(vocabSize).also { it[(7 * length) % vocabSize] = 5f }
        }
        override fun truncate(length: Int) { this.length = length }
    }

    @Test
    fun aChatRebuildIsChunkedAndCancellable() {
        val tokenizer = Tokenizer.load(java.io.File(Golden.demo, "tokenizer.json"))
        val config = GenerationConfig(maxNewTokens = 4, prefillChunk = 8, sampling = SamplingConfig(temperature = 0.0))
        fun conversation(cancelSecond: Boolean): Pair<ByLength, List<Generation>> {
            val backend = ByLength()
            val model = TextGenerator(demo, backend, tokenizer)
            val chat = model.chat()
            val out = arrayListOf(chat.send("Hello! How are you?", config))
            model.generate("something else entirely", config)  // the cache now holds another sequence
            if (cancelSecond) {
                backend.fed.clear()
                val cancelled = chat.send("And then?", config, cancel = CancelFlag().also { it.set() })
                assertEquals(FinishReason.CANCELLED, cancelled.finishReason)
                assertEquals(emptyList<Int>(), backend.fed)  // the rebuild honours Stop: nothing was fed
            }
            out.add(chat.send("And then?", config))
            return backend to out
        }
        val (_, plain) = conversation(false)
        val (backend, interrupted) = conversation(true)
        assertEquals(plain.map { it.tokens }, interrupted.map { it.tokens })  // a cancelled rebuild leaves no trace
        assertTrue(backend.fed.all { it <= 8 })  // the rebuilt conversation went through the chunked prefill
    }
}

