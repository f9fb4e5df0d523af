package dev.phiedge.engine

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertThrows
import org.junit.Assert.assertTrue
import org.junit.Test
import java.io.File

/** The engine against vectors written by android_demo/make_golden.py from the Python runtime. */
class GoldenTest {
    private fun checkTokenizer(tokenizer: Tokenizer, cases: Map<String, Any?>, label: String): Int {
        var n = 0
        @Suppress("UNCHECKED_CAST")
        for (c in cases["encode"] as List<Map<String, Any?>>) {
            val text = c["text"] as String
            assertArrayEquals("$label encode ${Json.write(text)}", c["ids"].ints(), tokenizer.encode(text))
            assertEquals("$label decode ${Json.write(text)}", c["decoded"], tokenizer.decode(c["ids"].ints()))
            n++
        }
        @Suppress("UNCHECKED_CAST")
        for (c in cases["decode"] as List<Map<String, Any?>>) {
            assertEquals("$label decode ${c["ids"]}", c["decoded"], tokenizer.decode(c["ids"].ints()))
            n++
        }
        return n
    }

    @Test
    fun demoTokenizer() {
        val n = checkTokenizer(Tokenizer.load(File(Golden.demo, "tokenizer.json")), Golden.json("tokenizer_demo.json"), "demo")
        println("golden: $n demo tokenizer cases")
    }

    @Test
    fun codegenWhitespaceTokenizer() {
        val tokenizer = Tokenizer.fromJson(Golden.gunzipText("tokenizer_codegen.json.gz"))
        assertTrue("the CodeGen-style tokenizer lost its added tokens", tokenizer.addedTokens.size > 30)
        val n = checkTokenizer(tokenizer, Golden.json("tokenizer_codegen.json"), "codegen")
        println("golden: $n codegen tokenizer cases")
    }

    @Test
    fun phi3Tokenizers() {
        for (kind in listOf("llama", "gpt4o")) {  // Phi-3's SentencePiece-style BPE, Phi-4-mini's Split + byte-level
            val tokenizer = Tokenizer.fromJson(Golden.gunzipText("tokenizer_$kind.json.gz"))
            val n = checkTokenizer(tokenizer, Golden.json("tokenizer_$kind.json"), kind)
            println("golden: $n $kind tokenizer cases")
        }
    }

    @Suppress("UNCHECKED_CAST")
    @Test
    fun chatTemplatePartsRenderLikePython() {
        for ((kind, entry) in Golden.json("chat_templates.json")) {
            val e = entry as Map<String, Any?>
            val p = e["parts"] as Map<String, Any?>
            val template = Template(p["prompt"] as String, emptyList(), p["turn"] as String, p["system"] as String?,
                p["trim"] == true, p["omit_empty_system"] == true)
            val manifest = Manifest(File("."), Manifest.load(Golden.demo).contract, 2, "tokenizer.json", null, null,
                mapOf("chat" to template), emptyMap(), emptyMap())
            for (c in e["conversations"] as List<Map<String, Any?>>) {
                val turns = (c["turns"] as List<List<String>>)
                val system = c["system"] as String?
                val users = turns.map { it[0] } + (c["user"] as String)
                var text = manifest.applyTemplate("chat", users[0], system = system)
                turns.forEachIndexed { i, t -> text += t[1] + manifest.applyTemplate("chat", users[i + 1], "turn") }
                assertEquals("$kind chat", c["text"], text)
            }
        }
    }

