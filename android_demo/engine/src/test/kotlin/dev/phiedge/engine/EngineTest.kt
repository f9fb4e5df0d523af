package dev.phiedge.engine

import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Assert.assertThrows
import org.junit.Assert.assertTrue
import org.junit.Test
import java.io.File

/** Unit tests of the engine's pieces with small made-up inputs (a scripted backend, toy decoders). */
class EngineTest {
    /** Always prefers token (length + 1) % vocab: a deterministic "model". */
    private class Counting(override val vocabSize: Int = 8, override val capacity: Int = 64) : Backend {
        override var length = 0
        override fun step(ids: IntArray): FloatArray {
            length += ids.size
            return FloatArray(vocabSize).also { it[(length + 1) % vocabSize] = 5f }
        }
        override fun truncate(length: Int) { this.length = length }
    }

    private val letters: Decode = { ids -> ids.joinToString("") { ('a' + it).toString() } }

    @Test
    fun statsKeysAreRuntimeStatsKeys() {
        val source = File(Golden.repo, "runtime/stats.py").readText()
        val keys = Regex("^([A-Z_]+) = \"([a-z_]+)\"", RegexOption.MULTILINE).findAll(source)
            .map { it.groupValues[2] }.toList()
        val tuple = Regex("KEYS = \\(([^)]*)\\)").find(source)!!.groupValues[1].split(',').map { it.trim() }
            .filter { it.isNotEmpty() }
        val names = Regex("^([A-Z_]+) = \"([a-z_]+)\"", RegexOption.MULTILINE).findAll(source)
            .associate { it.groupValues[1] to it.groupValues[2] }
        assertEquals(tuple.map { names[it] }, StatsKeys.KEYS)
        assertTrue(keys.containsAll(StatsKeys.KEYS))
        val reasons = Regex("FINISH_REASONS = \\(([^)]*)\\)").find(source)!!.groupValues[1]
        val stopLine = Regex("^STOP, EOS.* = (.*)$", RegexOption.MULTILINE).find(source)!!.groupValues[1]
        assertEquals(stopLine.split(',').map { it.trim().trim('"') }, FinishReason.values().map { it.key })
        assertTrue(reasons.isNotEmpty())
        val stats = GenerationStats(3, 5, 0.1, 0.05, 0.4, 0.5, 0.4, 1000, FinishReason.LENGTH, 0.2).toJson()
        assertEquals(StatsKeys.KEYS, stats.keys.toList())
        assertEquals(10.0, stats[StatsKeys.DECODE_TOKENS_PER_S] as Double, 1e-9)
    }

    @Test
    fun lastTokenIsNeverFedBack() {
        val b = Counting()
        val out = generateIds(b, intArrayOf(1, 2, 3), GenerationConfig(maxNewTokens = 4,
            sampling = SamplingConfig(temperature = 0.0)), decode = letters)
        assertEquals(listOf(4, 5, 6, 7), out.tokens)
        assertEquals(3 + 4 - 1, b.length)
        assertEquals(FinishReason.LENGTH, out.finishReason)
        assertEquals("efgh", out.text)
    }

    @Test
    fun stopStringAcrossTokensIsHeldAndCut() {
        val shown = StringBuilder()
        val out = generateIds(Counting(), intArrayOf(1), GenerationConfig(maxNewTokens = 10, stop = listOf("def"),
            sampling = SamplingConfig(temperature = 0.0)), decode = letters, onText = { shown.append(it) })
        // tokens 3,4,5 = "d","e","f": "c" is shown, "de" is held until "f" completes the stop string
        assertEquals("c", out.text)
        assertEquals("c", shown.toString())
        assertEquals(FinishReason.STOP, out.finishReason)
    }

