package dev.phiedge.engine

import java.io.File
import java.util.SplittableRandom

/**
 * The latency benchmark of `python -m benchmarks.latency`, for the phone. One point: a KV cache of
 * promptLen + newTokens positions, one warm-up call, then [LatencyPoint.repeats] greedy calls that decode exactly
 * newTokens tokens (no EOS stop). The point's JSON has benchmarks.latency's layout:
 *
 *     {prompt_len, new_tokens, threads, repeats, profile, package_bytes, load_s,
 *      median: {stats key: value}, min: {...}, max: {...}, samples: [runtime.stats JSON per call]}
 *
 * and [report] wraps points as benchmarks.latency's file does: {tool, model, command, machine, runs}.
 */
data class LatencyPoint(
    val promptLen: Int = 128,
    val newTokens: Int = 64,
    val threads: Int = 2,
    val repeats: Int = 5,
    val profile: String = "low-power",
) {
    init {
        require(promptLen >= 1) { "prompt-len must be >= 1, got $promptLen" }
        require(newTokens >= 1) { "new-tokens must be >= 1, got $newTokens" }
        require(repeats >= 1) { "repeats must be >= 1, got $repeats" }
        require(threads >= 0) { "threads must be >= 0 (0: one per core), got $threads" }
    }

    val context: Int get() = promptLen + newTokens
}

object LatencyBenchmark {
    private val NUMERIC_KEYS = StatsKeys.KEYS.filter { it != StatsKeys.FINISH_REASON }

    /**
     * [n] prompt ids in [1, vocab). benchmarks.latency draws them with numpy's default_rng(0), which the JVM does
     * not have; latency depends on the prompt's length, not on which ids it holds.
     */
    fun promptIds(n: Int, vocabSize: Int, seed: Long = 0): IntArray {
        val rng = SplittableRandom(seed)
        return IntArray(n) { 1 + rng.nextInt(vocabSize - 1) }
    }

    fun packageBytes(folder: File): Long = folder.walkTopDown().filter { it.isFile }.sumOf { it.length() }

    /** Measures [point] on [model], loaded with a context of point.context and point's threads and profile. */
    fun measure(model: TextGenerator, point: LatencyPoint, cancel: CancelToken? = null,
                clock: Clock = ProcClock): Map<String, Any?> {
        require(point.context <= model.backend.capacity) {
            "prompt-len ${point.promptLen} + new-tokens ${point.newTokens} exceed the context of " +
                "${model.backend.capacity}; load the package with context ${point.context}"
        }
        val ids = promptIds(point.promptLen, model.manifest.contract.vocabSize)
        val config = GenerationConfig(maxNewTokens = point.newTokens, stopAtEos = false,
            sampling = SamplingConfig(temperature = 0.0))
        val samples = ArrayList<Map<String, Any?>>()
        for (i in 0..point.repeats) {  // the first call warms up and is not reported
            if (cancel?.isSet() == true) throw IllegalStateException("the benchmark was cancelled")
            model.backend.truncate(0)
            val out = model.generateIds(ids, config, cancel = cancel, clock = clock)
            check(out.stats.newTokens == point.newTokens) {
                "asked for ${point.newTokens} tokens, got ${out.stats.newTokens} (${out.finishReason})"
            }
            if (i > 0) samples.add(out.stats.toJson())
        }
        val result = linkedMapOf<String, Any?>("prompt_len" to point.promptLen, "new_tokens" to point.newTokens,
            "threads" to point.threads, "repeats" to point.repeats, "profile" to point.profile,
            StatsKeys.PACKAGE_BYTES to packageBytes(model.manifest.folder), StatsKeys.LOAD_S to model.loadS)
        result.putAll(summarize(samples))
        result["samples"] = samples
        return result
    }

    /** Median, min and max of every numeric stats key over the samples (statistics.median's even-count mean). */
    fun summarize(samples: List<Map<String, Any?>>): Map<String, Map<String, Double?>> {
        val out = linkedMapOf<String, MutableMap<String, Double?>>("median" to linkedMapOf(), "min" to linkedMapOf(),
            "max" to linkedMapOf())
        for (key in NUMERIC_KEYS) {
            val v = samples.mapNotNull { (it[key] as? Number)?.toDouble() }.sorted()
            val mid = v.size / 2
            out.getValue("median")[key] = when {
                v.isEmpty() -> null
                v.size % 2 == 1 -> v[mid]
                else -> (v[mid - 1] + v[mid]) / 2
            }
            out.getValue("min")[key] = v.firstOrNull()
            out.getValue("max")[key] = v.lastOrNull()
        }
        return out
    }

    /** The file benchmarks.latency writes with --json, for [runs] measured on this [machine]. */
    fun report(model: String, command: String, machine: Map<String, Any?>, runs: List<Map<String, Any?>>) =
        linkedMapOf("tool" to "benchmarks.latency", "model" to model, "command" to command, "machine" to machine,
            "runs" to runs)
}

/**
 * What choosing the next token costs on this JVM, apart from the model (benchmarks/sampling.py runs it):
 *
 *     java -cp engine-classes:kotlin-stdlib.jar dev.phiedge.engine.SamplingCost ROWS.f32 VOCAB [REPEATS]
 *
 * reads (rows, vocab) float32 little-endian logits and prints JSON: milliseconds per token for greedy, for the
 * CLI's default settings (temperature 0.7, top-p 0.95) and for a speculative verify at those settings.
 */
object SamplingCost {
    @JvmStatic
    fun main(args: Array<String>) {
        val bytes = File(args[0]).readBytes()
        val vocab = args[1].toInt()
        val repeats = args.getOrNull(2)?.toInt() ?: 200
        val buffer = java.nio.ByteBuffer.wrap(bytes).order(java.nio.ByteOrder.LITTLE_ENDIAN).asFloatBuffer()
        val rows = Array(bytes.size / 4 / vocab) { FloatArray(vocab).also { r -> buffer.get(r) } }
        fun msPerToken(config: SamplingConfig, verify: Boolean): Double {
            val sampler = Sampler(config.copy(seed = 0))
            var sink = 0
            repeat(2) { round ->  // the first round warms the JIT up
                val t0 = System.nanoTime()
                for (i in 0 until repeats) {
                    val row = rows[i % rows.size]
                    sink += if (verify) sampler.verify(row, i % vocab) else sampler.sample(row)
                }
                if (round == 1) return (System.nanoTime() - t0) / 1e6 / repeats + sink * 0.0
            }
            error("unreachable")
        }
        val greedy = msPerToken(SamplingConfig(temperature = 0.0), false)
        val default = msPerToken(SamplingConfig(), false)
        val verify = msPerToken(SamplingConfig(), true)
        println("{\"rows\": ${rows.size}, \"vocab\": $vocab, \"repeats\": $repeats, \"greedy_ms\": $greedy, " +
            "\"default_ms\": $default, \"verify_ms\": $verify, \"java\": \"${System.getProperty("java.version")}\"}")
    }
}