    @Test
    fun generationMatchesPythonRuntime() {
        val meta = Golden.json("generation.json")
        val vocab = (meta["vocab_size"] as Number).toInt()
        val rows = Golden.logits((meta["rows"] as Number).toInt(), vocab)
        val manifest = Manifest.load(Golden.demo)
        val tokenizer = Tokenizer.load(File(Golden.demo, manifest.tokenizerFile))
        assertEquals(meta["eos_token_id"], manifest.eosTokenId?.toLong())
        @Suppress("UNCHECKED_CAST")
        val cases = meta["cases"] as List<Map<String, Any?>>
        for (case in cases) {
            val name = case["name"] as String
            @Suppress("UNCHECKED_CAST")
            val steps = case["steps"] as List<Map<String, Any?>>
            val first = (case["first_row"] as Number).toInt()
            val nRows = steps.sumOf { (it["rows"] as Number?)?.toInt() ?: 1 }
            val backend = ReplayBackend(steps, rows.slice(first until first + nRows), vocab,
                ((case["capacity"] ?: meta["capacity"]) as Number).toInt(), (case["pad_rows"] as Number?)?.toInt() ?: 0)
            val switch = (case["rope_switch"] as Number?)?.toInt()  // a LongRoPE switch set on the demo package
            val window = (case["window"] as Number?)?.toInt()  // a sliding window set on the demo package
            val m = if (switch == null && window == null) manifest else Manifest(manifest.folder,
                manifest.contract.copy(window = window), manifest.maxLength, manifest.tokenizerFile,
                manifest.bosTokenId, manifest.eosTokenId, manifest.templates, manifest.files, manifest.raw,
                manifest.minOnnxruntime, manifest.stopTokenIds, switch, manifest.sizes)
            val model = TextGenerator(m, backend, tokenizer)
            val config = config(case.obj("config"))
            val template = case["template"] as String
            val outs = if (case["kind"] == "generate") {
                assertArrayEquals("$name prompt ids", case["prompt_ids"].ints(),
                    model.encode(manifest.applyTemplate(template, case["prompt"] as String)))
                listOf(model.generate(case["prompt"] as String, config, template))
            } else {
                val chat = model.chat(template, dropOldest = case["drop_oldest"] == true)
                @Suppress("UNCHECKED_CAST")
                val cancel = case["cancel"] as Map<String, Any?>?
                @Suppress("UNCHECKED_CAST")
                (case["turns"] as List<String>).mapIndexed { i, turn ->
                    val token = if (cancel != null && cancel.int("turn") == i) cancelAfter(cancel.int("after")) else null
                    chat.send(turn, config, cancel = token)
                }
            }
            @Suppress("UNCHECKED_CAST")
            val calls = case["calls"] as List<Map<String, Any?>>
            assertEquals("$name: number of calls", calls.size, outs.size)
            for ((i, pair) in calls.zip(outs).withIndex()) {
                val (want, got) = pair
                assertEquals("$name call $i tokens", want["tokens"].ints().toList(), got.tokens)
                assertEquals("$name call $i text", want["text"], got.text)
                assertEquals("$name call $i finish", want["finish_reason"], got.finishReason.key)
            }
            assertEquals("$name: every recorded step replayed", steps.size, backend.used)
            assertEquals("$name: every recorded row used", nRows, backend.rowsUsed)
            println("golden: $name ok (${steps.size} steps, ${outs.sumOf { it.tokens.size }} tokens)")
        }
    }

    /** kv_cache.json: the cache grows as Python's does, and each KV dtype costs what Python's contract says. */
    @Test
    fun kvCacheGrowthAndCostsMatchPython() {
        val golden = Golden.json("kv_cache.json")
        val growth = golden["growth"] as List<List<Any?>>
        for (case in growth) {
            val (allocated, needed, limit) = case.take(3).map { (it as Number).toInt() }
            val want = case[3] as Number?
            if (want == null) {
                assertThrows(IllegalArgumentException::class.java) { KvGrowth.grownCapacity(allocated, needed, limit) }
            } else {
                assertEquals(case.toString(), want.toInt(), KvGrowth.grownCapacity(allocated, needed, limit))
            }
        }
        val contracts = golden["contracts"] as List<Map<String, Any?>>
        for (c in contracts) {
            val contract = Contract((c["n_layers"] as Number).toInt(), (c["kv_heads"] as Number).toInt(),
                (c["head_dim"] as Number).toInt(), 32064, c["kv_dtype"] as String, "last")
            assertEquals(c.toString(), c["storage"], contract.kvStorage)
            assertEquals(c.toString(), (c["width"] as Number).toInt(), contract.kvWidth)
            assertEquals(c.toString(), (c["bytes_per_position"] as Number).toLong(), contract.kvBytesPerPosition)
        }
        assertTrue(growth.size > 100 && contracts.size == 8)
        val rows = golden["step_rows"] as List<List<Number>>
        for ((heads, capacity, want) in rows) assertEquals(rows.toString(), want.toInt(),
            KvGrowth.stepRows(heads.toInt(), capacity.toInt()))
        assertTrue(rows.size == 35)
        val buffers = golden["window_buffer"] as List<List<Number>>
        for ((window, context, want) in buffers) assertEquals(buffers.toString(), want.toInt(),
            KvGrowth.windowBuffer(window.toInt(), context.toInt()))
        assertTrue(buffers.size == 28)
    }