    @Test
    fun eosEndsTheCallAndContextFullToo() {
        val eos = generateIds(Counting(), intArrayOf(1), GenerationConfig(sampling = SamplingConfig(temperature = 0.0)),
            stopTokenIds = listOf(9, 4))
        assertEquals(FinishReason.EOS, eos.finishReason)
        assertEquals(listOf(2, 3, 4), eos.tokens)
        val full = generateIds(Counting(capacity = 5), intArrayOf(1, 2), GenerationConfig(
            sampling = SamplingConfig(temperature = 0.0), stopAtEos = false))
        assertEquals(FinishReason.CONTEXT, full.finishReason)
        assertEquals(4, full.tokens.size)
    }

    @Test
    fun cancelBeforePrefillSamplesNothing() {
        val out = generateIds(Counting(), intArrayOf(1, 2), cancel = { true })
        assertEquals(FinishReason.CANCELLED, out.finishReason)
        assertTrue(out.tokens.isEmpty())
        assertNull(out.stats.ttftS)
    }

    @Test(expected = IllegalArgumentException::class)
    fun promptLongerThanContextIsRefused() {
        generateIds(Counting(capacity = 4), intArrayOf(1, 2, 3, 4, 5))
    }

    @Test
    fun utf8LossyLikeRust() {
        fun b(vararg x: Int) = ByteArray(x.size) { x[it].toByte() }
        assertEquals("\uFFFD", Utf8.decodeLossy(b(0xF0, 0x9F, 0x98)))  // an emoji's first three bytes
        assertEquals("\uFFFD\uFFFDa", Utf8.decodeLossy(b(0xC0, 0x80, 0x61)))
        assertEquals("\uFFFDa", Utf8.decodeLossy(b(0xE2, 0x82, 0x61)))
        assertEquals("😀", Utf8.decodeLossy("😀".toByteArray()))
        assertEquals("\uFFFD\uFFFD", Utf8.decodeLossy(b(0xED, 0xA0, 0x80).copyOf(2)))  // surrogate: ED A0 invalid
    }

    @Test
    fun incrementalDecoderHoldsIncompleteCharacters() {
        val t = Tokenizer.load(File(Golden.demo, "tokenizer.json"))
        val ids = t.encode("a 😀 b")
        val d = IncrementalDecoder(t::decode)
        val pieces = ids.map { d.push(it) } + d.flush()
        assertTrue(pieces.none { it.contains(REPLACEMENT) })
        assertEquals("a 😀 b", pieces.joinToString(""))
    }

    @Test
    fun samplerTopKOneIsArgmaxAndSeedRepeats() {
        val row = floatArrayOf(0.1f, 2f, 2f, -1f)
        assertEquals(1, Sampler(SamplingConfig(temperature = 0.9, topK = 1, seed = 3)).sample(row))
        assertEquals(1, Sampler(SamplingConfig(temperature = 0.0)).sample(row))
        val a = Sampler(SamplingConfig(temperature = 1.0, seed = 7))
        val c = Sampler(SamplingConfig(temperature = 1.0, seed = 7))
        assertEquals((0 until 20).map { a.sample(row) }, (0 until 20).map { c.sample(row) })
        val (cand, p) = probabilities(row, SamplingConfig(temperature = 1.0, topP = 0.5))
        assertEquals(listOf(1, 2), cand.toList())  // each 2f has p = 0.45: the second crosses 0.5 and stays
        assertEquals(1.0, p.sum(), 1e-12)
    }

    @Test
    fun drawsAndSpeculativeVerifyFollowTheDistribution() {
        val rng = java.util.Random(3)
        val row = FloatArray(60) { (rng.nextGaussian() * 1.5).toFloat() }
        val config = SamplingConfig(temperature = 0.9, topP = 0.9, seed = 11)
        val (ids, probs) = probabilities(row, config)
        val p = DoubleArray(row.size).also { for ((i, id) in ids.withIndex()) it[id] = probs[i] }
        val outside = p.indices.first { p[it] == 0.0 }
        for (draft in listOf(-1, ids[0], ids[ids.size / 2], outside)) {
            val sampler = Sampler(config)
            val n = 20_000
            val counts = IntArray(row.size)
            repeat(n) { counts[if (draft < 0) sampler.sample(row) else sampler.verify(row, draft)]++ }
            var chi = 0.0
            for (i in p.indices) {
                if (p[i] == 0.0) assertEquals("draft $draft drew $i outside the kept set", 0, counts[i])
                else chi += (counts[i] - n * p[i]).let { it * it } / (n * p[i])
            }
            val dof = ids.size - 1
            assertTrue("draft $draft: chi-square $chi over $dof dof", chi < dof + 5 * Math.sqrt(2.0 * dof))
        }
        val greedy = Sampler(SamplingConfig(temperature = 0.0))
        assertEquals(ids[0], greedy.verify(row, ids[1]))
        val ties = floatArrayOf(0.1f, 0.5f, 0.3f, 0.1f)
        assertEquals(listOf(1, 2, 0, 3), probabilities(ties, SamplingConfig(temperature = 1.0, topK = 3)).first.toList())
    }

    @Test
    fun repetitionPenaltyLikeCtrl() {
        val s = Sampler(SamplingConfig(temperature = 0.0, repetitionPenalty = 2.0))
        s.observe(intArrayOf(0, 3))
        val out = s.penalize(floatArrayOf(4f, 1f, 0f, -1f))
        assertEquals(listOf(2f, 1f, 0f, -2f), out.toList())
    }

    @Test
    fun jsonRoundTrip() {
        val v = linkedMapOf("a" to listOf(1L, 2.5, "x\n\"y\"", null, true), "é" to mapOf("k" to "😀"))
        assertEquals(v, Json.parse(Json.write(v, indent = 2)))
        assertEquals("\u00e9\ud83d\ude00", Json.parse("\"\\u00e9\\ud83d\\ude00\""))
    }

    /** A backend that records the ids of every step it is fed. */
    private class Recording(override val capacity: Int) : Backend {
        val fed = ArrayList<List<Int>>()
        override val vocabSize = 8
        override var length = 0
        override fun step(ids: IntArray): FloatArray { fed.add(ids.toList()); length += ids.size; return FloatArray(8) }
        override fun truncate(length: Int) { this.length = length }
    }

    @Test
    fun longRopeCrossingRecomputesTheSequence() {
        val inner = Recording(32)
        val fed = inner.fed
        val b = RecomputingBackend(inner, listOf(RopeSwitch(12)))
        b.step(IntArray(10) { it })  // positions 0..9
        b.step(intArrayOf(10, 11))  // ends at 12: still the short tables
        b.step(intArrayOf(12))  // crosses: everything again
        b.step(intArrayOf(13))  // past the switch: one token
        assertEquals(listOf((0..9).toList(), listOf(10, 11), (0..12).toList(), listOf(13)), fed)
        assertEquals(14, b.length)
        b.truncate(0)
        b.step(IntArray(20) { it })  // a prompt already past the switch is one step
        assertEquals((0..19).toList(), fed.last())
        // Back below the switch: keys rotated with the long tables go, and the next step feeds what a fresh run would.
        b.truncate(8)
        assertEquals(8, b.length)
        assertEquals(0, inner.length)
        b.step(intArrayOf(30, 31))  // 10 <= 12: the short tables, from an empty cache
        assertEquals((0..7).toList() + listOf(30, 31), fed.last())
        b.step(intArrayOf(32))  // still short: one token
        assertEquals(listOf(32), fed.last())
        b.truncate(4)  // a short cache truncated stays as it is
        b.step(intArrayOf(40))
        assertEquals(listOf(40), fed.last())
        assertEquals(5, b.length)
    }