    @Test
    fun samplingProbabilitiesMatchPython() {
        val meta = Golden.json("generation.json")
        val vocab = (meta["vocab_size"] as Number).toInt()
        val rows = Golden.logits((meta["rows"] as Number).toInt(), vocab)
        @Suppress("UNCHECKED_CAST")
        val cases = Golden.json("sampling.json")["cases"] as List<Map<String, Any?>>
        for (c in cases) {
            val config = SamplingConfig(temperature = (c["temperature"] as Number).toDouble(), topK = c.int("top_k"),
                topP = (c["top_p"] as Number).toDouble())
            val (ids, probs) = probabilities(rows[c.int("row")], config)
            val label = "row ${c["row"]} $config"
            assertEquals("$label kept ids", c["ids"].ints().toList(), ids.toList())
            val want = (c["probs"] as List<*>).map { (it as Number).toDouble() }
            for (i in want.indices) assertEquals("$label p[$i]", want[i], probs[i], 1e-6 + 1e-5 * want[i])
        }
        println("golden: sampling ok (${cases.size} rows x settings)")
    }

    /** Set from its k-th check on: the loop checks once per prefill chunk and per token (make_golden.py). */
    private fun cancelAfter(k: Int): CancelToken {
        var calls = 0
        return CancelToken { ++calls > k }
    }

    /** The extreme settings Python refuses (sampling.json "limits") are exactly the ones refused here. */
    @Test
    fun samplingLimitsMatchPython() {
        @Suppress("UNCHECKED_CAST")
        val limits = Golden.json("sampling.json")["limits"] as List<Map<String, Any?>>
        fun number(x: Any?): Double = when (x) {
            "inf" -> Double.POSITIVE_INFINITY
            "-inf" -> Double.NEGATIVE_INFINITY
            "nan" -> Double.NaN
            else -> (x as Number).toDouble()
        }
        for (c in limits) {
            val refused = try {
                SamplingConfig(temperature = number(c["temperature"]), topK = c.int("top_k"), topP = number(c["top_p"]),
                    repetitionPenalty = number(c["repetition_penalty"]))
                false
            } catch (e: IllegalArgumentException) {
                true
            }
            assertEquals("refused: $c", c["refused"], refused)
        }
        println("golden: sampling limits ok (${limits.size} settings)")
    }

    private fun config(c: Map<String, Any?>) = GenerationConfig(
        maxNewTokens = c.int("max_new_tokens"),
        sampling = SamplingConfig(temperature = (c["temperature"] as Number).toDouble(), topK = c.int("top_k"),
            topP = (c["top_p"] as Number).toDouble(), seed = (c["seed"] as Number?)?.toLong(),
            repetitionPenalty = (c["repetition_penalty"] as Number).toDouble()),
        stop = (c["stop"] as List<*>).map { it as String },
        stopAtEos = c["stop_at_eos"] as Boolean,
        prefillChunk = c.int("prefill_chunk"),
        draft = c["draft"] as String,
        draftTokens = c.int("draft_tokens"),
        draftCost = (c["draft_cost"] as Number?)?.toDouble(),
    )
}