    @Test
    fun slidingWindowTruncatesInPlaceOnlyWithoutAnEvictionBetween() {
        val rule = Window(buffer = 53, window = 48)  // evicts 6 rows at 54, 60, ... (tests/test_window.py)
        assertEquals(listOf(0, 1, 1, 2), listOf(53, 54, 59, 60).map { rule.evictions(it) })
        assertTrue(rule.exact(59, 54) && !rule.exact(60, 59))
        assertEquals(59, rule.limit(54))
        assertEquals(53, rule.limit(10))
        val inner = Recording(128)
        val fed = inner.fed
        val b = RecomputingBackend(inner, listOf(rule))
        b.step(IntArray(58) { it })
        assertEquals(59, b.rollbackLimit)
        b.truncate(55)  // 58 -> 55: no eviction between, in place
        assertEquals(55, inner.length)
        b.step(intArrayOf(100))
        assertEquals(listOf(100), fed.last())
        b.truncate(50)  // 56 -> 50: the rows of 50..53 were shifted away at 54, so fed again
        assertEquals(0, inner.length)
        b.step(intArrayOf(101))
        assertEquals((0..49).toList() + listOf(101), fed.last())
    }

    /** The next token depends on every id in the cache: a step fed by another caller changes it. */
    private class Hashing(override val vocabSize: Int = 4096, override val capacity: Int = 256) : Backend {
        private val ids = IntArray(capacity)
        override var length = 0
        override fun step(ids: IntArray): FloatArray {
            ids.copyInto(this.ids, length)
            length += ids.size
            Thread.yield()
            var h = 17
            for (i in 0 until length) h = h * 31 + this.ids[i]
            return FloatArray(vocabSize).also { it[Math.floorMod(h, 200) + 100] = 5f }
        }
        override fun truncate(length: Int) { this.length = length }
    }

    @Test
    fun twoThreadsOnOneModelGetWhatEachGetsAlone() {
        val model = TextGenerator(Manifest.load(Golden.demo), Hashing(), Tokenizer.load(File(Golden.demo, "tokenizer.json")))
        val config = GenerationConfig(maxNewTokens = 40, stopAtEos = false, sampling = SamplingConfig(temperature = 0.0))
        val prompts = listOf("def fibonacci(n):", "import os\n", "class Stack:")
        val alone = prompts.map { model.generate(it, config).tokens }
        val chatAlone = listOf("Hi", "And then?").let { turns -> model.chat().let { c -> turns.map { c.send(it, config).tokens } } }
        repeat(5) {
            val got = arrayOfNulls<List<Int>>(prompts.size)
            var chatGot: List<List<Int>>? = null
            val threads = prompts.indices.map { i -> Thread { got[i] = model.generate(prompts[i], config).tokens } } +
                Thread { chatGot = model.chat().let { c -> listOf("Hi", "And then?").map { c.send(it, config).tokens } } }
            threads.forEach { it.start() }
            threads.forEach { it.join(60_000) }
            assertEquals(alone, got.toList())
            assertEquals(chatAlone, chatGot)
        }
    }

    @Test
    fun aCallThatMayNotWaitIsToldTheModelIsBusy() {
        val model = TextGenerator(Manifest.load(Golden.demo), Hashing(), Tokenizer.load(File(Golden.demo, "tokenizer.json")))
        val config = GenerationConfig(maxNewTokens = 4, stopAtEos = false, sampling = SamplingConfig(temperature = 0.0))
        val started = java.util.concurrent.CountDownLatch(1)
        val release = java.util.concurrent.CountDownLatch(1)
        val session = model.chat()
        val worker = Thread {
            model.generate("def f(x):", config, onText = { started.countDown(); release.await() })
        }
        worker.start()
        try {
            assertTrue(started.await(60, java.util.concurrent.TimeUnit.SECONDS))
            val busy = assertThrows(ModelBusyException::class.java) { model.generate("x", config, wait = false) }
            assertTrue(busy.message!!.contains("generating for another caller"))
            assertThrows(ModelBusyException::class.java) { session.send("hi", config, wait = false) }
        } finally {
            release.countDown()
            worker.join(60_000)
        }
        assertEquals(FinishReason.LENGTH, model.generate("def f(x):", config, wait = false).finishReason)
    }

    @Test
    fun extremeSamplingSettingsAreRefusedOrNeverDrawASuppressedId() {
        val values = listOf(0.0, 4.9e-324, 1e-300, 1e-45, 1.1754943508222875E-38, 1e-30, 0.7, 1.0, 1e30,
            3.4028234663852886E38, 3.5e38, 1e300, Double.POSITIVE_INFINITY, Double.NaN, -1.0)
        val rng = java.util.Random(7)
        var accepted = 0
        for (t in values) for (p in values) for (penalty in values) for (k in listOf(0, 1, 5, 600)) {
            val config = try {
                SamplingConfig(temperature = t, topK = k, topP = p, repetitionPenalty = penalty, seed = 3L)
            } catch (e: IllegalArgumentException) {
                continue
            }
            accepted++
            val suppress = BooleanArray(512).also { s -> repeat(100) { s[rng.nextInt(512)] = true } }
            val logits = FloatArray(512) { (rng.nextGaussian() * 3e38).toFloat() }  // some overflow to +-inf
            suppress[Sampler.argmax(logits)] = true  // the most likely id may never be drawn
            val sampler = Sampler(config, suppress)
            sampler.observe(IntArray(200) { rng.nextInt(512) })
            repeat(3) {
                val token = sampler.sample(logits)
                assertTrue("$config drew $token", token in 0 until 512 && !suppress[token])
            }
            assertTrue(!suppress[sampler.verify(logits, suppress.indexOfFirst { it })])
        }
        assertTrue(accepted > 100)
    }

    @Test
    fun manifestReadsTheDemoPackage() {
        val m = Manifest.load(Golden.demo, verify = true)
        assertEquals(6 * 2, m.contract.kvNames().size)
        assertEquals("past_key_values.5.value" to "present.5.value", m.contract.kvNames().last())
        assertEquals("Alice: hi\nBob:", m.applyTemplate("chat", "hi"))
        assertEquals(listOf(1L, 8L, 512L, 32L), m.contract.kvShape(m.maxLength).toList())
        assertEquals("float32", m.contract.kvDtype)  // the demo's cache since it runs on WebGPU too (--target web)
        assertEquals("1.23.0", m.minOnnxruntime)
        m.checkOnnxruntime("1.23.0")
        m.checkOnnxruntime("1.32.0")
        val refused = assertThrows(IllegalArgumentException::class.java) { m.checkOnnxruntime("1.22.0") }
        assertTrue(refused.message!!.contains("needs onnxruntime >= 1.23.0 but the app has 1.22.0"))
        assertTrue(Manifest.compareVersions("1.10.0", "1.9.2") > 0 && Manifest.compareVersions("1.23", "1.23.0") == 0)
    }

    @Test
    fun benchmarkWritesLatencyJson() {
        val m = Manifest.load(Golden.demo)
        val model = TextGenerator(m, Counting(vocabSize = 4096, capacity = 24), Tokenizer.load(File(Golden.demo, "tokenizer.json")))
        val point = LatencyBenchmark.measure(model, LatencyPoint(promptLen = 16, newTokens = 8, threads = 1, repeats = 3))
        @Suppress("UNCHECKED_CAST")
        val samples = point["samples"] as List<Map<String, Any?>>
        assertEquals(3, samples.size)
        assertEquals(StatsKeys.KEYS, samples[0].keys.toList())
        assertEquals(listOf("prompt_len", "new_tokens", "threads", "repeats", "profile", StatsKeys.PACKAGE_BYTES,
            StatsKeys.LOAD_S, "median", "min", "max", "samples"), point.keys.toList())
        val report = Json.parse(Json.write(LatencyBenchmark.report("demo", "test", mapOf("cpu" to "host"), listOf(point))))
        val run = ((report as Map<*, *>)["runs"] as List<*>)[0] as Map<*, *>
        assertEquals(8.0, ((run["median"] as Map<*, *>)[StatsKeys.NEW_TOKENS] as Number).toDouble(), 0.0)
    }
}
